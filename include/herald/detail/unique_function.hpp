// UniqueFunction<R(Args...)>: a type-erased, move-only callable, like C++23's
// std::move_only_function, with a small buffer so that typical tasks never allocate.
#pragma once

#include <cstddef>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

namespace herald::detail {

template <class Signature>
class UniqueFunction;

template <class T>
inline constexpr bool is_unique_function_v = false;
template <class S>
inline constexpr bool is_unique_function_v<UniqueFunction<S>> = true;

/// A move-only owner of any callable with the signature `R(Args...)`.
///
/// Callables up to `inline_size` bytes whose move constructor is noexcept live inside the object;
/// larger ones are heap-allocated. Moving a UniqueFunction never throws and never allocates.
/// Invoking an empty UniqueFunction throws std::bad_function_call.
/// Thread-safety: none; one owner at a time, like any value.
template <class R, class... Args>
class UniqueFunction<R(Args...)> {
 public:
  /// Bytes of the in-object buffer. 48 keeps the whole object at 56 bytes, so that a queue cell
  /// (a sequence number plus the function) fills exactly one 64-byte cache line.
  static constexpr std::size_t inline_size = 48;
  static constexpr std::size_t inline_align = alignof(void*);

  UniqueFunction() noexcept = default;
  UniqueFunction(std::nullptr_t) noexcept {}  // NOLINT(google-explicit-constructor)

  /// Wraps `f` (moved or copied into the wrapper).
  /// Throws: whatever the move/copy of `f` throws; std::bad_alloc for large callables.
  // The constraint tests invocability first: it rejects unrelated types before is_constructible
  // could recurse into this very constructor (Catch's expression wrappers, found through ADL,
  // did exactly that).
  template <class F, class D = std::decay_t<F>>
  requires(!std::is_same_v<D, UniqueFunction> && std::is_invocable_r_v<R, D&, Args...> &&
           std::is_constructible_v<D, F>)
      UniqueFunction(F&& f) {  // NOLINT(google-explicit-constructor)
    static_assert(std::is_nothrow_destructible_v<D>, "the callable must be nothrow destructible");
    if constexpr (std::is_pointer_v<D> || std::is_member_pointer_v<D> || is_unique_function_v<D> ||
                  std::is_same_v<D, std::function<R(Args...)>>) {
      if (!f) return;  // a null pointer or an empty wrapper makes an empty UniqueFunction
    }
    if constexpr (stored_inline<D>) {
      ::new (static_cast<void*>(buf_)) D(std::forward<F>(f));
    } else {
      D* p = new D(std::forward<F>(f));
      std::memcpy(buf_, &p, sizeof p);
    }
    ops_ = &ops_for<D>;
  }

  UniqueFunction(UniqueFunction&& other) noexcept { take(other); }

  UniqueFunction& operator=(UniqueFunction&& other) noexcept {
    if (this != &other) {
      reset();
      take(other);
    }
    return *this;
  }

  UniqueFunction& operator=(std::nullptr_t) noexcept {
    reset();
    return *this;
  }

  UniqueFunction(const UniqueFunction&) = delete;
  UniqueFunction& operator=(const UniqueFunction&) = delete;

  ~UniqueFunction() { reset(); }

  /// Calls the stored callable.
  /// Throws: whatever the callable throws; std::bad_function_call when empty.
  R operator()(Args... args) { return ops_->invoke(buf_, std::forward<Args>(args)...); }

  /// True when a callable is stored.
  explicit operator bool() const noexcept { return ops_ != &empty_ops; }

  friend bool operator==(const UniqueFunction& f, std::nullptr_t) noexcept { return !f; }

  void swap(UniqueFunction& other) noexcept {
    UniqueFunction tmp(std::move(other));
    other = std::move(*this);
    *this = std::move(tmp);
  }

 private:
  struct Ops {
    R (*invoke)(void* self, Args&&... args);
    // Move-constructs the callable from `src` into `dst` and destroys it in `src`; nullptr
    // means "copy the bytes" (trivially copyable callables and heap pointers).
    void (*relocate)(void* dst, void* src) noexcept;
    void (*destroy)(void* self) noexcept;  // nullptr: nothing to do
  };

  template <class D>
  static constexpr bool stored_inline =
      sizeof(D) <= inline_size &&
      alignof(D) <= inline_align&& std::is_nothrow_move_constructible_v<D>;

  template <class D>
  static D& target(void* self) noexcept {
    if constexpr (stored_inline<D>) {
      return *std::launder(static_cast<D*>(self));
    } else {
      D* p;
      std::memcpy(&p, self, sizeof p);
      return *p;
    }
  }

  template <class D>
  static R invoke_target(void* self, Args&&... args) {
    if constexpr (std::is_void_v<R>) {
      std::invoke(target<D>(self), std::forward<Args>(args)...);
    } else {
      return std::invoke(target<D>(self), std::forward<Args>(args)...);
    }
  }

  template <class D>
  static void relocate_target(void* dst, void* src) noexcept {
    D& s = target<D>(src);
    ::new (dst) D(std::move(s));
    s.~D();
  }

  template <class D>
  static void destroy_target(void* self) noexcept {
    if constexpr (stored_inline<D>) {
      target<D>(self).~D();
    } else {
      delete &target<D>(self);
    }
  }

  template <class D>
  static constexpr Ops make_ops() noexcept {
    Ops ops{&invoke_target<D>, nullptr, nullptr};
    if constexpr (stored_inline<D>) {
      if constexpr (!std::is_trivially_copyable_v<D>) ops.relocate = &relocate_target<D>;
      if constexpr (!std::is_trivially_destructible_v<D>) ops.destroy = &destroy_target<D>;
    } else {
      ops.destroy = &destroy_target<D>;
    }
    return ops;
  }

  static R invoke_empty(void*, Args&&...) { throw std::bad_function_call(); }

  template <class D>
  static constexpr Ops ops_for = make_ops<D>();
  // The empty state has a real table too, so operator() needs no branch.
  static constexpr Ops empty_ops{&invoke_empty, nullptr, nullptr};

  void take(UniqueFunction& other) noexcept {
    ops_ = other.ops_;
    if (ops_->relocate != nullptr) {
      ops_->relocate(buf_, other.buf_);
    } else {
      std::memcpy(buf_, other.buf_, inline_size);
    }
    other.ops_ = &empty_ops;
  }

  void reset() noexcept {
    if (ops_->destroy != nullptr) ops_->destroy(buf_);
    ops_ = &empty_ops;
  }

  alignas(inline_align) unsigned char buf_[inline_size];
  const Ops* ops_ = &empty_ops;
};

}  // namespace herald::detail
