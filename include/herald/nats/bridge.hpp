// herald::nats::Bridge<T>: carries a Broker<T>'s topics over NATS, so that a message published in
// one process reaches subscribers in another with the same wildcard meaning. Optional: it needs
// the NATS C client (Debian: libnats-dev; CMake: herald::nats) and is not part of herald.hpp.
#pragma once

#include <herald/bounded_queue.hpp>
#include <herald/broker.hpp>
#include <herald/detail/counters.hpp>
#include <herald/detail/error_text.hpp>
#include <herald/detail/hashing.hpp>
#include <herald/detail/parking.hpp>
#include <herald/executor.hpp>
#include <herald/headers.hpp>
#include <herald/nats/codec.hpp>
#include <herald/nats/connection.hpp>
#include <herald/policy.hpp>
#include <herald/stats.hpp>
#include <herald/subscription.hpp>
#include <herald/topic.hpp>

#include <nats/nats.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace herald::nats {

/// Local topics matching `pattern` are published to NATS as `prefix.topic` (or `topic`).
struct ExportRule {
  std::string pattern;
  std::string prefix{};
  /// The outbound queue. While connected, a local publish hands the message to the NATS client
  /// on the publisher's own thread; while NATS is unreachable, messages wait in a backlog of this
  /// capacity, and this overflow policy decides what happens when it is full (drop_incoming /
  /// drop_oldest count drops; block makes local publishers wait up to block_timeout). The same
  /// options apply to the export's handler subscription, whose queue only fills while its
  /// handler is held up (by a full backlog under `block`, or by the client writing to the
  /// socket). Overflow::disconnect is refused: it would end the export for good.
  SubscribeOptions queue{.capacity = 8192};
};

/// NATS subjects matching `prefix.pattern` (or `pattern`) are published into the broker as
/// `topic` (the subject without the prefix).
struct ImportRule {
  std::string pattern;
  std::string prefix{};
  /// Non-empty: a NATS queue group, so each message goes to one of the bridges in the group.
  std::string queue_group{};
  /// The NATS client's per-subscription buffer; beyond it, it drops and counts (dropped_slow).
  int pending_messages = 65536;
  int pending_bytes = 64 * 1024 * 1024;
  /// Non-empty: a JetStream stream that captures this rule's subjects. The bridge's constructor
  /// then seeds the broker's retained messages from it: the last message the stream holds for
  /// every subject the rule imports (JetStream's "last per subject"), published into the broker
  /// with PublishOptions::retain (a Broker::retain policy covering the topic applies; call
  /// Broker::retain for the imported topics too, so that live imports keep the state current).
  /// The import's subscription starts first and its live messages wait until the seed is in, so
  /// no update published meanwhile is lost; one published while the seed is read may arrive
  /// twice (seeded, then live), never newer-then-older at the end. Counted in
  /// BridgeStats::seeded.
  std::string seed_from_stream{};
};

struct BridgeOptions {
  /// The NATS server, e.g. "nats://127.0.0.1:4222".
  std::string url = "nats://127.0.0.1:4222";
  std::vector<ExportRule> exports{};
  std::vector<ImportRule> imports{};
  /// Connection name, shown by the server's monitoring.
  std::string name{};
  std::chrono::milliseconds connect_timeout{2000};
  ReconnectPolicy reconnect{};
  /// How often the client pings the server; two unanswered pings mean the link is dead.
  std::chrono::milliseconds ping_interval{10000};
  /// Bytes the NATS client buffers for messages handed to it just as the link went down.
  int reconnect_buffer_bytes = 8 * 1024 * 1024;
  /// NATS servers close a connection whose protocol line exceeds max_control_line (4096 by
  /// default) and the client does not check, so longer subjects are refused here.
  std::size_t max_subject_bytes = 4000;
  /// Adds a `Herald-Seq` header (stream and per-subject sequence number) to every exported
  /// message, so importing bridges count the messages they missed (`lost`) and drop their own
  /// that come back (`echoes`); it replaces a message's own header of that name. Costs: NATS
  /// messages with headers are several times slower.
  bool track_loss = false;
  /// Called for every failure, from the bridge's or the NATS client's threads (concurrently).
  /// Exceptions from it are ignored.
  std::function<void(const BridgeError&)> on_error{};
};

/// The bridge's counters (defined with every other stats struct in herald/stats.hpp).
using BridgeStats = herald::BridgeStats;

namespace detail {

using herald::detail::OwnedCounter;
using herald::detail::TopicHash;

inline constexpr const char* kSeqHeader = "Herald-Seq";

/// Unbounded topic sets would make the sequence maps unbounded; starting over is cheap and only
/// forgets where each subject was (no false loss: a restart is recognised as one).
inline constexpr std::size_t kMaxTrackedSubjects = 65536;

/// Imported topics are unbounded too; a cache miss only costs one route lookup.
inline constexpr std::size_t kMaxCachedPublishers = 1024;

inline std::string prefix_with_dot(const std::string& prefix) {
  return prefix.empty() ? std::string() : prefix + ".";
}

}  // namespace detail

