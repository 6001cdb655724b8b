// herald::nats::Bridge<T>: carries a Broker<T>'s topics over NATS, so that a message published in
// one process reaches subscribers in another with the same wildcard meaning. Optional: it needs
// the NATS C client (Debian: libnats-dev; CMake: herald::nats) and is not part of herald.hpp.
#pragma once

#include <herald/bounded_queue.hpp>
#include <herald/broker.hpp>
#include <herald/dedup_window.hpp>
#include <herald/detail/counters.hpp>
#include <herald/detail/error_text.hpp>
#include <herald/detail/hashing.hpp>
#include <herald/detail/parking.hpp>
#include <herald/executor.hpp>
#include <herald/headers.hpp>
#include <herald/nats/codec.hpp>
#include <herald/nats/connection.hpp>
#include <herald/nats/jetstream.hpp>
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
#include <deque>
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
  /// With `jetstream`, the policy applies when max_in_flight is reached instead (there is no
  /// backlog: a message waits in the NATS client or for its retry, counted in flight).
  SubscribeOptions queue{.capacity = 8192};
  /// Set: publish to a JetStream stream at least once instead of core NATS at most once (see
  /// JetStreamExport, and "Delivery guarantees" in the README).
  std::optional<JetStreamExport> jetstream{};
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
  /// Set: consume a JetStream stream through a durable pull consumer, at least once, instead of
  /// a core NATS subscription (see JetStreamImport; queue_group and seed_from_stream must then be
  /// empty: bridges sharing the durable share its messages).
  std::optional<JetStreamImport> jetstream{};
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
/// over core NATS is at most once: a message handed to the client just before the link died can be
/// lost (track_loss counts such losses). A rule with `jetstream` goes through a JetStream stream
/// at least once instead: exports are resent until the stream acknowledges them, imports are
/// acknowledged once queued for every matching subscriber (or by ack()), nak'ed or dead-lettered
/// otherwise (see JetStreamExport, JetStreamImport). The broker must outlive the bridge.
/// Destroying the bridge ends the imports (waiting for a running callback), ends the exports
/// (waiting for a running handler; messages still in a backlog are discarded: call flush() first;
/// JetStream exports wait up to drain_timeout for their acknowledgements), then closes the
/// connection.
/// Throws: (constructor) InvalidTopic for an invalid pattern or prefix; std::invalid_argument for
/// other bad rules; std::length_error for an import subject longer than max_subject_bytes;
/// NatsError when the server cannot be reached, or a JetStream stream or consumer is missing (and
/// not to be created) or cannot be made. Nothing is left running then. Thread-safety: every
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
    for (std::size_t i = 0; i < options_.imports.size(); ++i) {
      imports_.push_back(std::make_unique<Import>(*this, options_.imports[i], i));
    }
    for (const auto& i : imports_) {
      if (i->js) i->start_fetching();  // once every import exists: ack() may look them up
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
      // JetStream: until the stream acknowledged everything (retries included).
      if (e->js && herald::detail::wait_until(
                       e->js->drained, [&] { return e->js->in_flight.load() == 0; }, deadline) !=
                       herald::detail::WaitStatus::done) {
        return false;
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
      if (e->js) {
        s.js_acked += e->js->acked.load(std::memory_order_relaxed);
        s.js_retried += e->js->retried.load(std::memory_order_relaxed);
        s.js_failed += e->js->failed.load(std::memory_order_relaxed);
        s.js_in_flight += e->js->in_flight.load(std::memory_order_relaxed);
      }
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
      if (i->js) {
        const JsIn& j = *i->js;
        s.js_acked_in += j.acked_in.load(std::memory_order_relaxed);
        s.js_nacked += j.nacked.load(std::memory_order_relaxed);
        s.js_dead_lettered += j.dead_lettered.load(std::memory_order_relaxed);
        s.js_duplicates += j.duplicates.load(std::memory_order_relaxed);
        s.js_not_queued += j.not_queued.load(std::memory_order_relaxed);
        s.js_ack_failed += j.ack_failed.load(std::memory_order_relaxed);
        s.js_pending_acks += j.pending_size.load(std::memory_order_relaxed);
      }
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

  /// AckMode::manual: acknowledges `m`, a message a JetStream import of this bridge published
  /// (it carries the bridge's `Herald-Ack` header), once the application is done with it. The
  /// first ack() or nak() of a message settles it; True when it was pending here (false: not a
  /// manual-ack JetStream import of this bridge, or already settled; the server redelivers a
  /// message settled neither way after ack_wait). Thread-safe; does not block on the network.
  bool ack(const Message<T>& m) { return settle(m, true); }
  /// AckMode::manual: gives `m` back for redelivery after the rule's nak backoff, or to the
  /// dead-letter subject once it was delivered max_deliver times. Same return value as ack().
  bool nak(const Message<T>& m) { return settle(m, false); }

 private:
  struct Export;

  /// The JetStream side of an export (ExportRule::jetstream). Every message handed to JetStream
  /// is in flight until acknowledged: held by the NATS client (its async publish list, with a
  /// deadline of ack_timeout) or by `retry`, never both, never neither.
  struct JsOut {
    JsOut(Bridge& b, Export& e, const JetStreamExport& o, std::size_t index)
        : options(o),
          what("herald::nats: the export of '" + e.pattern.str() + "'"),
          id_prefix(b.id_hex_ + "-" + std::to_string(index) + "-"),
          ctx(nullptr, &jsCtx_Destroy) {
      jsOptions jo;
      jsOptions_Init(&jo);
      // The acknowledgement callback runs on the client's thread for the context's replies.
      jo.PublishAsync.AckHandler = &Bridge::on_publish_ack;
      jo.PublishAsync.AckHandlerClosure = &e;
      jsCtx* raw = nullptr;
      detail::check(natsConnection_JetStream(&raw, b.conn_->get(), &jo), what.c_str());
      ctx.reset(raw);
      detail::ensure_stream(raw, o.stream, e.prefix + e.pattern.str(), what);
    }
    JsOut(const JsOut&) = delete;
    JsOut& operator=(const JsOut&) = delete;
    ~JsOut() {
      for (natsMsg* m : retry)
        natsMsg_Destroy(m);
    }

    const JetStreamExport options;
    const std::string what;
    const std::string id_prefix;  // Nats-Msg-Id: "<bridge id>-<export index>-" + sequence
    detail::JsCtxPtr ctx;
    std::atomic<std::size_t> in_flight{0};
    // `room`: the strand waits for in_flight < max; `drained`: flush and shutdown wait for 0.
    // Two event counts, so that each has waiters of one condition (see parking.hpp's notify).
    herald::detail::EventCount room, drained, wake;
    std::mutex retry_mutex;
    std::deque<natsMsg*> retry;  // under retry_mutex: messages to resend, oldest first
    std::atomic<std::size_t> retry_size{0};
    std::atomic<std::uint64_t> acked{0}, retried{0}, failed{0};
    std::mutex handler_mutex;  // held by the acknowledgement callback while it touches this
  };

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
          js(rule.jetstream ? std::make_unique<JsOut>(b, *this, *rule.jetstream, index) : nullptr),
          sub(b.broker_.subscribe(
              rule.pattern, [this](const Message<T>& m) { bridge.export_one(*this, m); },
              inline_executor, rule.queue)),
          thread([this](std::stop_token stop) {
            if (js) {
              bridge.run_js_retries(*this, stop);
            } else {
              bridge.run_backlog(*this, stop);
            }
          }) {}
    Export(const Export&) = delete;
    Export& operator=(const Export&) = delete;
    /// Ends the subscription (a handler waiting for room in the backlog gives up), then the
    /// thread (the jthread's destructor). JetStream: waits for the outstanding acknowledgements
    /// first (at most drain_timeout), and counts what is left as failed.
    ~Export() {
      stopping.request_stop();
      sub.unsubscribe();
      if (js) bridge.drain_js(*this);
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
    std::unique_ptr<JsOut> js;   // JetStream mode; made before the subscription can call it
    std::string msg_id;          // the strand's Nats-Msg-Id buffer
    HandlerSubscription<T> sub;  // after what its handler touches
    std::jthread thread;         // last: starts once everything above exists, stops first
  };

  enum class Gate : std::uint8_t { open, seeding, closed };

  /// The JetStream side of an import (ImportRule::jetstream): a pull subscription bound to the
  /// durable consumer, the thread that fetches from it, and (AckMode::manual) the messages
  /// waiting for the application's ack() or nak().
  struct JsIn {
    JsIn(Bridge& b, const JetStreamImport& o, const std::string& filter, std::size_t index)
        : options(o),
          what("herald::nats: the import of '" + filter + "'"),
          ack_prefix(b.id_hex_ + "." + std::to_string(index) + "."),
          ctx(nullptr, &jsCtx_Destroy) {
      jsCtx* raw = nullptr;
      detail::check(natsConnection_JetStream(&raw, b.conn_->get(), nullptr), what.c_str());
      ctx.reset(raw);
      detail::ensure_stream(raw, o.stream, filter, what);
      detail::ensure_consumer(raw, o, filter, what);
      if (o.dedup_window > 0) seen.emplace(o.dedup_window);  // before anything needs undoing
      // Bound to the consumer made above: the client did not create it, so unsubscribing never
      // deletes it (a durable outlives the bridge).
      jsSubOptions so;
      jsSubOptions_Init(&so);
      so.Stream = o.stream.name.c_str();
      so.Consumer = o.durable.c_str();
      jsErrCode jerr{};
      detail::js_check(
          js_PullSubscribe(&sub, raw, filter.c_str(), o.durable.c_str(), nullptr, &so, &jerr), jerr,
          what + ": cannot bind to consumer '" + o.durable + "'");
    }
    JsIn(const JsIn&) = delete;
    JsIn& operator=(const JsIn&) = delete;
    ~JsIn() { stop(); }

    /// Ends the fetching thread (unsubscribing wakes a fetch in progress) and frees what is left.
    /// Messages still awaiting a manual ack are left to the server, which redelivers them.
    void stop() noexcept {
      thread.request_stop();
      if (sub) natsSubscription_Unsubscribe(sub);
      if (thread.joinable()) thread.join();
      if (sub) natsSubscription_Destroy(sub);
      sub = nullptr;
      const std::lock_guard lock(pending_mutex);
      for (auto& [seq, p] : pending)
        natsMsg_Destroy(p.msg);
      pending.clear();
      pending_size.store(0, std::memory_order_relaxed);
    }

    struct Pending {
      natsMsg* msg;
      std::string key;  // the dedup key
      std::uint64_t deliveries;
    };

    const JetStreamImport options;
    const std::string what;
    const std::string ack_prefix;  // Herald-Ack: "<bridge id>.<import index>." + stream sequence
    detail::JsCtxPtr ctx;
    natsSubscription* sub = nullptr;
    // The keys of the messages delivered lately (dedup_window); the fetching thread and ack().
    std::optional<DedupWindow<std::string>> seen;
    std::atomic<std::uint64_t> acked_in{0}, nacked{0}, dead_lettered{0}, duplicates{0},
        not_queued{0}, ack_failed{0};
    std::mutex pending_mutex;
    std::unordered_map<std::uint64_t, Pending> pending;  // by stream sequence (AckMode::manual)
    std::atomic<std::size_t> pending_size{0};
    std::jthread thread;  // last: stopped first
  };

  struct Import {
    Import(Bridge& b, const ImportRule& rule, std::size_t index)
        : bridge(b),
          prefix_size(detail::prefix_with_dot(rule.prefix).size()),
          subject(detail::prefix_with_dot(rule.prefix) + rule.pattern),
          gate(rule.seed_from_stream.empty() ? Gate::open : Gate::seeding) {
      if (rule.jetstream) {
        complete.store(true);  // no core subscription: nothing to wait for
        js = std::make_unique<JsIn>(b, *rule.jetstream, subject, index);
        return;
      }
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

    void start_fetching() {
      js->thread = std::jthread([this](std::stop_token stop) { bridge.run_fetch(*this, stop); });
    }

    /// Unsubscribes and waits until no callback runs or will run, then frees the subscription.
    void end() noexcept {
      if (js) js->stop();
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
    std::unique_ptr<JsIn> js;  // JetStream mode (then `sub` stays null)
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
      if (r.jetstream) detail::validate("the export of '" + r.pattern + "'", *r.jetstream);
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
      if (r.jetstream) {
        const std::string rule = "the import of '" + r.pattern + "'";
        detail::validate(rule, *r.jetstream);
        if (!r.queue_group.empty() || !r.seed_from_stream.empty()) {
          throw std::invalid_argument(
              "herald::nats: " + rule +
              ": a JetStream import takes no queue_group or seed_from_stream (bridges using the "
              "same durable consumer share its messages)");
        }
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
      if (e.js) {
        export_js(e, m);
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

  // ----- JetStream export -----

  /// The strand's JetStream path: prepares the message, takes a slot of max_in_flight (the
  /// rule's overflow policy when there is none), and hands it to the client's asynchronous
  /// publish with its Nats-Msg-Id. A message the client refuses now waits for the retry thread.
  void export_js(Export& e, const Message<T>& m) {
    JsOut& j = *e.js;
    const auto payload = prepare(e, m, e.subject, e.scratch);
    if (!payload) return;
    e.msg_id.assign(j.id_prefix);
    e.msg_id += std::to_string(m.sequence());
    if (!take_slot(e)) {
      e.backlog_refused.add();  // refused by the in-flight bound: dropped_overflow
      return;
    }
    natsMsg* msg = nullptr;
    natsStatus s = natsMsg_Create(&msg, e.subject.c_str(), nullptr, payload->data(),
                                  static_cast<int>(payload->size()));
    if (s == NATS_OK && !m.headers().empty()) {
      s = detail::add_headers(msg, m.headers());
      natsMsgHeader_Delete(msg, detail::kAckHeader);  // an import's ack token stays here
    }
    if (s == NATS_OK) s = natsMsgHeader_Set(msg, detail::kMsgIdHeader, e.msg_id.c_str());
    if (s != NATS_OK) {
      natsMsg_Destroy(msg);
      e.dropped_failed.add();
      report_(
          ErrorKind::publish_failed, e.subject,
          std::string("herald::nats: cannot build the JetStream message: ") + natsStatus_GetText(s),
          s);
      release_slots(j, 1);
      return;
    }
    e.sent.add();
    if (publish_js(j, msg) != NATS_OK) to_retry(j, msg);
  }

  /// One slot of max_in_flight for the strand (the only taker, so check-then-add is exact),
  /// waiting for one under Overflow::block. False: refused.
  bool take_slot(Export& e) {
    JsOut& j = *e.js;
    const std::size_t max = j.options.max_in_flight;
    const auto has_room = [&] { return j.in_flight.load(std::memory_order_seq_cst) < max; };
    if (!has_room()) {
      if (e.overflow != Overflow::block) return false;
      const auto deadline = e.block_timeout == std::chrono::nanoseconds::max()
                                ? herald::detail::Deadline::forever()
                                : herald::detail::Deadline::after(e.block_timeout);
      if (herald::detail::wait_until(j.room, has_room, deadline, e.stopping.get_token()) !=
          herald::detail::WaitStatus::done) {
        return false;
      }
    }
    j.in_flight.fetch_add(1, std::memory_order_seq_cst);
    return true;
  }

  void release_slots(JsOut& j, std::size_t n) noexcept {
    if (j.in_flight.fetch_sub(n, std::memory_order_seq_cst) == n) j.drained.notify_all();
    j.room.notify_all();
  }

  /// Hands `msg` to the client's asynchronous publish; on NATS_OK the client owns it.
  natsStatus publish_js(JsOut& j, natsMsg*& msg) noexcept {
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = j.options.ack_timeout.count();  // the client reports a timeout after this
    return js_PublishMsgAsync(j.ctx.get(), &msg, &po);
  }

  void to_retry(JsOut& j, natsMsg* msg) noexcept {
    {
      const std::lock_guard lock(j.retry_mutex);
      try {
        j.retry.push_back(msg);
      } catch (...) {  // no memory for the list: give the message up rather than lose track
        natsMsg_Destroy(msg);
        j.failed.fetch_add(1, std::memory_order_relaxed);
        release_slots(j, 1);
        return;
      }
      j.retry_size.fetch_add(1, std::memory_order_seq_cst);
    }
    j.wake.notify_all();
  }

  /// The client's acknowledgement callback (its thread for the context's replies): an ack ends
  /// a message's flight; an error worth retrying sends it to the retry thread; any other error
  /// gives it up (js_failed, reported).
  static void on_publish_ack(jsCtx*, natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae, void* self) {
    auto& e = *static_cast<Export*>(self);
    Bridge& b = e.bridge;
    JsOut& j = *e.js;
    const std::lock_guard lock(j.handler_mutex);  // see drain_js
    if (pa != nullptr || pae == nullptr) {
      natsMsg_Destroy(msg);
      j.acked.fetch_add(1, std::memory_order_relaxed);
      b.release_slots(j, 1);
      return;
    }
    if (detail::retryable(pae->Err, pae->ErrCode)) {
      b.to_retry(j, msg);
      return;
    }
    try {
      b.report_(ErrorKind::jetstream_failed, natsMsg_GetSubject(msg),
                j.what + ": stream '" + j.options.stream.name + "' refused a message: " +
                    (pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err)) +
                    (pae->ErrCode ? " (JetStream error " + std::to_string(int(pae->ErrCode)) + ")"
                                  : std::string()),
                pae->Err);
    } catch (...) {
    }
    natsMsg_Destroy(msg);
    j.failed.fetch_add(1, std::memory_order_relaxed);
    b.release_slots(j, 1);
  }

  /// Moves what the client still awaits acknowledgements for into the retry list (after a
  /// reconnection: the server that should have answered may be gone). Resending one that did
  /// arrive costs a duplicate the stream drops by its Nats-Msg-Id.
  void reclaim(JsOut& j) noexcept {
    natsMsgList pending{};
    if (js_PublishAsyncGetPendingList(&pending, j.ctx.get()) != NATS_OK) return;
    for (int i = 0; i < pending.Count; ++i) {
      natsMsg* m = pending.Msgs[i];
      pending.Msgs[i] = nullptr;
      if (m) to_retry(j, m);
    }
    natsMsgList_Destroy(&pending);
  }

  /// The export's thread in JetStream mode: resends what failed or timed out, and after each
  /// reconnection what was awaiting an acknowledgement, pausing between rounds that see no ack.
  void run_js_retries(Export& e, std::stop_token stop) {
    JsOut& j = *e.js;
    std::uint64_t reconnects = conn_->reconnects();
    std::uint64_t acked = j.acked.load(std::memory_order_relaxed);
    std::chrono::milliseconds pause = j.options.retry_backoff;
    std::vector<natsMsg*> batch;
    while (!stop.stop_requested()) {
      // The reconnect count is polled (the connection's callbacks know no exports).
      herald::detail::wait_until(
          j.wake,
          [&] {
            return j.retry_size.load(std::memory_order_seq_cst) > 0 ||
                   conn_->reconnects() != reconnects;
          },
          herald::detail::Deadline::after(std::chrono::milliseconds(50)), stop);
      if (stop.stop_requested()) break;
      if (const std::uint64_t r = conn_->reconnects(); r != reconnects) {
        reconnects = r;
        reclaim(j);
      }
      if (j.retry_size.load(std::memory_order_seq_cst) == 0) continue;
      if (!conn_->wait_connected(stop)) break;
      {
        const std::lock_guard lock(j.retry_mutex);
        batch.assign(j.retry.begin(), j.retry.end());
        j.retry.clear();
        j.retry_size.store(0, std::memory_order_seq_cst);
      }
      std::size_t i = 0;
      for (; i < batch.size(); ++i) {
        if (publish_js(j, batch[i]) != NATS_OK) break;  // the link went down: later
        j.retried.fetch_add(1, std::memory_order_relaxed);
      }
      if (i < batch.size()) {
        const std::lock_guard lock(j.retry_mutex);
        j.retry.insert(j.retry.begin(), batch.begin() + static_cast<std::ptrdiff_t>(i),
                       batch.end());
        j.retry_size.fetch_add(batch.size() - i, std::memory_order_seq_cst);
      }
      batch.clear();
      // A server that answers nothing but errors (JetStream starting up, a stream not there
      // yet) is not hammered: the pause doubles while no acknowledgement arrives.
      const std::uint64_t now_acked = j.acked.load(std::memory_order_relaxed);
      if (now_acked != acked) {
        acked = now_acked;
        pause = j.options.retry_backoff;
      } else {
        pause = std::min(pause * 2, j.options.retry_backoff * 32);
      }
      conn_->pause(stop, pause);
    }
    nats_ReleaseThreadMemory();
  }

  /// Shutdown of a JetStream export (the subscription has ended): waits up to drain_timeout for
  /// the acknowledgements, stops the retry thread, then gives up what is left (js_failed,
  /// reported once) and waits until the client's callback no longer touches the export.
  void drain_js(Export& e) noexcept {
    JsOut& j = *e.js;
    herald::detail::wait_until(
        j.drained, [&] { return j.in_flight.load(std::memory_order_seq_cst) == 0; },
        herald::detail::Deadline::after(j.options.drain_timeout));
    e.thread.request_stop();
    if (e.thread.joinable()) e.thread.join();
    std::uint64_t given_up = 0;
    // A callback may be between taking a message from the client's list and settling it:
    // loop until every slot came back (bounded, in case something was lost track of).
    const auto limit = herald::detail::Deadline::after(std::chrono::seconds(5));
    while (j.in_flight.load(std::memory_order_seq_cst) != 0 && !limit.passed()) {
      natsMsgList pending{};
      std::size_t n = 0;
      if (js_PublishAsyncGetPendingList(&pending, j.ctx.get()) == NATS_OK) {
        n += static_cast<std::size_t>(pending.Count);
        natsMsgList_Destroy(&pending);
      }
      {
        const std::lock_guard lock(j.retry_mutex);
        n += j.retry.size();
        for (natsMsg* m : j.retry)
          natsMsg_Destroy(m);
        j.retry.clear();
        j.retry_size.store(0, std::memory_order_seq_cst);
      }
      if (n > 0) {
        given_up += n;
        j.failed.fetch_add(n, std::memory_order_relaxed);
        release_slots(j, n);
      }
      herald::detail::wait_until(
          j.drained, [&] { return j.in_flight.load(std::memory_order_seq_cst) == 0; },
          herald::detail::Deadline::after(std::chrono::milliseconds(5)));
    }
    { const std::lock_guard lock(j.handler_mutex); }  // the last callback has left
    if (given_up > 0) {
      try {
        report_(ErrorKind::jetstream_failed, e.prefix + e.pattern.str(),
                j.what + ": " + std::to_string(given_up) +
                    " message(s) not acknowledged by stream '" + j.options.stream.name +
                    "' within drain_timeout (" + std::to_string(j.options.drain_timeout.count()) +
                    " ms) when the bridge was destroyed; counted in js_failed");
      } catch (...) {
      }
    }
  }

  // ----- JetStream import -----

  /// The import's thread in JetStream mode: fetches batches from the durable consumer (a request
  /// that returns as soon as messages are there, or after fetch_wait) and imports them. Errors
  /// (the link down, the server restarting) are waited out.
  void run_fetch(Import& imp, std::stop_token stop) {
    JsIn& j = *imp.js;
    while (!stop.stop_requested()) {
      jsFetchRequest req;
      jsFetchRequest_Init(&req);
      req.Batch = j.options.fetch_batch;
      req.Expires =
          std::chrono::duration_cast<std::chrono::nanoseconds>(j.options.fetch_wait).count();
      req.NoWait = true;  // with Expires: return as soon as some messages came
      natsMsgList list{};
      const auto t0 = std::chrono::steady_clock::now();
      const natsStatus s = natsSubscription_FetchRequest(&list, j.sub, &req);
      if (s == NATS_OK) {
        for (int i = 0; i < list.Count; ++i) {
          natsMsg* m = list.Msgs[i];
          list.Msgs[i] = nullptr;
          try {
            import_js(imp, m);
          } catch (...) {  // an allocation failure: the server redelivers after ack_wait
          }
        }
        natsMsgList_Destroy(&list);
        continue;
      }
      if (stop.stop_requested()) break;
      if (s == NATS_TIMEOUT || s == NATS_NOT_FOUND) {
        // A request the server ended at once (another still pending): do not spin.
        if (std::chrono::steady_clock::now() - t0 < j.options.fetch_wait / 4) {
          conn_->pause(stop, std::chrono::milliseconds(5));
        }
        continue;
      }
      if (!conn_->wait_connected(stop)) break;
      conn_->pause(stop, std::chrono::milliseconds(50));
    }
    nats_ReleaseThreadMemory();
  }

  /// One delivery from the consumer (owned here): suppressed when seen lately, else published
  /// into the broker and acknowledged (AckMode::queued) once every matching subscriber queued
  /// it, kept for the application's ack (manual), or nak'ed / dead-lettered when it was not.
  void import_js(Import& imp, natsMsg* msg) {
    JsIn& j = *imp.js;
    std::unique_ptr<natsMsg, void (*)(natsMsg*)> owner(msg, &natsMsg_Destroy);
    std::uint64_t deliveries = 1;
    std::uint64_t sseq = 0;
    if (jsMsgMetaData* meta = nullptr; natsMsg_GetMetaData(&meta, msg) == NATS_OK) {
      deliveries = meta->NumDelivered > 0 ? static_cast<std::uint64_t>(meta->NumDelivered) : 1;
      sseq = meta->Sequence.Stream;
      jsMsgMetaData_Destroy(meta);
    }
    const char* reply = natsMsg_GetReply(msg);
    const char* id = nullptr;
    std::string key;
    if (natsMsgHeader_Get(msg, detail::kMsgIdHeader, &id) == NATS_OK && id && *id) {
      key = id;
    } else {
      key = j.options.stream.name + ":" + std::to_string(sseq);
    }
    // This bridge's own export coming back: not imported (as core NATS's no-echo).
    if (key.size() > id_hex_.size() && key.compare(0, id_hex_.size(), id_hex_) == 0 &&
        key[id_hex_.size()] == '-') {
      imp.received.add();
      imp.echoes.add();
      if (respond(j, reply, "+ACK", msg)) j.acked_in.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (j.seen && j.seen->contains(key)) {
      imp.received.add();
      j.duplicates.fetch_add(1, std::memory_order_relaxed);
      if (respond(j, reply, "+ACK", msg)) j.acked_in.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    const bool manual = j.options.ack == AckMode::manual;
    std::string token;
    if (manual) {
      token = j.ack_prefix + std::to_string(sseq);
      const std::lock_guard lock(j.pending_mutex);
      if (auto it = j.pending.find(sseq); it != j.pending.end()) {
        // Redelivered (ack_wait passed) while the application still holds it: the newer
        // delivery is the one to acknowledge; not published twice.
        imp.received.add();
        j.duplicates.fetch_add(1, std::memory_order_relaxed);
        natsMsg_Destroy(it->second.msg);
        it->second.msg = owner.get();
        it->second.deliveries = deliveries;
        (void)owner.release();
        return;
      }
      // Registered before publishing: an inline handler may ack it inside publish.
      j.pending.emplace(sseq, typename JsIn::Pending{msg, key, deliveries});
      j.pending_size.fetch_add(1, std::memory_order_relaxed);
    }
    const Outcome out = import_one(imp, msg, false, manual ? &token : nullptr);
    if (manual) {
      // Taken back unless the application settled it already (then ack()/nak() freed it).
      const std::lock_guard lock(j.pending_mutex);
      auto it = j.pending.find(sseq);
      const bool still = it != j.pending.end() && it->second.msg == msg;
      if (out == Outcome::imported || !still) {
        (void)owner.release();
        return;
      }
      j.pending.erase(it);
      j.pending_size.fetch_sub(1, std::memory_order_relaxed);
    }
    switch (out) {
      case Outcome::imported:
        if (j.seen) j.seen->insert(key);
        if (respond(j, reply, "+ACK", msg)) j.acked_in.fetch_add(1, std::memory_order_relaxed);
        return;
      case Outcome::not_queued:
      case Outcome::failed:
        give_back(imp, msg, deliveries, sseq,
                  out == Outcome::not_queued ? "a matching subscriber did not queue it"
                                             : "the broker refused it (closed, or publish threw)");
        return;
      case Outcome::rejected:
        dead_letter(imp, msg, deliveries, sseq, "its subject is not a valid herald topic");
        return;
      case Outcome::undecodable:
        dead_letter(imp, msg, deliveries, sseq, "its payload or headers cannot be decoded");
        return;
    }
  }

  /// A delivery that failed: nak'ed for redelivery after the backoff, or dead-lettered once it
  /// was delivered max_deliver times.
  void give_back(Import& imp, natsMsg* msg, std::uint64_t deliveries, std::uint64_t sseq,
                 std::string_view why) {
    JsIn& j = *imp.js;
    if (deliveries >= static_cast<std::uint64_t>(j.options.max_deliver)) {
      dead_letter(imp, msg, deliveries, sseq,
                  std::string(why) + " (delivery " + std::to_string(deliveries) + ", max_deliver " +
                      std::to_string(j.options.max_deliver) + ")");
      return;
    }
    const auto delay = detail::nak_delay(j.options, deliveries);
    const std::string body =
        "-NAK {\"delay\":" +
        std::to_string(std::chrono::duration_cast<std::chrono::nanoseconds>(delay).count()) + "}";
    if (respond(j, natsMsg_GetReply(msg), body, msg)) {
      j.nacked.fetch_add(1, std::memory_order_relaxed);
    }
  }

  /// Republishes `msg` to the dead-letter subject with headers saying why (when there is one),
  /// then terminates it. A dead-letter subject that cannot be reached now means a nak instead.
  void dead_letter(Import& imp, natsMsg* msg, std::uint64_t deliveries, std::uint64_t sseq,
                   std::string_view why) {
    JsIn& j = *imp.js;
    const std::string subject = natsMsg_GetSubject(msg);
    const std::string& dls = j.options.dead_letter_subject;
    if (!dls.empty()) {
      natsMsg* dl = nullptr;
      natsStatus s = natsMsg_Create(&dl, dls.c_str(), nullptr, natsMsg_GetData(msg),
                                    natsMsg_GetDataLength(msg));
      const std::unique_ptr<natsMsg, void (*)(natsMsg*)> dl_owner(dl, &natsMsg_Destroy);
      if (s == NATS_OK) {
        Headers h;
        try {
          detail::read_headers(
              msg, h, [](std::string_view name) { return name == detail::kAckHeader; }, true);
        } catch (...) {  // unreadable headers: the dead letter goes without them
        }
        s = detail::add_headers(dl, h);
      }
      const auto set = [&](const char* name, const std::string& value) {
        if (s == NATS_OK) s = natsMsgHeader_Set(dl, name, value.c_str());
      };
      set("Herald-Dead-Reason", std::string(why));
      set("Herald-Dead-Subject", subject);
      set("Herald-Dead-Stream", j.options.stream.name);
      set("Herald-Dead-Sequence", std::to_string(sseq));
      set("Herald-Dead-Deliveries", std::to_string(deliveries));
      if (s == NATS_OK) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = 5000;
        jsErrCode jerr{};
        jsPubAck* pa = nullptr;
        s = js_PublishMsg(&pa, j.ctx.get(), dl, &po, &jerr);
        jsPubAck_Destroy(pa);
      }
      // No responders: no stream keeps that subject; its core subscribers got it.
      if (s != NATS_OK && s != NATS_NO_RESPONDERS) {
        report_(ErrorKind::ack_failed, subject,
                j.what + ": cannot publish to the dead-letter subject '" + dls +
                    "': " + natsStatus_GetText(s) + "; nak'ed instead",
                s);
        const auto delay = detail::nak_delay(j.options, deliveries);
        const std::string body =
            "-NAK {\"delay\":" +
            std::to_string(std::chrono::duration_cast<std::chrono::nanoseconds>(delay).count()) +
            "}";
        if (respond(j, natsMsg_GetReply(msg), body, msg)) {
          j.nacked.fetch_add(1, std::memory_order_relaxed);
        }
        return;
      }
    }
    if (respond(j, natsMsg_GetReply(msg), "+TERM", msg)) {
      j.dead_lettered.fetch_add(1, std::memory_order_relaxed);
    }
    report_(ErrorKind::dead_lettered, subject,
            j.what + ": message " + std::to_string(sseq) + " of stream '" + j.options.stream.name +
                "' terminated after " + std::to_string(deliveries) + " deliveries" +
                (dls.empty() ? std::string() : " and sent to '" + dls + "'") + ": " +
                std::string(why));
  }

  /// Sends an acknowledgement (`+ACK`, `-NAK {...}`, `+TERM`) to a delivery's reply subject.
  /// False (js_ack_failed, reported) when the client could not take it; the server then
  /// redelivers the message after ack_wait.
  bool respond(JsIn& j, const char* reply, std::string_view body, natsMsg* msg) {
    natsStatus s = NATS_ILLEGAL_STATE;
    if (reply && *reply) {
      s = natsConnection_Publish(conn_->get(), reply, body.data(), static_cast<int>(body.size()));
    }
    if (s == NATS_OK) return true;
    j.ack_failed.fetch_add(1, std::memory_order_relaxed);
    report_(ErrorKind::ack_failed, natsMsg_GetSubject(msg),
            j.what + ": cannot send '" + std::string(body) + "': " + natsStatus_GetText(s), s);
    return false;
  }

  /// ack() and nak(): finds the pending delivery named by the message's Herald-Ack header.
  bool settle(const Message<T>& m, bool positive) {
    const auto token = m.headers().get(detail::kAckHeader);
    if (!token) return false;
    const std::string_view t = *token;
    if (t.size() <= id_hex_.size() + 1 || t.compare(0, id_hex_.size(), id_hex_) != 0 ||
        t[id_hex_.size()] != '.') {
      return false;
    }
    const std::string_view rest = t.substr(id_hex_.size() + 1);
    const std::size_t dot = rest.find('.');
    if (dot == std::string_view::npos) return false;
    std::size_t index = 0;
    std::uint64_t sseq = 0;
    if (std::from_chars(rest.data(), rest.data() + dot, index).ec != std::errc{} ||
        std::from_chars(rest.data() + dot + 1, rest.data() + rest.size(), sseq).ec != std::errc{}) {
      return false;
    }
    if (index >= imports_.size() || !imports_[index]->js) return false;
    Import& imp = *imports_[index];
    JsIn& j = *imp.js;
    typename JsIn::Pending p{};
    {
      const std::lock_guard lock(j.pending_mutex);
      auto it = j.pending.find(sseq);
      if (it == j.pending.end()) return false;
      p = std::move(it->second);
      j.pending.erase(it);
      j.pending_size.fetch_sub(1, std::memory_order_relaxed);
    }
    const std::unique_ptr<natsMsg, void (*)(natsMsg*)> owner(p.msg, &natsMsg_Destroy);
    if (positive) {
      if (j.seen) j.seen->insert(p.key);
      if (respond(j, natsMsg_GetReply(p.msg), "+ACK", p.msg)) {
        j.acked_in.fetch_add(1, std::memory_order_relaxed);
      }
    } else {
      give_back(imp, p.msg, p.deliveries, sseq, "the application nak'ed it");
    }
    return true;
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
        if (import_one(imp, msg, /*seed=*/true) == Outcome::imported) imp.seeded.add();
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

  /// What became of one message from NATS.
  enum class Outcome : std::uint8_t {
    imported,     ///< published into the broker (JetStream: every matching subscriber queued it)
    not_queued,   ///< JetStream: published, but a matching subscriber did not queue it
    failed,       ///< the broker is closed or publish threw
    rejected,     ///< not a valid herald topic (or a skipped track_loss echo)
    undecodable,  ///< the codec or the headers refused it
  };

  // `seed`: a message read from a stream by seed(), published retained. `ack_token`: the
  // Herald-Ack header to add (AckMode::manual).
  Outcome import_one(Import& imp, natsMsg* msg, bool seed = false,
                     const std::string* ack_token = nullptr) {
    imp.received.add();
    const std::string_view subject = natsMsg_GetSubject(msg);
    // Another client may send a NUL in a subject; the C client's string stops there, and the
    // message must not enter the broker under the shorter topic.
    if (detail::subject_cut_short(msg, subject)) [[unlikely]] {
      imp.rejected.add();
      report_(ErrorKind::invalid_topic, subject,
              "herald::nats: subject '" + std::string(subject) +
                  "...' was cut short by a NUL byte (NATS cannot carry it intact)");
      return Outcome::rejected;
    }
    if (!seed && !imp.js && options_.track_loss && !check_sequence(imp, msg, subject)) {
      return Outcome::rejected;
    }
    const std::string_view topic = subject.substr(std::min(imp.prefix_size, subject.size()));
    // The server matched the subject against our subscription, but it does not validate what
    // publishers send (e.g. "a..b"): herald's rules apply before anything enters the broker.
    if (!is_valid_topic(topic)) {
      imp.rejected.add();
      report_(ErrorKind::invalid_topic, subject,
              "herald::nats: subject '" + std::string(subject) + "' is not a valid herald topic");
      return Outcome::rejected;
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
      return Outcome::undecodable;
    }
    Headers headers;
    if (!take_headers(imp, msg, subject, headers)) return Outcome::undecodable;
    if (ack_token) headers.add(detail::kAckHeader, *ack_token);
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
        // JetStream promises more than "offered": a subscriber that refused it (full, or its
        // block_timeout passed) has not got it, so the message goes back to the stream.
        if (imp.js && r.dropped > 0) {
          imp.js->not_queued.fetch_add(1, std::memory_order_relaxed);
          return Outcome::not_queued;
        }
        imp.imported.add();
        return Outcome::imported;
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
    return Outcome::failed;
  }

  /// Moves the NATS headers of `msg` into `out`, but for the bridge's own Herald-Seq and the
  /// status a no-responders message carries. False (counted and reported as a decode failure)
  /// when the client cannot parse them or one breaks herald's rules (Headers::check).
  bool take_headers(Import& imp, natsMsg* msg, std::string_view subject, Headers& out) {
    try {
      detail::read_headers(
          msg, out,
          [](std::string_view name) {
            return name == detail::kSeqHeader || name == detail::kAckHeader;
          },
          false);
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
