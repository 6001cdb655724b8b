// Message<T>: what a subscriber receives. One immutable payload per publish, shared by every
// subscriber it is delivered to.
#pragma once

#include <herald/detail/block_pool.hpp>
#include <herald/headers.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace herald {

namespace detail {

/// Topics up to this many bytes are copied into each envelope (std::string's inline buffer, no
/// allocation); longer ones are shared with the route that resolved them (see Message::make).
inline constexpr std::size_t kInlineTopicBytes = 15;

/// A sequence number given as is, or drawn by calling a function.
template <class Seq>
std::uint64_t draw_sequence(Seq& seq) {
  if constexpr (std::is_integral_v<Seq>) {
    return seq;
  } else {
    return seq();
  }
}

/// One published message: the value, its metadata and a count of the Message handles that
/// refer to it. Intrusive, so that one allocation (from the pool of its size) holds everything,
/// and so that a publisher can hand out one reference per subscriber with a single store.
template <class T>
struct Envelope {
  // One constructor, so that the common case (a short topic, no shared string) stays inline.
  // The members are built in order: the value first, so that a value whose construction throws
  // consumes no sequence number.
  // `hdrs`: headers to move into the envelope, or null (most messages: no allocation).
  template <class Seq, class... Args>
  Envelope(std::string_view t, const std::shared_ptr<const std::string>& shared, Seq&& seq,
           std::uint64_t org, Headers* hdrs, Args&&... args)
      : value(std::forward<Args>(args)...),
        own_topic(shared ? std::string_view{} : t),
        shared_topic(shared),
        headers(hdrs != nullptr && !hdrs->empty()
                    ? std::make_unique<const Headers>(std::move(*hdrs))
                    : nullptr),
        sequence(draw_sequence(seq)),
        origin(org),
        published_at(std::chrono::steady_clock::now()) {}
  /// A copy of `src` marked as replayed (see Message::replayed).
  struct ReplayOf {
    const Envelope& src;
  };
  explicit Envelope(ReplayOf r)
      : replayed(true),
        value(r.src.value),
        own_topic(r.src.own_topic),
        shared_topic(r.src.shared_topic),
        headers(r.src.headers ? std::make_unique<const Headers>(*r.src.headers) : nullptr),
        sequence(r.src.sequence),
        origin(r.src.origin),
        published_at(r.src.published_at) {}
  [[nodiscard]] const std::string& topic() const noexcept {
    return shared_topic ? *shared_topic : own_topic;
  }

  /// Builds an envelope with one reference, in a block of the pool of its size.
  /// Throws: what constructing T throws, std::bad_alloc; nothing is leaked then.
  template <class... Args>
  static Envelope* create(Args&&... args) {
    void* block = pool().allocate();
    try {
      return ::new (block) Envelope(std::forward<Args>(args)...);
    } catch (...) {
      pool().deallocate(block);
      throw;
    }
  }

  void add_ref() const noexcept { refs.fetch_add(1, std::memory_order_relaxed); }

  /// Drops one reference; the last one destroys the envelope. A holder that finds the count at 1
  /// is the only one left (nobody else can add a reference without holding one), so it skips the
  /// atomic read-modify-write: the common case of a message delivered to one subscriber.
  void release() const noexcept {
    if (refs.load(std::memory_order_acquire) != 1 &&
        refs.fetch_sub(1, std::memory_order_acq_rel) != 1) {
      return;
    }
    destroy();
  }

  // Out of line, so that a Message's destructor stays small enough to be inlined (and elided
  // after a move).
  [[gnu::noinline]] void destroy() const noexcept {
    Envelope* self = const_cast<Envelope*>(this);
    self->~Envelope();
    pool().deallocate(self);
  }

  static auto& pool() { return BlockPool<sizeof(Envelope), alignof(Envelope)>::instance(); }

  mutable std::atomic<std::uint32_t> refs{1};  // Message handles referring to it
  // A subscriber's copy of a retained message, replayed to it. Next to refs: in its padding.
  const bool replayed = false;
  const T value;
  const std::string own_topic;                            // the topic, unless shared
  const std::shared_ptr<const std::string> shared_topic;  // a long topic, shared, or null
  const std::unique_ptr<const Headers> headers;           // null: none
  const std::uint64_t sequence;
  const std::uint64_t origin;
  const std::chrono::steady_clock::time_point published_at;
};

/// What the broker needs beyond the public interface: to give one envelope to several
/// subscribers with a single store instead of one atomic increment each.
struct MessageAccess {
  /// Makes the (not yet shared) message `m` carry `n` references: `m` itself and n - 1 aliases.
  template <class M>
  static void preset_refs(const M& m, std::uint32_t n) noexcept {
    m.env_->refs.store(n, std::memory_order_relaxed);  // nobody else can see it yet
  }
  /// Adds `n` references to the message `m`, which others may hold and copy meanwhile (a
  /// retained message): the atomic counterpart of preset_refs(m, n + 1).
  template <class M>
  static void add_refs(const M& m, std::uint32_t n) noexcept {
    if (n != 0) m.env_->refs.fetch_add(n, std::memory_order_relaxed);
  }
  /// A handle to m's envelope that takes over one of the preset references (no increment).
  template <class M>
  static M alias(const M& m) noexcept {
    return M(m.env_);
  }
  /// A copy of the message `m` marked as replayed (Message::replayed), with the same topic,
  /// sequence number, time, origin and headers: the mark is the envelope's, so that a plain
  /// Message stays a bare pointer (no mask on every access) and a live one is never marked.
  /// Throws: what copying T throws, std::bad_alloc.
  template <class M>
  requires(std::is_copy_constructible_v<typename M::value_type>) static M replayed(const M& m) {
    using E = std::remove_cvref_t<decltype(*m.env_)>;
    return M(E::create(typename E::ReplayOf{*m.env_}));
  }
};

}  // namespace detail