/// Connects a Broker<T> to a NATS server: local topics matching the export rules are published
/// to NATS, NATS subjects matching the import rules are published into the broker. Wildcards mean
/// the same on both sides. Messages never go back where they came from: the connection does not
/// receive its own publishes, and an export skips what its own bridge imported (Message::origin).
///
///     herald::Broker<std::string> broker;
///     herald::nats::Bridge<std::string> bridge(broker, {
///         .url = "nats://127.0.0.1:4222",
///         .exports = {{.pattern = "orders.>", .prefix = "eu"}},
///         .imports = {{.pattern = "orders.>", .prefix = "us"}}});
///
/// Each export is a handler subscription on the broker, run inline (herald::inline_executor): while
/// the link is up and nothing waits, the publisher's thread encodes the message and hands it to
/// the NATS client, with no thread hop; otherwise the message joins the export's backlog, which a
/// thread of the bridge sends in order once the link is back. Each import is a NATS subscription
/// whose callback decodes and calls `broker.publish_from(Origin{id()}, {.headers = ...}, topic,
/// value)`.
///
/// Headers (Message::headers, PublishOptions::headers) travel as NATS headers, both ways and with
/// any NATS client: every value of a name, in order (the C client keeps names in a hash, so the
/// order between different names is not kept). An import leaves out `Herald-Seq` (the bridge's
/// own, see track_loss) and the `Status` and `Description` the client makes of the status line
/// of a no-responders message (the server's answer, not a publisher's data); a header that
/// breaks herald's rules (Headers::check) drops the message as undecodable. Header bytes count
/// toward the server's max_payload. A message without headers costs nothing for them: it is
/// exported with a plain publish and imported with nothing allocated. While the server is
/// unreachable exported messages wait in each export's backlog, whose capacity and overflow policy
/// apply (ExportRule::queue), and the client reconnects forever with jittered backoff. Delivery
/// over NATS is at most once: a message handed to the client just before the link died can be lost
/// (track_loss counts such losses). The broker must outlive the bridge. Destroying the bridge ends
/// the imports (waiting for a running callback), ends the exports (waiting for a running handler;
/// messages still in a backlog are discarded: call flush() first), then closes the connection.
/// Throws: (constructor) InvalidTopic for an invalid pattern or prefix; std::invalid_argument for
/// other bad rules; std::length_error for an import subject longer than max_subject_bytes;
/// NatsError when the server cannot be reached. Nothing is left running then. Thread-safety: every
/// member function may be called concurrently.
template <class T, class C = DefaultCodec<T>>
requires Codec<C, T>
class Bridge {
 public:
  Bridge(Broker<T>& broker, BridgeOptions options, C codec = C{})
      : broker_(broker),
        options_(std::move(options)),
        codec_(std::move(codec)),
        id_(detail::random_id()),
        id_hex_(hex(id_)),
        report_(options_.on_error) {
    validate_rules();
    conn_ = std::make_unique<detail::Connection>(
        detail::ConnectionSettings{options_.url, options_.name, options_.connect_timeout,
                                   options_.reconnect, options_.ping_interval,
                                   options_.reconnect_buffer_bytes},
        report_, id_);
    for (std::size_t i = 0; i < options_.exports.size(); ++i) {
      exports_.push_back(std::make_unique<Export>(*this, options_.exports[i], i));
    }
    for (const ImportRule& rule : options_.imports) {
      imports_.push_back(std::make_unique<Import>(*this, rule));
    }
    if (!imports_.empty()) {
      // When the constructor returns, the server knows the subscriptions.
      detail::check(natsConnection_FlushTimeout(conn_->get(), options_.connect_timeout.count()),
                    "herald::nats: cannot register the imports");
    }
    for (std::size_t i = 0; i < imports_.size(); ++i) {
      if (!options_.imports[i].seed_from_stream.empty()) seed(*imports_[i], options_.imports[i]);
    }
  }
  Bridge(const Bridge&) = delete;
  Bridge& operator=(const Bridge&) = delete;

  /// Ends the imports, then the exports, then closes the connection (see the class comment).
  ~Bridge() {
    imports_.clear();
    exports_.clear();
  }

  /// The origin id of what this bridge imports (Message::origin()), random and never 0.
  [[nodiscard]] std::uint64_t id() const noexcept { return id_; }
  /// True while the connection to the server is up (as last reported by the client).
  [[nodiscard]] bool is_connected() const noexcept { return conn_->connected(); }
  /// The NATS connection, e.g. to use JetStream next to the bridge. Do not close it.
  [[nodiscard]] natsConnection* native_handle() const noexcept { return conn_->get(); }

