// Message<T>: what a subscriber receives. One immutable payload per publish, shared by every
// subscriber it is delivered to.
#pragma once

#include <herald/detail/block_pool.hpp>

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

template <class T>
struct Envelope {
  // One constructor, so that the common case (a short topic, no shared string) stays inline.
  // The members are built in order: the value first, so that a value whose construction throws
  // consumes no sequence number.
  template <class Seq, class... Args>
  Envelope(std::string_view t, const std::shared_ptr<const std::string>& shared, Seq&& seq,
           std::uint64_t org, Args&&... args)
      : value(std::forward<Args>(args)...),
        own_topic(shared ? std::string_view{} : t),
        shared_topic(shared),
        sequence(draw_sequence(seq)),
        origin(org),
        published_at(std::chrono::steady_clock::now()) {}
  [[nodiscard]] const std::string& topic() const noexcept {
    return shared_topic ? *shared_topic : own_topic;
  }
  const T value;
  const std::string own_topic;                            // the topic, unless shared
  const std::shared_ptr<const std::string> shared_topic;  // a long topic, shared, or null
  const std::uint64_t sequence;
  const std::uint64_t origin;
  const std::chrono::steady_clock::time_point published_at;
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

  /// Builds a message outside a broker (tests, adapters). The broker builds its own.
  template <class... Args>
  [[nodiscard]] static Message make(std::string_view topic, std::uint64_t sequence,
                                    std::uint64_t origin, Args&&... args) {
    return make(topic, nullptr, sequence, origin, std::forward<Args>(args)...);
  }

  /// As above; when `shared_topic` is set (it must equal `topic`), the message refers to that
  /// string instead of copying it. The broker does this for topics longer than
  /// detail::kInlineTopicBytes, sparing an allocation per publish.
  template <class... Args>
  [[nodiscard]] static Message make(std::string_view topic,
                                    const std::shared_ptr<const std::string>& shared_topic,
                                    std::uint64_t sequence, std::uint64_t origin, Args&&... args) {
    return build(topic, shared_topic, sequence, origin, std::forward<Args>(args)...);
  }

  /// As above, with the sequence number drawn by `next_sequence()` once the value is built: a
  /// value whose construction throws consumes no number (the broker publishes this way).
  template <class NextSequence, class... Args>
  requires(std::is_invocable_r_v<std::uint64_t, NextSequence&>) [[nodiscard]] static Message
      make_drawn(std::string_view topic, const std::shared_ptr<const std::string>& shared_topic,
                 NextSequence&& next_sequence, std::uint64_t origin, Args&&... args) {
    return build(topic, shared_topic, next_sequence, origin, std::forward<Args>(args)...);
  }

 private:
  // Seq: a std::uint64_t, or a function drawing one (see Envelope).
  template <class Seq, class... Args>
  static Message build(std::string_view topic,
                       const std::shared_ptr<const std::string>& shared_topic, Seq&& seq,
                       std::uint64_t origin, Args&&... args) {
    // The envelope comes from the pool of its size (detail/block_pool.hpp): it is usually freed
    // on another thread, which is malloc's slow path.
    return Message(std::allocate_shared<detail::Envelope<T>>(
        detail::PoolAllocator<detail::Envelope<T>>{}, topic, shared_topic, std::forward<Seq>(seq),
        origin, std::forward<Args>(args)...));
  }

  explicit Message(std::shared_ptr<const detail::Envelope<T>> env) noexcept
      : env_(std::move(env)) {}
  std::shared_ptr<const detail::Envelope<T>> env_;
};

}  // namespace herald
