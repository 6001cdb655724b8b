// herald::nats::Bridge<T>: carries a Broker<T>'s topics over NATS, so that a message published in
// one process reaches subscribers in another with the same wildcard meaning. Optional: it needs
// the NATS C client (Debian: libnats-dev; CMake: herald::nats) and is not part of herald.hpp.
#pragma once

#include <herald/broker.hpp>
#include <herald/policy.hpp>
#include <herald/subscription.hpp>
#include <herald/topic.hpp>

#include <nats/nats.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <charconv>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace herald::nats {

/// A NATS client call failed (connect, subscribe, initial flush); the message says which and why.
class NatsError : public std::runtime_error {
 public:
  NatsError(const std::string& what, natsStatus status)
      : std::runtime_error(what + ": " + natsStatus_GetText(status) + detail_text()),
        status_(status) {}
  /// The NATS client's status code.
  [[nodiscard]] natsStatus status() const noexcept { return status_; }

 private:
  static std::string detail_text() {
    natsStatus s = NATS_OK;
    const char* text = nats_GetLastError(&s);
    return text && *text ? std::string(" (") + text + ")" : std::string();
  }
  natsStatus status_;
};

/// A codec could not turn received bytes into a T.
class DecodeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------------------------------------
// Codecs

/// What a Bridge needs to carry T over the wire. `encode` returns the bytes of `value`: a view of
/// `value` itself when its bytes can be sent as they are, or of `scratch` (a buffer the bridge
/// reuses) after writing them there. `decode` builds a T from received bytes or throws.
/// Both are called concurrently from the bridge's threads, so they must be thread-safe.
template <class C, class T>
concept Codec = requires(const C& c, const T& value, std::string& scratch, std::string_view bytes) {
  { c.encode(value, scratch) } -> std::convertible_to<std::string_view>;
  { c.decode(bytes) } -> std::convertible_to<T>;
};

/// std::string travels as its bytes, without a copy on the way out.
struct StringCodec {
  std::string_view encode(const std::string& value, std::string& /*scratch*/) const noexcept {
    return value;
  }
  std::string decode(std::string_view bytes) const { return std::string(bytes); }
};

/// std::vector<std::byte> travels as its bytes, without a copy on the way out.
struct BytesCodec {
  std::string_view encode(const std::vector<std::byte>& value, std::string& /*scratch*/) const {
    return {reinterpret_cast<const char*>(value.data()), value.size()};
  }
  std::vector<std::byte> decode(std::string_view bytes) const {
    const auto* p = reinterpret_cast<const std::byte*>(bytes.data());
    return std::vector<std::byte>(p, p + bytes.size());
  }
};

/// A trivially copyable T travels as its object representation: both ends must agree on its
/// layout (same type definition, same byte order, same ABI).
template <class T>
struct TrivialCodec {
  static_assert(
      std::is_trivially_copyable_v<T>,
      "TrivialCodec<T> needs a trivially copyable T; give the Bridge a codec for this type");
  std::string_view encode(const T& value, std::string& /*scratch*/) const noexcept {
    return {reinterpret_cast<const char*>(&value), sizeof(T)};
  }
  T decode(std::string_view bytes) const {
    if (bytes.size() != sizeof(T)) {
      throw DecodeError("herald::nats: expected " + std::to_string(sizeof(T)) + " bytes, got " +
                        std::to_string(bytes.size()));
    }
    std::array<char, sizeof(T)> raw;
    std::memcpy(raw.data(), bytes.data(), sizeof(T));
    return std::bit_cast<T>(raw);
  }
};

/// The codec a Bridge<T> uses unless given one: StringCodec, BytesCodec or TrivialCodec<T>.
template <class T>
struct DefaultCodec : TrivialCodec<T> {};
template <>
struct DefaultCodec<std::string> : StringCodec {};
template <>
struct DefaultCodec<std::vector<std::byte>> : BytesCodec {};

// ---------------------------------------------------------------------------------------------
// Options, errors and counters