  /// Waits until every message queued for export so far has been handled and the server has
  /// confirmed receiving what was sent (a round trip). False on timeout or while disconnected.
  /// Blocks: up to `timeout`.
  bool flush(std::chrono::milliseconds timeout) {
    const auto deadline = herald::detail::Deadline::after(timeout);
    for (const auto& e : exports_) {
      for (;;) {
        const std::uint64_t handled = e->handled.load(std::memory_order_seq_cst);
        const HandlerStats q = e->sub.stats();
        if (handled + q.evicted >= q.delivered) break;
        // Flushers of different targets share `handled_changed`: each waits for "handled moved",
        // which every notify satisfies (the protocol in detail/parking.hpp).
        const auto moved = [&] { return e->handled.load(std::memory_order_seq_cst) != handled; };
        if (herald::detail::wait_until(e->handled_changed, moved, deadline) !=
            herald::detail::WaitStatus::done) {
          return false;
        }
      }
    }
    // What is left of the timeout for the server's round trip (a day stands for "forever").
    std::int64_t left_ms = 24 * 3600 * 1000;
    if (!deadline.is_forever()) {
      if (deadline.passed()) return false;
      left_ms = std::chrono::ceil<std::chrono::milliseconds>(deadline.when() -
                                                             std::chrono::steady_clock::now())
                    .count();
    }
    return natsConnection_FlushTimeout(conn_->get(), std::max<std::int64_t>(1, left_ms)) == NATS_OK;
  }

  /// A snapshot of the counters (see BridgeStats for the identities they satisfy).
  [[nodiscard]] BridgeStats stats() const {
    BridgeStats s;
    for (const auto& e : exports_) {
      // Read the skips before the imports that caused them, so skipped <= imported_here.
      const std::uint64_t skipped = e->skipped.get();
      const HandlerStats q = e->sub.stats();
      const std::uint64_t imported_here = e->imported_here.load(std::memory_order_relaxed);
      // The export queue cannot tell imported messages from local ones; imported ones are
      // either skipped by the export thread or were refused or evicted by the queue.
      const std::uint64_t imported_lost = imported_here - std::min(imported_here, skipped);
      const std::uint64_t refused = q.dropped + q.evicted;
      s.exported += q.offered - std::min(q.offered, imported_here);
      s.dropped_overflow += refused - std::min(refused, imported_lost) + e->backlog_refused.get() +
                            e->backlog_evicted.get();
      s.sent += e->sent.get();
      s.dropped_subject += e->dropped_subject.get();
      s.dropped_unsafe_subject += e->dropped_unsafe_subject.get();
      s.dropped_too_large += e->dropped_too_large.get();
      s.dropped_encode += e->dropped_encode.get();
      s.dropped_failed += e->dropped_failed.get();
      s.skipped_echo += skipped;
      s.queued += q.queue_depth + e->backlog.approx_size();
    }
    for (const auto& i : imports_) {
      s.received += i->received.get();
      s.imported += i->imported.get();
      s.rejected += i->rejected.get();
      s.dropped_decode += i->dropped_decode.get();
      s.import_failed += i->import_failed.get();
      s.echoes += i->echoes.get();
      s.lost += i->lost.get();
      s.seeded += i->seeded.get();
      std::int64_t dropped = 0;
      if (natsSubscription_GetDropped(i->sub, &dropped) == NATS_OK && dropped > 0) {
        s.dropped_slow += static_cast<std::uint64_t>(dropped);
      }
    }
    s.disconnects = conn_->disconnects();
    s.reconnects = conn_->reconnects();
    s.errors = report_.errors();
    s.connected = conn_->connected();
    return s;
  }

 private:
  struct Export {
    Export(Bridge& b, const ExportRule& rule, std::size_t index)
        : bridge(b),
          pattern(rule.pattern),
          prefix(detail::prefix_with_dot(rule.prefix)),
          stream(b.id_hex_ + "-" + std::to_string(index)),
          overflow(rule.queue.overflow),
          block_timeout(rule.queue.block_timeout),
          backlog(rule.queue.capacity),
          subject(prefix),
          sub(b.broker_.subscribe(
              rule.pattern, [this](const Message<T>& m) { bridge.export_one(*this, m); },
              inline_executor, rule.queue)),
          thread([this](std::stop_token stop) { bridge.run_backlog(*this, stop); }) {}
    Export(const Export&) = delete;
    Export& operator=(const Export&) = delete;
    /// Ends the subscription (a handler waiting for room in the backlog gives up), then the
    /// thread (the jthread's destructor).
    ~Export() {
      stopping.request_stop();
      sub.unsubscribe();
    }

    /// One message dealt with for good (sent, dropped, skipped): what flush() waits for.
    void finished() noexcept {
      handled.fetch_add(1, std::memory_order_seq_cst);
      handled_changed.notify_all();  // a load, unless flush() waits
    }