/// A published message: its topic, its value, the broker's sequence number and the publish time.
/// Copying a Message copies a reference to the one shared payload, never the T.
///
///     for (const herald::Message<Order>& m : sub) use(m.topic(), *m);
///
/// Thread-safety: the payload is immutable; copies may be used from any threads.
template <class T>
class Message {
 public:
  using value_type = T;

  Message(const Message& other) noexcept : env_(other.env_) {
    if (env_ != nullptr) env_->add_ref();
  }
  Message(Message&& other) noexcept : env_(std::exchange(other.env_, nullptr)) {}
  Message& operator=(Message other) noexcept {
    std::swap(env_, other.env_);
    return *this;
  }
  ~Message() {
    if (env_ != nullptr) env_->release();
  }

  /// The topic it was published to.
  [[nodiscard]] const std::string& topic() const noexcept { return env_->topic(); }
  /// The value.
  [[nodiscard]] const T& value() const noexcept { return env_->value; }
  [[nodiscard]] const T& operator*() const noexcept { return env_->value; }
  [[nodiscard]] const T* operator->() const noexcept { return &env_->value; }
  /// Per-broker publish sequence number, starting at 1; increases with every publish.
  [[nodiscard]] std::uint64_t sequence() const noexcept { return env_->sequence; }
  /// When publish was called (steady clock).
  [[nodiscard]] std::chrono::steady_clock::time_point published_at() const noexcept {
    return env_->published_at;
  }
  /// Who published it: 0 for local publishers; bridges tag what they import so they never
  /// send it back (see Broker::publish with an origin).
  [[nodiscard]] std::uint64_t origin() const noexcept { return env_->origin; }
  /// True when this subscriber received it as a replay of a retained message when it
  /// subscribed (SubscribeOptions::replay), false for live messages. A replayed message is this
  /// subscriber's copy of the retained one (same topic, sequence, time, origin and headers), made
  /// once per replay: that is why replay needs a copyable T.
  [[nodiscard]] bool replayed() const noexcept { return env_->replayed; }
  /// The headers it was published with (empty when none).
  [[nodiscard]] const Headers& headers() const noexcept {
    static const Headers none;
    return env_->headers ? *env_->headers : none;
  }

  /// Builds a message outside a broker (tests, adapters). The broker builds its own.
  template <class... Args>
  [[nodiscard]] static Message make(std::string_view topic, std::uint64_t sequence,
                                    std::uint64_t origin, Args&&... args) {
    return make(topic, nullptr, sequence, origin, std::forward<Args>(args)...);
  }

  /// As above, carrying `headers`.
  template <class... Args>
  [[nodiscard]] static Message make_with(Headers headers, std::string_view topic,
                                         std::uint64_t sequence, std::uint64_t origin,
                                         Args&&... args) {
    return build(topic, nullptr, sequence, origin, &headers, std::forward<Args>(args)...);
  }

  /// As above; when `shared_topic` is set (it must equal `topic`), the message refers to that
  /// string instead of copying it. The broker does this for topics longer than
  /// detail::kInlineTopicBytes, sparing an allocation per publish.
  template <class... Args>
  [[nodiscard]] static Message make(std::string_view topic,
                                    const std::shared_ptr<const std::string>& shared_topic,
                                    std::uint64_t sequence, std::uint64_t origin, Args&&... args) {
    return build(topic, shared_topic, sequence, origin, nullptr, std::forward<Args>(args)...);
  }

  /// As above, with the sequence number drawn by `next_sequence()` once the value is built: a
  /// value whose construction throws consumes no number (the broker publishes this way), and
  /// with the headers moved from `*headers` (null: none).
  template <class NextSequence, class... Args>
  requires(std::is_invocable_r_v<std::uint64_t, NextSequence&>) [[nodiscard]] static Message
      make_drawn(std::string_view topic, const std::shared_ptr<const std::string>& shared_topic,
                 NextSequence&& next_sequence, std::uint64_t origin, Headers* headers,
                 Args&&... args) {
    return build(topic, shared_topic, next_sequence, origin, headers, std::forward<Args>(args)...);
  }

 private:
  friend struct detail::MessageAccess;

  // Seq: a std::uint64_t, or a function drawing one (see Envelope).
  template <class Seq, class... Args>
  static Message build(std::string_view topic,
                       const std::shared_ptr<const std::string>& shared_topic, Seq&& seq,
                       std::uint64_t origin, Headers* headers, Args&&... args) {
    // The envelope comes from the pool of its size (detail/block_pool.hpp): it is usually freed
    // on another thread, which is malloc's slow path.
    return Message(detail::Envelope<T>::create(topic, shared_topic, std::forward<Seq>(seq), origin,
                                               headers, std::forward<Args>(args)...));
  }

  explicit Message(const detail::Envelope<T>* env) noexcept : env_(env) {}
  const detail::Envelope<T>* env_ = nullptr;
};

}  // namespace herald
