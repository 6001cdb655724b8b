// Every public counter struct of herald in one place: what one publish did, a broker's totals, a
// subscription's and a handler's counters, a worker pool's and the NATS bridge's. Plain values
// (snapshots), so exporters and formatters need nothing else.
#pragma once

#include <herald/policy.hpp>

#include <array>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace herald {

/// What one publish did.
struct PublishResult {
  std::size_t matched = 0;    ///< open subscriptions (a queue group counts once) it was offered to
  std::size_t delivered = 0;  ///< of those, how many queued it
  std::size_t dropped = 0;    ///< of those, how many refused it (full, or block timeout)
  std::size_t evicted = 0;    ///< drop_oldest subscribers that evicted an older message for it
  bool closed = false;        ///< the broker was closed: nothing was offered to anyone

  /// True when at least one subscriber queued the message.
  explicit operator bool() const noexcept { return delivered != 0; }
};

/// Broker totals. `delivered + dropped` is the number of offers made.
struct BrokerStats {
  std::uint64_t published = 0;      ///< publish calls on an open broker
  std::uint64_t delivered = 0;      ///< messages queued, summed over subscribers
  std::uint64_t dropped = 0;        ///< offers refused (full, block timeout)
  std::uint64_t evicted = 0;        ///< offers that evicted older messages (drop_oldest); a
                                    ///< subscription's own stats count every eviction
  std::uint64_t no_subscriber = 0;  ///< publishes that matched no subscription
  std::size_t subscriptions = 0;    ///< live subscriptions now
  std::uint64_t disconnects = 0;    ///< subscriptions closed as slow consumers (disconnect policy)
  // Retained messages (Broker::retain, PublishOptions::retain, BrokerOptions).
  std::size_t retained_topics = 0;     ///< topics with retained messages now
  std::size_t retained_messages = 0;   ///< retained messages now
  std::size_t retained_bytes = 0;      ///< their estimated size now (see BrokerOptions)
  std::uint64_t retained_evicted = 0;  ///< retained messages evicted by a BrokerOptions bound
  std::uint64_t retained_expired = 0;  ///< retained messages dropped once older than max_age
  std::uint64_t replayed = 0;          ///< replay offers made to subscriptions (in delivered
                                       ///< and dropped like any other offer)
};

/// Counters of the publishes to the topics matching one tracked pattern (Broker::track_topics):
/// a topic counts for the first tracked pattern it matches. The view is valid during the visitor
/// call only.
struct TopicStats {
  std::string_view pattern;
  std::uint64_t published = 0;  ///< publish calls
  std::uint64_t dropped = 0;    ///< offers refused (summed over subscribers)
};

/// Counters of one subscription's queue. Exact identities, for every policy:
/// `offered == delivered + dropped` and
/// `delivered == received + evicted + expired + queue_depth`, in a snapshot taken once the
/// publishes that reached it have returned. Each counter is its own atomic: a snapshot taken while
/// a publish is offering to it (even just after unsubscribe) may be off by that offer.
struct SubscriptionStats {
  std::uint64_t offered = 0;          ///< messages published to a matching topic while it was open
  std::uint64_t delivered = 0;        ///< accepted into its queue
  std::uint64_t dropped = 0;          ///< refused: dropped_full + dropped_timeout
  std::uint64_t dropped_full = 0;     ///< drop_incoming / disconnect: the queue was full
  std::uint64_t dropped_timeout = 0;  ///< block: no room within block_timeout
  std::uint64_t evicted = 0;          ///< drop_oldest: accepted, then evicted to make room
  std::uint64_t received = 0;         ///< taken out of the queue by the consumer
  std::uint64_t expired = 0;        ///< taken out, older than SubscribeOptions::max_age: discarded
  std::size_t queue_depth = 0;      ///< messages waiting now (approximate while publishers run)
  std::size_t high_water_mark = 0;  ///< the largest queue depth seen after an enqueue
  CloseReason close_reason = CloseReason::open;
};

/// What a handler subscription's handler did.
struct HandlerCounters {
  std::uint64_t invocations = 0;    ///< handler calls, retries included
  std::uint64_t failures = 0;       ///< calls that threw
  std::uint64_t retries = 0;        ///< calls that were retries of a failed message
  std::uint64_t dead_lettered = 0;  ///< messages that failed every attempt, accepted by the sink
  /// Handler calls the circuit breaker refused (HandlerOptions::breaker); under WhenOpen::wait
  /// each time the strand asked again counts.
  std::uint64_t breaker_refused = 0;
  /// Messages given up because the breaker refused them (WhenOpen::dead_letter), whether or not
  /// a dead-letter sink took them (those it took count in dead_lettered too).
  std::uint64_t breaker_dead_lettered = 0;
  /// Messages skipped because one with the same key was handled recently (HandlerOptions::dedup).
  std::uint64_t deduplicated = 0;
  /// Failed messages waiting on a timer for their next attempt, now.
  std::uint64_t retries_pending = 0;
  /// Retries that never ran: the subscription was unsubscribed (or stopped) or its executor shut
  /// down while they waited. Their messages are neither handled nor dead-lettered.
  std::uint64_t retries_cancelled = 0;
  /// Times the handler waited (on a timer) for a token of HandlerOptions::rate.
  std::uint64_t rate_limited = 0;
  /// Strands running a batch of this subscription now: 0 or 1, up to `concurrency` with lanes.
  std::uint64_t in_flight = 0;
  /// Time spent in the handler, retries' backoff excluded. Measured with one clock read per
  /// message (the end of one call starts the next's timing), so it includes the strand's own
  /// few nanoseconds per message between calls.
  std::chrono::nanoseconds handler_time_total{0};
  std::chrono::nanoseconds handler_time_max{0};  ///< the longest single call, as above
};