    Bridge& bridge;
    const Pattern pattern;
    const std::string prefix;  // "" or "prefix."
    const std::string stream;  // track_loss: this export's stream id, "<bridge id>-<index>"
    const Overflow overflow;
    const std::chrono::nanoseconds block_timeout;
    std::atomic<std::uint64_t> imported_here{0};  // imports offered to this export's queue
    detail::OwnedCounter skipped, sent, dropped_subject, dropped_unsafe_subject, dropped_too_large,
        dropped_encode, dropped_failed, backlog_refused, backlog_evicted;
    // Messages dealt with for good; flush() waits on handled_changed for it.
    std::atomic<std::uint64_t> handled{0};
    herald::detail::EventCount handled_changed;
    // What waits for the connection, in order, drained by `thread`; the rule's capacity and
    // overflow policy apply to it. `pending` counts what entered it and is not finished: while
    // it is not 0 the handler queues behind it instead of sending, so order holds; only the
    // handler (the subscription's strand) raises it, only the thread lowers it but for evictions.
    BoundedQueue<Message<T>> backlog;
    std::atomic<std::size_t> pending{0};
    std::stop_source stopping;  // a handler blocked on a full backlog gives up (destruction)
    // The strand's buffers. The sequences (track_loss) are the sender's: the strand while
    // pending is 0, the thread otherwise, never both (pending hands over with acquire/release).
    std::string subject;  // "prefix." + topic
    std::string scratch;  // the codec's
    std::unordered_map<std::string, std::uint64_t, herald::detail::TopicHash, std::equal_to<>>
        sequences;               // track_loss: the next sequence number of each subject
    HandlerSubscription<T> sub;  // after what its handler touches
    std::jthread thread;         // last: starts once everything above exists, stops first
  };

  enum class Gate : std::uint8_t { open, seeding, closed };

  struct Import {
    Import(Bridge& b, const ImportRule& rule)
        : bridge(b),
          prefix_size(detail::prefix_with_dot(rule.prefix).size()),
          subject(detail::prefix_with_dot(rule.prefix) + rule.pattern),
          gate(rule.seed_from_stream.empty() ? Gate::open : Gate::seeding) {
      natsStatus s = NATS_OK;
      if (rule.queue_group.empty()) {
        s = natsConnection_Subscribe(&sub, b.conn_->get(), subject.c_str(), &Bridge::on_message,
                                     this);
      } else {
        s = natsConnection_QueueSubscribe(&sub, b.conn_->get(), subject.c_str(),
                                          rule.queue_group.c_str(), &Bridge::on_message, this);
      }
      detail::check(s, ("herald::nats: cannot subscribe to '" + subject + "'").c_str());
      s = natsSubscription_SetOnCompleteCB(sub, &Import::on_complete, this);
      if (s != NATS_OK) complete.store(true);  // no completion callback to wait for
      if (s == NATS_OK) {
        s = natsSubscription_SetPendingLimits(sub, rule.pending_messages, rule.pending_bytes);
      }
      if (s != NATS_OK) {
        end();
        throw NatsError("herald::nats: cannot set up the subscription to '" + subject + "'", s);
      }
    }
    Import(const Import&) = delete;
    Import& operator=(const Import&) = delete;
    ~Import() { end(); }

    /// Lets the callback through (Gate::open), or makes it drop what it was holding and what
    /// comes (Gate::closed).
    void set_gate(Gate g) noexcept {
      gate.store(g, std::memory_order_release);
      gate.notify_all();
    }

    /// Unsubscribes and waits until no callback runs or will run, then frees the subscription.
    void end() noexcept {
      if (gate.load(std::memory_order_acquire) == Gate::seeding) set_gate(Gate::closed);
      if (!sub) return;
      natsSubscription_Unsubscribe(sub);
      herald::detail::wait_until(done, [&] { return complete.load(std::memory_order_seq_cst); });
      // on_complete finishes under `mutex`: once we hold it, it no longer touches this Import.
      { const std::lock_guard lock(mutex); }
      natsSubscription_Destroy(sub);
      sub = nullptr;
    }

    static void on_complete(void* self) {
      auto& i = *static_cast<Import*>(self);
      const std::lock_guard lock(i.mutex);
      i.complete.store(true, std::memory_order_seq_cst);
      i.done.notify_all();
    }

    Bridge& bridge;
    const std::size_t prefix_size;
    const std::string subject;  // prefix.pattern
    // Until a seed (ImportRule::seed_from_stream) is in, the callback waits at the gate.
    std::atomic<Gate> gate;
    natsSubscription* sub = nullptr;
    std::mutex mutex;  // held by on_complete while it touches this Import
    herald::detail::EventCount done;
    std::atomic<bool> complete{false};
    detail::OwnedCounter received, imported, rejected, dropped_decode, import_failed, echoes, lost,
        seeded;
    // track_loss, callback thread only: last sequence number per stream, per subject.
    using SubjectSeqs =
        std::unordered_map<std::string, std::uint64_t, herald::detail::TopicHash, std::equal_to<>>;
    std::unordered_map<std::string, SubjectSeqs, herald::detail::TopicHash, std::equal_to<>>
        streams;
    std::size_t tracked = 0;
    // Callback thread only (one Publisher per thread, as Publisher requires).
    std::unordered_map<std::string, Publisher<T>, herald::detail::TopicHash, std::equal_to<>>
        publishers;
  };

  static std::string hex(std::uint64_t v) {
    std::string s(16, '0');
    for (int i = 15; i >= 0; --i, v >>= 4)
      s[static_cast<std::size_t>(i)] = "0123456789abcdef"[v & 15];
    return s;
  }