/// Local topics matching `pattern` are published to NATS as `prefix.topic` (or `topic`).
struct ExportRule {
  std::string pattern;
  std::string prefix{};
  /// The outbound queue: while NATS is unreachable the bridge stops taking messages out of it, so
  /// its capacity and overflow policy decide what happens (drop_incoming / drop_oldest count
  /// drops; block makes local publishers wait up to block_timeout). Overflow::disconnect is
  /// refused: it would end the export for good.
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
};

/// Delay between reconnect rounds: "decorrelated jitter", each delay drawn uniformly from
/// [initial, 3 x the previous delay], capped at max; it starts over after a reconnect.
struct ReconnectPolicy {
  std::chrono::milliseconds initial{20};
  std::chrono::milliseconds max{2000};
};

/// What went wrong with one message or with the connection (reported to BridgeOptions::on_error).
enum class ErrorKind : std::uint8_t {
  subject_too_long,   ///< export: `prefix.topic` is longer than max_subject_bytes
  payload_too_large,  ///< export: the encoded message exceeds the server's max_payload
  encode_failed,      ///< export: the codec threw
  publish_failed,     ///< export: the NATS client refused the message (see status)
  invalid_topic,      ///< import: the subject (without prefix) is not a valid herald topic
  decode_failed,      ///< import: the codec threw
  import_failed,      ///< import: publishing into the broker threw, or the broker is closed
  connection,         ///< asynchronous error from the NATS client (e.g. slow consumer)
};

/// One failure, with a message that names the subject and the reason.
struct BridgeError {
  ErrorKind kind;
  std::string subject;
  std::string message;
  natsStatus status = NATS_OK;
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
  /// that come back (`echoes`). Costs: NATS messages with headers are several times slower.
  bool track_loss = false;
  /// Called for every failure, from the bridge's or the NATS client's threads (concurrently).
  /// Exceptions from it are ignored.
  std::function<void(const BridgeError&)> on_error{};
};

/// Bridge counters. Identities (exact once the export queues are empty, e.g. after flush()):
/// `exported == sent + dropped()` and
/// `received == imported + rejected + dropped_decode + import_failed + echoes`.
struct BridgeStats {
  // To NATS.
  std::uint64_t exported = 0;           ///< local messages that matched an export
  std::uint64_t sent = 0;               ///< accepted by the NATS connection
  std::uint64_t dropped_overflow = 0;   ///< refused or evicted by an export queue's policy
  std::uint64_t dropped_subject = 0;    ///< subject longer than max_subject_bytes
  std::uint64_t dropped_too_large = 0;  ///< encoded size above the server's max_payload
  std::uint64_t dropped_encode = 0;     ///< the codec threw
  std::uint64_t dropped_failed = 0;     ///< the NATS client refused it for another reason
  std::uint64_t skipped_echo = 0;       ///< imported messages an export saw and did not send back
  std::size_t queued = 0;               ///< waiting in the export queues now (approximate)
  // From NATS.
  std::uint64_t received = 0;        ///< messages NATS delivered to the imports
  std::uint64_t imported = 0;        ///< published into the broker
  std::uint64_t rejected = 0;        ///< subject not a valid herald topic
  std::uint64_t dropped_decode = 0;  ///< the codec threw
  std::uint64_t import_failed = 0;   ///< the broker threw or was closed
  std::uint64_t echoes = 0;          ///< (track_loss) this bridge's own messages that came back
  std::uint64_t dropped_slow = 0;    ///< dropped by the NATS client: an import fell behind
  std::uint64_t lost = 0;            ///< (track_loss) gaps in the sequence of the messages received
  // The connection.
  std::uint64_t disconnects = 0;
  std::uint64_t reconnects = 0;
  std::uint64_t errors = 0;  ///< failures reported (see on_error)
  bool connected = false;

  /// Everything dropped on the way to NATS.
  [[nodiscard]] std::uint64_t dropped() const noexcept {
    return dropped_overflow + dropped_subject + dropped_too_large + dropped_encode + dropped_failed;
  }
};

namespace detail {

/// Counts failures and hands them to the user's callback.
class Reporter {
 public:
  explicit Reporter(std::function<void(const BridgeError&)> f) : on_error_(std::move(f)) {}