/// Counters of a handler subscription: its queue's and its handler's.
struct HandlerStats : SubscriptionStats, HandlerCounters {};

/// Handler durations in log-linear buckets: two per power of two (upper bounds 2^e and
/// 1.5 x 2^e nanoseconds) from 1.024 us to 2^34 ns (about 17.2 s), then one for everything
/// longer. A snapshot (plain values); handler subscriptions record into theirs without a locked
/// instruction (the strand is the only writer).
struct DurationHistogram {
  static constexpr std::size_t finite_buckets = 49;
  static constexpr std::size_t buckets = finite_buckets + 1;  ///< the last one is +Inf

  std::array<std::uint64_t, buckets> counts{};  ///< per bucket, not cumulative
  std::chrono::nanoseconds sum{0};              ///< of every recorded duration

  /// The inclusive upper bound of bucket `i` < finite_buckets, in nanoseconds.
  [[nodiscard]] static constexpr std::uint64_t upper_bound_ns(std::size_t i) noexcept {
    if (i == 0) return std::uint64_t{1} << 10;
    const std::size_t e = 10 + (i - 1) / 2;  // the octave [2^e, 2^(e+1))
    return (i - 1) % 2 == 0 ? (std::uint64_t{3} << (e - 1)) : (std::uint64_t{1} << (e + 1));
  }

  /// The bucket a duration of `ns` nanoseconds falls in (bounds are inclusive, as Prometheus's
  /// `le`).
  [[nodiscard]] static constexpr std::size_t bucket_of(std::uint64_t ns) noexcept {
    if (ns <= (std::uint64_t{1} << 10)) return 0;
    const std::uint64_t w = ns - 1;
    const auto e = static_cast<std::size_t>(std::bit_width(w)) - 1;  // >= 10
    const std::size_t i = 1 + (e - 10) * 2 + static_cast<std::size_t>((w >> (e - 1)) & 1);
    return i < finite_buckets ? i : finite_buckets;
  }

  /// Durations recorded (the sum of the buckets).
  [[nodiscard]] constexpr std::uint64_t count() const noexcept {
    std::uint64_t n = 0;
    for (const std::uint64_t c : counts)
      n += c;
    return n;
  }
};

/// The two kinds of subscription.
enum class SubscriptionKind : std::uint8_t {
  pull,     ///< Subscription<T>: the consumer receives
  handler,  ///< HandlerSubscription<T>: a handler runs on an executor
};

/// The enumerator's name, "pull" or "handler".
[[nodiscard]] constexpr std::string_view to_string(SubscriptionKind k) noexcept {
  return k == SubscriptionKind::pull ? "pull" : "handler";
}

/// One subscription as Broker::for_each_subscription shows it: what it asked for and its counters.
/// The views are valid during the visitor call only.
struct SubscriptionInfo {
  SubscriptionKind kind = SubscriptionKind::pull;
  std::string_view pattern;
  const SubscribeOptions& options;
  SubscriptionStats stats;
  HandlerCounters handler{};  ///< zero for pull subscriptions
  /// Unique within its broker, in subscribe order (starting at 1): tells apart subscriptions
  /// with the same pattern.
  std::uint64_t id = 0;
  /// How long the oldest queued message has waited, bounded from above: zero when the queue is
  /// empty, else the time since the message the consumer took last was published (since the
  /// subscription was made, if it took none). Exact while the consumer keeps up with
  /// back-to-back publishes; grows without bound while it is stuck.
  std::chrono::nanoseconds lag{0};
  DurationHistogram handler_durations{};  ///< empty for pull subscriptions
};