  /// A rule's pattern, prefix or queue group holding a byte NATS cannot carry (a NUL: herald
  /// allows it, the wire does not) is refused, naming the rule and the byte.
  static void check_wire_safe(std::string_view what, std::string_view s) {
    if (const std::size_t at = detail::find_wire_unsafe(s); at != std::string_view::npos) {
      throw std::invalid_argument(detail::wire_unsafe_text(what, s, at));
    }
  }

  void validate_rules() const {
    for (const ExportRule& r : options_.exports) {
      validate_pattern(r.pattern);
      if (!r.prefix.empty()) validate_topic(r.prefix);
      // A pattern with a NUL selects only topics that could not be sent.
      check_wire_safe("export pattern", r.pattern);
      check_wire_safe("export prefix", r.prefix);
      if (r.queue.capacity == 0) {
        throw std::invalid_argument("herald::nats: the export of '" + r.pattern +
                                    "' has a queue capacity of 0");
      }
      if (r.queue.overflow == Overflow::disconnect) {
        throw std::invalid_argument("herald::nats: the export of '" + r.pattern +
                                    "' cannot use Overflow::disconnect (it would end the export "
                                    "for good); use drop_incoming, drop_oldest or block");
      }
    }
    for (const ImportRule& r : options_.imports) {
      validate_pattern(r.pattern);
      if (!r.prefix.empty()) validate_topic(r.prefix);
      check_wire_safe("import pattern", r.pattern);
      check_wire_safe("import prefix", r.prefix);
      check_wire_safe("import queue group", r.queue_group);
      const std::size_t size = detail::prefix_with_dot(r.prefix).size() + r.pattern.size();
      if (size > options_.max_subject_bytes) {
        throw std::length_error("herald::nats: the import subject '" +
                                detail::prefix_with_dot(r.prefix) + r.pattern + "' is " +
                                std::to_string(size) + " bytes; max_subject_bytes is " +
                                std::to_string(options_.max_subject_bytes));
      }
      if (!r.queue_group.empty() &&
          std::any_of(r.queue_group.begin(), r.queue_group.end(), herald::detail::is_topic_space)) {
        throw std::invalid_argument("herald::nats: queue group '" + r.queue_group +
                                    "' contains whitespace");
      }
    }
  }

  // ----- export -----

  /// The export subscription's handler, inline in the local publisher's thread (the strand:
  /// one message at a time, in order): sends at once while connected and nothing waits in the
  /// backlog, else queues the message there for the backlog thread. No thread hop while the
  /// link is up; while it is down, the backlog's capacity and the rule's overflow policy decide.
  void export_one(Export& e, const Message<T>& m) noexcept {
    try {
      if (m.origin() == id_) {
        e.skipped.add();
        e.finished();
        return;
      }
      if (e.pending.load(std::memory_order_acquire) == 0 && conn_->connected()) {
        if (const auto payload = prepare(e, m, e.subject, e.scratch)) {
          if (!attempt(e, e.subject, *payload, m.headers())) return to_backlog(e, m);
        }
        e.finished();
        return;
      }
      to_backlog(e, m);
    } catch (...) {  // an allocation failure while reporting; nothing may unwind into publish
      e.dropped_failed.add();
      e.finished();
    }
  }

  /// Queues `m` behind what waits for the connection, applying the rule's overflow policy.
  void to_backlog(Export& e, const Message<T>& m) {
    e.pending.fetch_add(1, std::memory_order_seq_cst);
    bool queued = false;
    switch (e.overflow) {
      case Overflow::drop_oldest:
        while (!(queued = e.backlog.try_push(m))) {
          if (e.backlog.try_pop()) {  // the thread may have taken it first: then just retry
            e.backlog_evicted.add();
            e.pending.fetch_sub(1, std::memory_order_seq_cst);
            e.finished();
          }
        }
        break;
      case Overflow::block:
        queued = e.block_timeout == std::chrono::nanoseconds::max()
                     ? e.backlog.push(m, e.stopping.get_token())
                     : e.backlog.push_for(m, e.block_timeout);
        break;
      default:  // drop_incoming (disconnect is refused by validate_rules)
        queued = e.backlog.try_push(m);
        break;
    }
    if (!queued) {
      e.backlog_refused.add();
      e.pending.fetch_sub(1, std::memory_order_seq_cst);
      e.finished();
    }
  }

  /// The backlog thread: sends what waits for the connection, in order, waiting for the link.
  void run_backlog(Export& e, std::stop_token stop) {
    std::string subject = e.prefix;
    std::string scratch;
    while (auto m = e.backlog.pop(stop)) {
      if (const auto payload = prepare(e, *m, subject, scratch)) {
        send(e, subject, *payload, m->headers(), stop);
      }
      // Release: the strand that reads 0 sends after everything this thread sent.
      e.pending.fetch_sub(1, std::memory_order_release);
      e.finished();
    }
    nats_ReleaseThreadMemory();  // the client keeps per-thread buffers for threads it did not start
  }