  void operator()(ErrorKind kind, std::string_view subject, std::string message,
                  natsStatus status = NATS_OK) noexcept {
    errors_.fetch_add(1, std::memory_order_relaxed);
    if (!on_error_) return;
    try {
      on_error_(BridgeError{kind, std::string(subject), std::move(message), status});
    } catch (...) {  // a failing error handler must not take the bridge down
    }
  }
  [[nodiscard]] std::uint64_t errors() const noexcept {
    return errors_.load(std::memory_order_relaxed);
  }

 private:
  std::function<void(const BridgeError&)> on_error_;
  std::atomic<std::uint64_t> errors_{0};
};

/// A counter with one writing thread: a plain load and store, no locked read-modify-write.
class OwnedCounter {
 public:
  void add(std::uint64_t n = 1) noexcept {
    v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  [[nodiscard]] std::uint64_t get() const noexcept { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> v_{0};
};

inline std::uint64_t splitmix64(std::uint64_t x) noexcept {
  x += 0x9E3779B97F4A7C15u;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9u;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBu;
  return x ^ (x >> 31);
}

inline std::uint64_t random_id() {
  std::random_device rd;
  const auto now =
      static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  const std::uint64_t id = splitmix64((std::uint64_t{rd()} << 32) ^ rd() ^ now);
  return id ? id : 1;  // 0 is the origin of local publishes
}

inline void check(natsStatus s, const char* what) {
  if (s != NATS_OK) throw NatsError(what, s);
}

/// One NATS connection with the settings a bridge needs: never echoes its own publishes,
/// reconnects forever with jittered backoff, and tracks whether it is connected.
class Connection {
 public:
  Connection(const BridgeOptions& o, Reporter& report, std::uint64_t seed)
      : report_(report),
        policy_(o.reconnect),
        seed_(seed),
        prev_delay_ms_(o.reconnect.initial.count()) {
    natsOptions* opts = nullptr;
    check(natsOptions_Create(&opts), "herald::nats: cannot create NATS options");
    std::unique_ptr<natsOptions, void (*)(natsOptions*)> guard(opts, natsOptions_Destroy);
    check(natsOptions_SetURL(opts, o.url.c_str()), "herald::nats: invalid URL");
    if (!o.name.empty()) check(natsOptions_SetName(opts, o.name.c_str()), "herald::nats: name");
    check(natsOptions_SetNoEcho(opts, true), "herald::nats: no-echo");
    check(natsOptions_SetTimeout(opts, o.connect_timeout.count()), "herald::nats: timeout");
    check(natsOptions_SetPingInterval(opts, o.ping_interval.count()), "herald::nats: ping");
    check(natsOptions_SetAllowReconnect(opts, true), "herald::nats: reconnect");
    check(natsOptions_SetMaxReconnect(opts, -1), "herald::nats: max reconnect");
    check(natsOptions_SetCustomReconnectDelay(opts, &Connection::on_reconnect_delay, this),
          "herald::nats: reconnect delay");
    check(natsOptions_SetReconnectBufSize(opts, o.reconnect_buffer_bytes),
          "herald::nats: reconnect buffer");
    check(natsOptions_SetDisconnectedCB(opts, &Connection::on_disconnected, this),
          "herald::nats: disconnected callback");
    check(natsOptions_SetReconnectedCB(opts, &Connection::on_reconnected, this),
          "herald::nats: reconnected callback");
    check(natsOptions_SetClosedCB(opts, &Connection::on_closed, this),
          "herald::nats: closed callback");
    check(natsOptions_SetErrorHandler(opts, &Connection::on_async_error, this),
          "herald::nats: error handler");
    // Set before connecting: a disconnect callback may run before Connect returns.
    connected_.store(true, std::memory_order_release);
    natsConnection* nc = nullptr;
    const natsStatus s = natsConnection_Connect(&nc, opts);
    if (s != NATS_OK) throw NatsError("herald::nats: cannot connect to " + o.url, s);
    nc_ = nc;
    max_payload_.store(natsConnection_GetMaxPayload(nc_), std::memory_order_relaxed);
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  /// Closes the connection and waits for its last callback: after that, the client never calls
  /// back into this object.
  ~Connection() {
    natsConnection_Close(nc_);
    {
      std::unique_lock lock(mutex_);
      changed_.wait(lock, [&] { return closed_; });
    }
    natsConnection_Destroy(nc_);
  }

  [[nodiscard]] natsConnection* get() const noexcept { return nc_; }
  [[nodiscard]] bool connected() const noexcept {
    return connected_.load(std::memory_order_acquire);
  }
  [[nodiscard]] std::int64_t max_payload() const noexcept {
    return max_payload_.load(std::memory_order_relaxed);
  }
  [[nodiscard]] std::uint64_t disconnects() const noexcept { return disconnects_.load(); }
  [[nodiscard]] std::uint64_t reconnects() const noexcept { return reconnects_.load(); }

  /// Waits until connected (true), the connection closed (false) or a stop request (false).
  bool wait_connected(std::stop_token stop) {
    if (connected()) return true;
    std::unique_lock lock(mutex_);
    changed_.wait(lock, stop, [&] { return connected() || closed_; });
    return connected();
  }

  /// Waits at most `d` for a change of state (or a stop request).
  void pause(std::stop_token stop, std::chrono::milliseconds d) {
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, stop, d, [&] { return closed_; });
  }

 private:
  static void on_disconnected(natsConnection*, void* self) {
    auto& c = *static_cast<Connection*>(self);
    c.disconnects_.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard lock(c.mutex_);
    c.connected_.store(false, std::memory_order_release);
  }
  static void on_reconnected(natsConnection* nc, void* self) {
    auto& c = *static_cast<Connection*>(self);
    c.reconnects_.fetch_add(1, std::memory_order_relaxed);
    c.prev_delay_ms_.store(c.policy_.initial.count(), std::memory_order_relaxed);
    // Another server of the cluster may have another limit.
    c.max_payload_.store(natsConnection_GetMaxPayload(nc), std::memory_order_relaxed);
    {
      std::lock_guard lock(c.mutex_);
      c.connected_.store(true, std::memory_order_release);
    }
    c.changed_.notify_all();
  }
  static void on_closed(natsConnection*, void* self) {
    auto& c = *static_cast<Connection*>(self);
    std::lock_guard lock(c.mutex_);
    c.connected_.store(false, std::memory_order_release);
    c.closed_ = true;
    // Notify under the lock: the destructor waits for closed_ and then destroys changed_, so it
    // must not be able to see closed_ before this notify has returned.
    c.changed_.notify_all();
  }
  static void on_async_error(natsConnection*, natsSubscription* sub, natsStatus err, void* self) {
    auto& c = *static_cast<Connection*>(self);
    const char* subject = sub ? natsSubscription_GetSubject(sub) : nullptr;
    c.report_(ErrorKind::connection, subject ? subject : "",
              std::string("herald::nats: ") + natsStatus_GetText(err), err);
  }
  static std::int64_t on_reconnect_delay(natsConnection*, int attempts, void* self) {
    auto& c = *static_cast<Connection*>(self);
    const std::int64_t lo = std::max<std::int64_t>(1, c.policy_.initial.count());
    const std::int64_t hi = std::max(lo, 3 * c.prev_delay_ms_.load(std::memory_order_relaxed));
    const std::uint64_t r =
        splitmix64(c.seed_ ^ c.draws_.fetch_add(1) ^ static_cast<std::uint64_t>(attempts));
    std::int64_t d = lo + static_cast<std::int64_t>(r % static_cast<std::uint64_t>(hi - lo + 1));
    d = std::min<std::int64_t>(d, std::max(lo, c.policy_.max.count()));
    c.prev_delay_ms_.store(d, std::memory_order_relaxed);
    return d;
  }

  Reporter& report_;
  const ReconnectPolicy policy_;
  const std::uint64_t seed_;
  natsConnection* nc_ = nullptr;
  std::atomic<bool> connected_{false};
  std::atomic<std::int64_t> max_payload_{0};
  std::atomic<std::int64_t> prev_delay_ms_;
  std::atomic<std::uint64_t> draws_{0};
  std::atomic<std::uint64_t> disconnects_{0};
  std::atomic<std::uint64_t> reconnects_{0};
  std::mutex mutex_;  // guards closed_; orders connected_ changes with the waits on changed_
  std::condition_variable_any changed_;
  bool closed_ = false;
};

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

// ---------------------------------------------------------------------------------------------
// Bridge

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
/// Each export is a subscription on the broker (its queue is the outbound queue) drained by a
/// thread of the bridge; each import is a NATS subscription whose callback decodes and calls
/// `broker.publish_from(Origin{id()}, topic, value)`. While the server is unreachable the export
/// threads stop taking messages, so each export queue's overflow policy applies, and the client
/// reconnects forever with jittered backoff. Delivery over NATS is at most once: a message handed
/// to the client just before the link died can be lost (track_loss counts such losses).
/// The broker must outlive the bridge. Destroying the bridge ends the imports (waiting for a
/// running callback), stops the export threads (messages still queued are discarded: call
/// flush() first), then closes the connection.
/// Throws: (constructor) InvalidTopic for an invalid pattern or prefix; std::invalid_argument
/// for other bad rules; std::length_error for an import subject longer than max_subject_bytes;
/// NatsError when the server cannot be reached. Nothing is left running then.
/// Thread-safety: every member function may be called concurrently.
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
    conn_ = std::make_unique<detail::Connection>(options_, report_, id_);
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
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (const auto& e : exports_) {
      for (;;) {
        const SubscriptionStats q = e->sub.stats();
        if (e->handled.get() + q.evicted >= q.delivered) break;
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    return natsConnection_FlushTimeout(conn_->get(), left.count()) == NATS_OK;
  }

  /// A snapshot of the counters (see BridgeStats for the identities they satisfy).
  [[nodiscard]] BridgeStats stats() const {
    BridgeStats s;
    for (const auto& e : exports_) {
      // Read the skips before the imports that caused them, so skipped <= imported_here.
      const std::uint64_t skipped = e->skipped.get();
      const SubscriptionStats q = e->sub.stats();
      const std::uint64_t imported_here = e->imported_here.load(std::memory_order_relaxed);
      // The export queue cannot tell imported messages from local ones; imported ones are
      // either skipped by the export thread or were refused or evicted by the queue.
      const std::uint64_t imported_lost = imported_here - std::min(imported_here, skipped);
      const std::uint64_t refused = q.dropped + q.evicted;
      s.exported += q.offered - std::min(q.offered, imported_here);
      s.dropped_overflow += refused - std::min(refused, imported_lost);
      s.sent += e->sent.get();
      s.dropped_subject += e->dropped_subject.get();
      s.dropped_too_large += e->dropped_too_large.get();
      s.dropped_encode += e->dropped_encode.get();
      s.dropped_failed += e->dropped_failed.get();
      s.skipped_echo += skipped;
      s.queued += q.queue_depth;
    }
    for (const auto& i : imports_) {
      s.received += i->received.get();
      s.imported += i->imported.get();
      s.rejected += i->rejected.get();
      s.dropped_decode += i->dropped_decode.get();
      s.import_failed += i->import_failed.get();
      s.echoes += i->echoes.get();
      s.lost += i->lost.get();
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
        : pattern(rule.pattern),
          prefix(detail::prefix_with_dot(rule.prefix)),
          stream(b.id_hex_ + "-" + std::to_string(index)),
          sub(b.broker_.subscribe(rule.pattern, rule.queue)),
          thread([this, &b](std::stop_token stop) { b.run_export(*this, stop); }) {}

    const Pattern pattern;
    const std::string prefix;  // "" or "prefix."
    const std::string stream;  // track_loss: this export's stream id, "<bridge id>-<index>"
    Subscription<T> sub;
    std::atomic<std::uint64_t> imported_here{0};  // imports offered to this export's queue
    detail::OwnedCounter skipped, sent, dropped_subject, dropped_too_large, dropped_encode,
        dropped_failed, handled;
    // track_loss, export thread only: the next sequence number of each subject.
    std::unordered_map<std::string, std::uint64_t, herald::detail::TopicHash, std::equal_to<>>
        sequences;
    std::jthread thread;  // last: starts once everything above exists, stops first
  };

  struct Import {
    Import(Bridge& b, const ImportRule& rule)
        : bridge(b), prefix_size(detail::prefix_with_dot(rule.prefix).size()) {
      const std::string subject = detail::prefix_with_dot(rule.prefix) + rule.pattern;
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
      if (s != NATS_OK) complete = true;  // no completion callback to wait for
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

    /// Unsubscribes and waits until no callback runs or will run, then frees the subscription.
    void end() noexcept {
      if (!sub) return;
      natsSubscription_Unsubscribe(sub);
      {
        std::unique_lock lock(mutex);
        done.wait(lock, [&] { return complete; });
      }
      natsSubscription_Destroy(sub);
      sub = nullptr;
    }

    static void on_complete(void* self) {
      auto& i = *static_cast<Import*>(self);
      std::lock_guard lock(i.mutex);
      i.complete = true;
      i.done.notify_all();  // under the lock: end() destroys `done` once it sees `complete`
    }

    Bridge& bridge;
    const std::size_t prefix_size;
    natsSubscription* sub = nullptr;
    std::mutex mutex;
    std::condition_variable done;
    bool complete = false;
    detail::OwnedCounter received, imported, rejected, dropped_decode, import_failed, echoes, lost;
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

  void validate_rules() const {
    for (const ExportRule& r : options_.exports) {
      validate_pattern(r.pattern);
      if (!r.prefix.empty()) validate_topic(r.prefix);
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

  void run_export(Export& e, std::stop_token stop) {
    std::string subject = e.prefix;
    std::string scratch;
    while (auto m = e.sub.receive(stop)) {
      export_one(e, *m, subject, scratch, stop);
      e.handled.add();
    }
    nats_ReleaseThreadMemory();  // the client keeps per-thread buffers for threads it did not start
  }

  void export_one(Export& e, const Message<T>& m, std::string& subject, std::string& scratch,
                  std::stop_token stop) {
    if (m.origin() == id_) {
      e.skipped.add();
      return;
    }
    // The topic passed the broker's validation and the prefix ours, so `prefix.topic` is a valid
    // subject; only its length can still upset the server.
    subject.resize(e.prefix.size());
    subject += m.topic();
    if (subject.size() > options_.max_subject_bytes) {
      e.dropped_subject.add();
      report_(ErrorKind::subject_too_long, subject,
              "herald::nats: subject is " + std::to_string(subject.size()) +
                  " bytes; max_subject_bytes is " + std::to_string(options_.max_subject_bytes));
      return;
    }
    std::string_view payload;
    try {
      payload = codec_.encode(*m, scratch);
    } catch (const std::exception& ex) {
      e.dropped_encode.add();
      report_(ErrorKind::encode_failed, subject, std::string("herald::nats: encode: ") + ex.what());
      return;
    } catch (...) {
      e.dropped_encode.add();
      report_(ErrorKind::encode_failed, subject, "herald::nats: encode: unknown exception");
      return;
    }
    const std::int64_t max_payload = conn_->max_payload();
    if (max_payload > 0 && payload.size() > static_cast<std::uint64_t>(max_payload)) {
      too_large(e, subject, payload.size(), max_payload);
      return;
    }
    std::uint64_t* seq = nullptr;
    if (options_.track_loss) seq = &next_sequence(e, subject);
    for (;;) {
      if (!conn_->wait_connected(stop)) {  // stopping, or the connection closed
        e.dropped_failed.add();
        return;
      }
      const natsStatus s = publish(e, subject, payload, seq);
      switch (s) {
        case NATS_OK:
          e.sent.add();
          if (seq) ++*seq;
          return;
        case NATS_CONNECTION_DISCONNECTED:
        case NATS_INSUFFICIENT_BUFFER:  // the client's reconnect buffer is full
        case NATS_IO_ERROR:
        case NATS_TIMEOUT:
        case NATS_NOT_YET_CONNECTED:
          // The link went down under us: hold the message (the queue behind it fills and its
          // policy applies) until the client reconnects.
          conn_->pause(stop, std::chrono::milliseconds(5));
          if (stop.stop_requested()) {
            e.dropped_failed.add();
            return;
          }
          continue;
        case NATS_MAX_PAYLOAD:
          too_large(e, subject, payload.size(), conn_->max_payload());
          return;
        default:
          e.dropped_failed.add();
          report_(ErrorKind::publish_failed, subject,
                  std::string("herald::nats: publish: ") + natsStatus_GetText(s), s);
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
                     const std::uint64_t* seq) {
    const int size = static_cast<int>(payload.size());  // <= max_payload, which is an int64
    if (!seq) return natsConnection_Publish(conn_->get(), subject.c_str(), payload.data(), size);
    natsMsg* msg = nullptr;
    natsStatus s = natsMsg_Create(&msg, subject.c_str(), nullptr, payload.data(), size);
    if (s != NATS_OK) return s;
    std::string value = e.stream + " " + std::to_string(*seq);
    s = natsMsgHeader_Set(msg, detail::kSeqHeader, value.c_str());
    if (s == NATS_OK) s = natsConnection_PublishMsg(conn_->get(), msg);
    natsMsg_Destroy(msg);
    return s;
  }

  // ----- import -----

  static void on_message(natsConnection*, natsSubscription*, natsMsg* msg, void* self) {
    auto& imp = *static_cast<Import*>(self);
    try {
      imp.bridge.import_one(imp, msg);
    } catch (...) {  // only an allocation failure while reporting gets here; never unwind into C
    }
    natsMsg_Destroy(msg);
  }

  void import_one(Import& imp, natsMsg* msg) {
    imp.received.add();
    const std::string_view subject = natsMsg_GetSubject(msg);
    if (options_.track_loss && !check_sequence(imp, msg, subject)) return;
    const std::string_view topic = subject.substr(std::min(imp.prefix_size, subject.size()));
    // The server matched the subject against our subscription, but it does not validate what
    // publishers send (e.g. "a..b"): herald's rules apply before anything enters the broker.
    if (!is_valid_topic(topic)) {
      imp.rejected.add();
      report_(ErrorKind::invalid_topic, subject,
              "herald::nats: subject '" + std::string(subject) + "' is not a valid herald topic");
      return;
    }
    const std::string_view data(natsMsg_GetData(msg),
                                static_cast<std::size_t>(natsMsg_GetDataLength(msg)));
    std::optional<T> value;
    try {
      value.emplace(codec_.decode(data));
    } catch (const std::exception& ex) {
      imp.dropped_decode.add();
      report_(ErrorKind::decode_failed, subject, std::string("herald::nats: decode: ") + ex.what());
      return;
    } catch (...) {
      imp.dropped_decode.add();
      report_(ErrorKind::decode_failed, subject, "herald::nats: decode: unknown exception");
      return;
    }
    // Count before publishing: an export thread may skip the message before publish returns.
    for (const auto& e : exports_) {
      if (e->pattern.matches(topic)) e->imported_here.fetch_add(1, std::memory_order_relaxed);
    }
    try {
      if (!publisher_for(imp, topic).publish(std::move(*value)).closed) {
        imp.imported.add();
        return;
      }
      report_(ErrorKind::import_failed, subject, "herald::nats: the broker is closed");
    } catch (const std::exception& ex) {
      report_(ErrorKind::import_failed, subject,
              std::string("herald::nats: publish: ") + ex.what());
    } catch (...) {
      report_(ErrorKind::import_failed, subject, "herald::nats: publish: unknown exception");
    }
    imp.import_failed.add();
    for (const auto& e : exports_) {
      if (e->pattern.matches(topic)) e->imported_here.fetch_sub(1, std::memory_order_relaxed);
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