/// Counters of a WorkerPool.
///
/// Fields are read one after the other while workers run, so a snapshot taken under load need
/// not add up; once shutdown() has returned (from a non-worker thread) they are exact and
/// submitted == completed + failed.
struct WorkerPoolStats {
  std::uint64_t submitted = 0;  ///< tasks accepted (rejected submissions are not counted)
  std::uint64_t completed = 0;  ///< tasks that returned normally (async ones included)
  std::uint64_t failed = 0;     ///< tasks that threw (the exception went to the error handler)
  std::size_t queued = 0;       ///< tasks accepted and not yet started (approximate under load)
  std::size_t threads = 0;      ///< worker threads
  std::uint64_t stolen = 0;     ///< tasks a worker took from another worker's queue
  std::size_t parked = 0;       ///< workers asleep for want of work, now
  std::uint64_t timers_pending = 0;  ///< timers scheduled and not yet fired, cancelled or abandoned
  std::uint64_t timers_fired = 0;    ///< timers whose task ran (counted in submitted too)
  std::uint64_t timers_cancelled = 0;  ///< by their handle or a stop request, task destroyed unrun
  std::uint64_t timers_abandoned = 0;  ///< pending at shutdown: task destroyed unrun
};

/// Counters of a NATS bridge (herald/nats.hpp). Identities (exact once the export queues are
/// empty, e.g. after flush()): `exported == sent + dropped()` and
/// `received == imported + rejected + dropped_decode + import_failed + echoes`.
struct BridgeStats {
  // To NATS.
  std::uint64_t exported = 0;          ///< local messages that matched an export
  std::uint64_t sent = 0;              ///< accepted by the NATS connection
  std::uint64_t dropped_overflow = 0;  ///< refused or evicted by an export queue's policy
  std::uint64_t dropped_subject = 0;   ///< subject longer than max_subject_bytes
  /// subject holding a byte NATS cannot carry intact (a NUL: valid in a herald topic, but the C
  /// client would cut the subject there and send the message under another subject)
  std::uint64_t dropped_unsafe_subject = 0;
  std::uint64_t dropped_too_large = 0;  ///< encoded size above the server's max_payload
  std::uint64_t dropped_encode = 0;     ///< the codec threw
  std::uint64_t dropped_failed = 0;     ///< the NATS client refused it for another reason
  std::uint64_t skipped_echo = 0;       ///< imported messages an export saw and did not send back
  std::size_t queued = 0;               ///< waiting in the export queues now (approximate)
  // From NATS.
  std::uint64_t received = 0;        ///< messages NATS delivered to the imports
  std::uint64_t imported = 0;        ///< published into the broker
  std::uint64_t rejected = 0;        ///< subject not a valid herald topic, or cut short by a NUL
  std::uint64_t dropped_decode = 0;  ///< the codec threw
  std::uint64_t import_failed = 0;   ///< the broker threw or was closed
  std::uint64_t echoes = 0;          ///< (track_loss) this bridge's own messages that came back
  std::uint64_t dropped_slow = 0;    ///< dropped by the NATS client: an import fell behind
  std::uint64_t lost = 0;            ///< (track_loss) gaps in the sequence of the messages received
  std::uint64_t seeded =
      0;  ///< retained messages seeded from a stream (ImportRule::seed_from_stream)
  // JetStream exports (ExportRule::jetstream): sent = js_acked + js_failed + js_in_flight.
  std::uint64_t js_acked = 0;    ///< messages the stream acknowledged (duplicates included)
  std::uint64_t js_retried = 0;  ///< resends (after a failure, a timeout or a reconnection)
  std::uint64_t js_failed = 0;   ///< given up: refused by the stream, or unacknowledged at shutdown
  std::size_t js_in_flight = 0;  ///< published and not yet acknowledged now
  // JetStream imports (ImportRule::jetstream). `received` counts deliveries (redeliveries too):
  // received = imported + js_duplicates + js_not_queued + echoes + rejected + dropped_decode +
  // import_failed; with AckMode::queued each delivery is answered once: received = js_acked_in +
  // js_nacked + js_dead_lettered + js_ack_failed.
  std::uint64_t js_acked_in = 0;       ///< deliveries acknowledged to the consumer
  std::uint64_t js_nacked = 0;         ///< deliveries nak'ed (redelivered after a backoff)
  std::uint64_t js_dead_lettered = 0;  ///< terminated (max_deliver reached, or never importable)
  std::uint64_t js_duplicates = 0;     ///< redeliveries suppressed by the import's dedup window
  std::uint64_t js_not_queued = 0;     ///< deliveries some matching subscriber did not queue
  std::uint64_t js_ack_failed = 0;     ///< an ack, nak or term the client could not send
  std::size_t js_pending_acks = 0;     ///< AckMode::manual: imported, awaiting ack()/nak() now
  // The connection.
  std::uint64_t disconnects = 0;
  std::uint64_t reconnects = 0;
  std::uint64_t errors = 0;  ///< failures reported (see BridgeOptions::on_error)
  bool connected = false;

  /// Everything dropped on the way to NATS.
  [[nodiscard]] std::uint64_t dropped() const noexcept {
    return dropped_overflow + dropped_subject + dropped_unsafe_subject + dropped_too_large +
           dropped_encode + dropped_failed;
  }
};

}  // namespace herald