  /// Everything before the wire: skips echoes, builds `prefix.topic` into `subject`, encodes and
  /// checks the sizes. The payload to send, or nothing (counted and reported).
  std::optional<std::string_view> prepare(Export& e, const Message<T>& m, std::string& subject,
                                          std::string& scratch) {
    if (m.origin() == id_) {
      e.skipped.add();
      return std::nullopt;
    }
    // The topic passed the broker's validation and the prefix ours, so `prefix.topic` is a valid
    // subject without whitespace; a NUL byte (valid in herald, cut off by the C client) and its
    // length can still upset the wire. One memchr per message: cheaper than a per-topic cache.
    const std::string& topic = m.topic();
    subject.resize(e.prefix.size());
    subject += topic;
    if (const std::size_t nul = topic.find('\0'); nul != std::string::npos) [[unlikely]] {
      e.dropped_unsafe_subject.add();
      report_(ErrorKind::subject_unsafe, subject,
              detail::wire_unsafe_text("subject", subject, e.prefix.size() + nul));
      return std::nullopt;
    }
    if (subject.size() > options_.max_subject_bytes) {
      e.dropped_subject.add();
      report_(ErrorKind::subject_too_long, subject,
              "herald::nats: subject is " + std::to_string(subject.size()) +
                  " bytes; max_subject_bytes is " + std::to_string(options_.max_subject_bytes));
      return std::nullopt;
    }
    std::string_view payload;
    try {
      payload = codec_.encode(*m, scratch);
    } catch (...) {
      e.dropped_encode.add();
      report_(ErrorKind::encode_failed, subject,
              "herald::nats: encode: " + herald::detail::exception_text(std::current_exception()));
      return std::nullopt;
    }
    const std::int64_t max_payload = conn_->max_payload();
    if (max_payload > 0 && payload.size() > static_cast<std::uint64_t>(max_payload)) {
      too_large(e, subject, payload.size(), max_payload);
      return std::nullopt;
    }
    return payload;
  }

  /// One try at handing a message to the NATS client: true when it is dealt with (sent, or
  /// dropped, counted and reported), false when the link is down and it must wait.
  bool attempt(Export& e, const std::string& subject, std::string_view payload,
               const Headers& headers) {
    std::uint64_t* seq = options_.track_loss ? &next_sequence(e, subject) : nullptr;
    const natsStatus s = publish(e, subject, payload, headers, seq);
    switch (s) {
      case NATS_OK:
        e.sent.add();
        if (seq) ++*seq;
        return true;
      case NATS_CONNECTION_DISCONNECTED:
      case NATS_INSUFFICIENT_BUFFER:  // the client's reconnect buffer is full
      case NATS_IO_ERROR:
      case NATS_TIMEOUT:
      case NATS_NOT_YET_CONNECTED:  // the link went down under us: try again once it is up
        return false;
      case NATS_MAX_PAYLOAD:
        too_large(e, subject, payload.size(), conn_->max_payload());
        return true;
      default:
        e.dropped_failed.add();
        report_(ErrorKind::publish_failed, subject,
                std::string("herald::nats: publish: ") + natsStatus_GetText(s), s);
        return true;
    }
  }

  /// Hands one message to the NATS client, holding it through disconnects (the backlog behind
  /// it fills meanwhile, and the overflow policy applies) until it is sent, refused for good,
  /// or the bridge stops.
  void send(Export& e, const std::string& subject, std::string_view payload, const Headers& headers,
            const std::stop_token& stop) {
    for (;;) {
      if (!conn_->wait_connected(stop)) {  // stopping, or the connection closed
        e.dropped_failed.add();
        return;
      }
      if (attempt(e, subject, payload, headers)) return;
      conn_->pause(stop, std::chrono::milliseconds(5));
      if (stop.stop_requested()) {
        e.dropped_failed.add();
        return;
      }
    }
  }

  void too_large(Export& e, std::string_view subject, std::size_t size, std::int64_t max) {
    e.dropped_too_large.add();
    report_(ErrorKind::payload_too_large, subject,
            "herald::nats: message is " + std::to_string(size) +
                " bytes; the server's max_payload is " + std::to_string(max),
            NATS_MAX_PAYLOAD);
  }

  std::uint64_t& next_sequence(Export& e, const std::string& subject) {
    auto it = e.sequences.find(subject);
    if (it == e.sequences.end()) {
      if (e.sequences.size() >= detail::kMaxTrackedSubjects) e.sequences.clear();
      it = e.sequences.emplace(subject, 1).first;
    }
    return it->second;
  }

