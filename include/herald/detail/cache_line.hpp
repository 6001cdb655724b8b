// Cache-line size and a padded wrapper that keeps a hot variable alone on its line.
//
// Two variables written by different threads must not share a cache line, or every write by one
// thread invalidates the other's copy ("false sharing"). `CachePadded<T>` aligns and pads a value
// to a whole number of lines, so placing two of them next to each other keeps them apart.
#pragma once

#include <cstddef>
#include <utility>

namespace herald::detail {

/// Size in bytes of the unit the cache coherence protocol transfers between cores.
///
/// 64 on every x86-64 and on the common ARM cores. A named constant instead of
/// `std::hardware_destructive_interference_size` because g++ warns (-Winterference-size) that the
/// standard constant may change between compiler versions, which would silently change the layout
/// of herald's types between translation units built with different flags.
inline constexpr std::size_t cache_line_size = 64;

/// A `T` that owns its cache line(s): aligned to `cache_line_size` and padded to a multiple of it.
///
/// Thread-safety: as `T`; the wrapper adds nothing but layout.
template <class T>
struct alignas(cache_line_size) CachePadded {
  T value;

  CachePadded() = default;
  template <class... Args>
  explicit CachePadded(std::in_place_t, Args&&... args) : value(std::forward<Args>(args)...) {}

  T& operator*() noexcept { return value; }
  const T& operator*() const noexcept { return value; }
  T* operator->() noexcept { return &value; }
  const T* operator->() const noexcept { return &value; }
};

static_assert(sizeof(CachePadded<char>) == cache_line_size);
static_assert(alignof(CachePadded<char>) == cache_line_size);

}  // namespace herald::detail