  natsStatus publish(Export& e, const std::string& subject, std::string_view payload,
                     const Headers& headers, const std::uint64_t* seq) {
    const int size = static_cast<int>(payload.size());  // <= max_payload, which is an int64
    // Most messages: no header, and no natsMsg to build and free.
    if (!seq && headers.empty()) {
      return natsConnection_Publish(conn_->get(), subject.c_str(), payload.data(), size);
    }
    natsMsg* msg = nullptr;
    natsStatus s = natsMsg_Create(&msg, subject.c_str(), nullptr, payload.data(), size);
    if (s != NATS_OK) return s;
    s = detail::add_headers(msg, headers);
    if (s == NATS_OK && seq) {
      const std::string value = e.stream + " " + std::to_string(*seq);
      s = natsMsgHeader_Set(msg, detail::kSeqHeader, value.c_str());  // replaces a user's own
    }
    if (s == NATS_OK) s = natsConnection_PublishMsg(conn_->get(), msg);
    natsMsg_Destroy(msg);
    return s;
  }

  // ----- import -----

  static void on_message(natsConnection*, natsSubscription*, natsMsg* msg, void* self) {
    auto& imp = *static_cast<Import*>(self);
    imp.gate.wait(Gate::seeding, std::memory_order_acquire);  // the seed goes first
    try {
      if (imp.gate.load(std::memory_order_acquire) == Gate::open) imp.bridge.import_one(imp, msg);
    } catch (...) {  // only an allocation failure while reporting gets here; never unwind into C
    }
    natsMsg_Destroy(msg);
  }

  // Reads the last message per subject of `rule.seed_from_stream` for `imp`'s subject and
  // publishes each retained (see ImportRule::seed_from_stream), then opens the import's gate.
  // The callback thread waits at the gate meanwhile, so the import's counters have one writer.
  // Throws: NatsError (the import's gate closed then: what it held is dropped).
  void seed(Import& imp, const ImportRule& rule) {
    try {
      const std::string what =
          "herald::nats: seeding '" + imp.subject + "' from stream '" + rule.seed_from_stream + "'";
      jsCtx* js = nullptr;
      detail::check(natsConnection_JetStream(&js, conn_->get(), nullptr), what.c_str());
      const std::unique_ptr<jsCtx, void (*)(jsCtx*)> js_owner(js, &jsCtx_Destroy);
      jsSubOptions so;
      jsSubOptions_Init(&so);
      so.Stream = rule.seed_from_stream.c_str();
      so.Config.DeliverPolicy = js_DeliverLastPerSubject;
      so.Config.AckPolicy = js_AckNone;
      jsErrCode jerr{};
      natsSubscription* raw = nullptr;
      js_check(js_SubscribeSync(&raw, js, imp.subject.c_str(), nullptr, &so, &jerr), jerr, what);
      const auto drop = [](natsSubscription* sub) {
        natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
      };
      const std::unique_ptr<natsSubscription, decltype(drop)> sub(raw, drop);
      // Nothing pending and nothing delivered yet: the stream has no message for these subjects.
      jsConsumerInfo* ci = nullptr;
      js_check(natsSubscription_GetConsumerInfo(&ci, sub.get(), nullptr, &jerr), jerr, what);
      const bool none = ci->NumPending == 0 && ci->Delivered.Consumer == 0;
      jsConsumerInfo_Destroy(ci);
      for (bool last = none; !last;) {
        natsMsg* msg = nullptr;
        detail::check(
            natsSubscription_NextMsg(&msg, sub.get(),
                                     static_cast<std::int64_t>(options_.connect_timeout.count())),
            (what + ": no message within connect_timeout").c_str());
        const std::unique_ptr<natsMsg, void (*)(natsMsg*)> owner(msg, &natsMsg_Destroy);
        jsMsgMetaData* meta = nullptr;
        detail::check(natsMsg_GetMetaData(&meta, msg), what.c_str());
        last = meta->NumPending == 0;  // the consumer's last message, as the server counted
        jsMsgMetaData_Destroy(meta);
        if (import_one(imp, msg, /*seed=*/true)) imp.seeded.add();
      }
    } catch (...) {
      imp.set_gate(Gate::closed);
      throw;
    }
    imp.set_gate(Gate::open);
  }

  static void js_check(natsStatus s, jsErrCode jerr, const std::string& what) {
    if (s == NATS_OK) return;
    throw NatsError(
        what + (jerr != 0 ? " (JetStream error " + std::to_string(int(jerr)) + ")" : std::string()),
        s);
  }

  // `seed`: a message read from a stream by seed(), published retained. True when it entered
  // the broker.
  bool import_one(Import& imp, natsMsg* msg, bool seed = false) {
    imp.received.add();
    const std::string_view subject = natsMsg_GetSubject(msg);
    // Another client may send a NUL in a subject; the C client's string stops there, and the
    // message must not enter the broker under the shorter topic.
    if (detail::subject_cut_short(msg, subject)) [[unlikely]] {
      imp.rejected.add();
      report_(ErrorKind::invalid_topic, subject,
              "herald::nats: subject '" + std::string(subject) +
                  "...' was cut short by a NUL byte (NATS cannot carry it intact)");
      return false;
    }
    if (!seed && options_.track_loss && !check_sequence(imp, msg, subject)) return false;
    const std::string_view topic = subject.substr(std::min(imp.prefix_size, subject.size()));
    // The server matched the subject against our subscription, but it does not validate what
    // publishers send (e.g. "a..b"): herald's rules apply before anything enters the broker.
    if (!is_valid_topic(topic)) {
      imp.rejected.add();
      report_(ErrorKind::invalid_topic, subject,
              "herald::nats: subject '" + std::string(subject) + "' is not a valid herald topic");
      return false;
    }
    const std::string_view data(natsMsg_GetData(msg),
                                static_cast<std::size_t>(natsMsg_GetDataLength(msg)));
    std::optional<T> value;
    try {
      value.emplace(codec_.decode(data));
    } catch (...) {
      imp.dropped_decode.add();
      report_(ErrorKind::decode_failed, subject,
              "herald::nats: decode: " + herald::detail::exception_text(std::current_exception()));
      return false;
    }
    Headers headers;
    if (!take_headers(imp, msg, subject, headers)) return false;
    // Count before publishing: an export thread may skip the message before publish returns.
    for (const auto& e : exports_) {
      if (e->pattern.matches(topic)) e->imported_here.fetch_add(1, std::memory_order_relaxed);
    }
    try {
      Publisher<T>& publisher = publisher_for(imp, topic);
      const PublishResult r =
          headers.empty() && !seed
              ? publisher.publish(std::move(*value))
              : publisher.publish(std::move(*value),
                                  {.headers = std::move(headers), .retain = seed});
      if (!r.closed) {
        imp.imported.add();
        return true;
      }
      report_(ErrorKind::import_failed, subject, "herald::nats: the broker is closed");
    } catch (...) {
      report_(ErrorKind::import_failed, subject,
              "herald::nats: publish: " + herald::detail::exception_text(std::current_exception()));
    }
    imp.import_failed.add();
    for (const auto& e : exports_) {
      if (e->pattern.matches(topic)) e->imported_here.fetch_sub(1, std::memory_order_relaxed);
    }
    return false;
  }

  /// Moves the NATS headers of `msg` into `out`, but for the bridge's own Herald-Seq and the
  /// status a no-responders message carries. False (counted and reported as a decode failure)
  /// when the client cannot parse them or one breaks herald's rules (Headers::check).
  bool take_headers(Import& imp, natsMsg* msg, std::string_view subject, Headers& out) {
    try {
      detail::read_headers(
          msg, out, [](std::string_view name) { return name == detail::kSeqHeader; }, false);
      return true;
    } catch (...) {
      imp.dropped_decode.add();
      report_(ErrorKind::decode_failed, subject,
              "herald::nats: headers: " + herald::detail::exception_text(std::current_exception()));
      return false;
    }
  }

  /// A Publisher per topic (tagged with our origin): it skips validating the topic and looking up
  /// its route on every message. Same semantics as Broker::publish_from.
  Publisher<T>& publisher_for(Import& imp, std::string_view topic) {
    auto it = imp.publishers.find(topic);
    if (it == imp.publishers.end()) {
      if (imp.publishers.size() >= detail::kMaxCachedPublishers) imp.publishers.clear();
      it = imp.publishers.emplace(std::string(topic), broker_.publisher(topic, Origin{id_})).first;
    }
    return it->second;
  }

  /// track_loss: false for this bridge's own message coming back; counts gaps otherwise.
  bool check_sequence(Import& imp, natsMsg* msg, std::string_view subject) {
    const char* raw = nullptr;
    if (natsMsgHeader_Get(msg, detail::kSeqHeader, &raw) != NATS_OK || !raw) return true;
    const std::string_view value(raw);
    const std::size_t space = value.find(' ');
    if (space == std::string_view::npos) return true;
    const std::string_view stream = value.substr(0, space);
    if (stream.substr(0, id_hex_.size()) == id_hex_) {
      imp.echoes.add();
      return false;
    }
    std::uint64_t seq = 0;
    const std::string_view digits = value.substr(space + 1);
    if (std::from_chars(digits.data(), digits.data() + digits.size(), seq).ec != std::errc{}) {
      return true;
    }
    if (imp.tracked >= detail::kMaxTrackedSubjects) {
      imp.streams.clear();
      imp.tracked = 0;
    }
    auto s = imp.streams.find(stream);
    if (s == imp.streams.end()) s = imp.streams.emplace(std::string(stream), 0).first;
    auto last = s->second.find(subject);
    if (last == s->second.end()) {
      s->second.emplace(std::string(subject), seq);
      ++imp.tracked;
      return true;
    }
    // A smaller number means the exporter forgot its sequences (see kMaxTrackedSubjects).
    if (seq > last->second + 1) imp.lost.add(seq - last->second - 1);
    last->second = seq;
    return true;
  }

  Broker<T>& broker_;
  const BridgeOptions options_;
  const C codec_;
  const std::uint64_t id_;
  const std::string id_hex_;
  detail::Reporter report_;
  // Destroyed in reverse: the imports end first (their callbacks read exports_), then the
  // export threads stop, then the connection closes.
  std::unique_ptr<detail::Connection> conn_;
  std::vector<std::unique_ptr<Export>> exports_;
  std::vector<std::unique_ptr<Import>> imports_;
};

}  // namespace herald::nats
