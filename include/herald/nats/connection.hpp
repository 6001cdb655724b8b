// herald::nats connection: a wrapper of the NATS C client's connection with the settings a bridge
// needs (no echo, reconnect forever with jittered backoff, connected/closed state others can wait
// for), plus the errors and the failure reporter the bridge shares with it.
#pragma once

#include <herald/detail/backoff.hpp>
#include <herald/detail/hashing.hpp>
#include <herald/detail/parking.hpp>
#include <herald/headers.hpp>
#include <herald/topic.hpp>

#include <nats/nats.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>

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

/// Delay between reconnect rounds: "decorrelated jitter", each delay drawn uniformly from
/// [initial, 3 x the previous delay], capped at max; it starts over after a reconnect.
struct ReconnectPolicy {
  std::chrono::milliseconds initial{20};
  std::chrono::milliseconds max{2000};
};

/// What went wrong with one message or with the connection (reported to BridgeOptions::on_error).
enum class ErrorKind : std::uint8_t {
  subject_too_long,   ///< export: `prefix.topic` is longer than max_subject_bytes
  subject_unsafe,     ///< export: the subject holds a byte NATS cannot carry intact (a NUL)
  payload_too_large,  ///< export: the encoded message exceeds the server's max_payload
  encode_failed,      ///< export: the codec threw
  publish_failed,     ///< export: the NATS client refused the message (see status)
  invalid_topic,      ///< import: the subject (without prefix) is not a valid herald topic, or
                      ///< the C client cut it short at a NUL byte
  decode_failed,      ///< import: the codec threw
  import_failed,      ///< import: publishing into the broker threw, or the broker is closed
  connection,         ///< asynchronous error from the NATS client (e.g. slow consumer)
  jetstream_failed,   ///< JetStream export: the stream refused a message for good, or it was
                      ///< still unacknowledged when the bridge was destroyed
  ack_failed,         ///< JetStream import: an ack, nak or term could not be sent
  dead_lettered,      ///< JetStream import: a message was terminated (max_deliver reached, or it
                      ///< can never be imported) and sent to the dead-letter subject
};

/// One failure, with a message that names the subject and the reason.
struct BridgeError {
  ErrorKind kind;
  std::string subject;
  std::string message;
  natsStatus status = NATS_OK;
};

namespace detail {

using herald::detail::Deadline;
using herald::detail::EventCount;
using herald::detail::wait_until;
using herald::detail::WaitStatus;

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

/// A random id, never 0 (the origin of local publishes).
inline std::uint64_t random_id() {
  std::random_device rd;
  const auto now =
      static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  const std::uint64_t id = herald::detail::mix64((std::uint64_t{rd()} << 32) ^ rd() ^ now);
  return id ? id : 1;
}

inline void check(natsStatus s, const char* what) {
  if (s != NATS_OK) throw NatsError(what, s);
}

/// The bytes the NATS wire cannot carry inside a subject. A subject is one field of a protocol
/// text line ("PUB <subject> [reply] <size>\r\n", "MSG <subject> <sid> [reply] <size>\r\n"):
/// nats-server and the clients split the fields at spaces and tabs (the rest of the subject
/// would be read as a reply subject), and CR and LF end the line. The C client takes subjects as
/// C strings, so a NUL cuts one short ("a.b\0c" goes out as "a.b"). Herald topics and patterns
/// refuse whitespace already; NUL is the byte they accept and the wire does not. Every other
/// byte (control bytes, DEL, any byte >= 0x80) travels intact.
constexpr bool is_wire_unsafe(char c) noexcept {
  return c == '\0' || c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/// The offset of the first byte of `s` NATS cannot carry (is_wire_unsafe), or npos.
constexpr std::size_t find_wire_unsafe(std::string_view s) noexcept {
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (is_wire_unsafe(s[i])) return i;
  }
  return std::string_view::npos;
}

/// The error text for `subject` (what: "subject", "pattern", ...) holding a byte NATS cannot
/// carry at `offset`: the byte, where, and the subject quoted printably.
inline std::string wire_unsafe_text(std::string_view what, std::string_view subject,
                                    std::size_t offset) {
  std::string text = "herald::nats: " + std::string(what) + " '";
  herald::detail::append_escaped(text, subject.substr(0, herald::detail::kQuotedBytes));
  if (subject.size() > herald::detail::kQuotedBytes) text += "...";
  text += "' holds ";
  const char c = subject[offset];
  text += c == '\0'   ? "a NUL byte"
          : c == ' '  ? "a space"
          : c == '\t' ? "a tab"
          : c == '\r' ? "a CR"
                      : "an LF";
  text += " at offset " + std::to_string(offset) + ", which NATS cannot carry in a subject (" +
          (c == '\0' ? "the C client would cut the subject there)"
                     : "the protocol would split or end the line there)");
  return text;
}

/// True when the C client handed us a subject cut short at a NUL byte another client sent
/// (nats.go, for one, publishes any byte but CR and LF and the server delivers it): the subject
/// it received was longer than the C string natsMsg_GetSubject returns. libnats 3.x keeps a
/// received message in one block, `subject \0 [reply \0] [headers \0] data` (msg.c), and a
/// subject can hold neither CR nor LF, so the subject's end is found where the next part starts:
/// the reply, else the data, else the header block's first line "NATS/1.x...\r\n".
/// Only for libnats 3.x, whose layout this reads (tested with 3.4): with another major version
/// it says false (no detection) rather than risk rejecting every message that has a reply.
inline bool subject_cut_short(natsMsg* msg, std::string_view subject) noexcept {
#if defined(NATS_VERSION_MAJOR) && NATS_VERSION_MAJOR == 3
  const char* next = subject.data() + subject.size() + 1;  // where the next part starts
  if (const char* reply = natsMsg_GetReply(msg)) return reply != next;
  const char* data = natsMsg_GetData(msg);
  if (data == next || data == nullptr || data < next) return false;
  // A header block: from `next` up to the block's first CR, "NATS/1." and no NUL.
  const std::string_view rest(next, static_cast<std::size_t>(data - next));
  const std::size_t cr = rest.find('\r');
  const std::string_view line = rest.substr(0, cr);
  return cr == std::string_view::npos || line.substr(0, 7) != "NATS/1." ||
         line.find('\0') != std::string_view::npos;
#else
  (void)msg;
  (void)subject;
  return false;
#endif
}

/// What a Connection is made with (the connection part of BridgeOptions).
struct ConnectionSettings {
  std::string url;
  std::string name;
  std::chrono::milliseconds connect_timeout;
  ReconnectPolicy reconnect;
  std::chrono::milliseconds ping_interval;
  int reconnect_buffer_bytes;
  /// Write each publish to the socket at once instead of letting the client's flusher batch
  /// them: lower latency for request-reply, fewer messages/s for streams.
  bool send_asap = false;
};

/// One NATS connection with the settings a bridge needs: never echoes its own publishes,
/// reconnects forever with jittered backoff, and tracks whether it is connected.
/// `on_change(connected)`, if given, runs on the client's thread after each disconnect (false),
/// reconnect (true) and the final close (false); it must not throw or destroy the connection.
class Connection {
 public:
  Connection(const ConnectionSettings& o, Reporter& report, std::uint64_t seed,
             std::function<void(bool connected)> on_change = {})
      : report_(report),
        backoff_(o.reconnect.initial, o.reconnect.max, seed),
        on_change_(std::move(on_change)) {
    natsOptions* opts = nullptr;
    check(natsOptions_Create(&opts), "herald::nats: cannot create NATS options");
    std::unique_ptr<natsOptions, void (*)(natsOptions*)> guard(opts, natsOptions_Destroy);
    check(natsOptions_SetURL(opts, o.url.c_str()), "herald::nats: invalid URL");
    if (!o.name.empty()) check(natsOptions_SetName(opts, o.name.c_str()), "herald::nats: name");
    check(natsOptions_SetNoEcho(opts, true), "herald::nats: no-echo");
    if (o.send_asap) check(natsOptions_SetSendAsap(opts, true), "herald::nats: send asap");
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
    connected_.store(true, std::memory_order_seq_cst);
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
    wait_until(changed_, [&] { return closed(); });
    // on_closed may still be inside its wake-up: it finishes under close_mutex_, so taking the
    // lock once means it is done with this object (unlocking a mutex that is then destroyed is
    // safe, unlike touching the event count after the waiter returned).
    { const std::lock_guard lock(close_mutex_); }
    natsConnection_Destroy(nc_);
  }

  [[nodiscard]] natsConnection* get() const noexcept { return nc_; }
  [[nodiscard]] bool connected() const noexcept {
    return connected_.load(std::memory_order_seq_cst);
  }
  [[nodiscard]] std::int64_t max_payload() const noexcept {
    return max_payload_.load(std::memory_order_relaxed);
  }
  [[nodiscard]] std::uint64_t disconnects() const noexcept { return disconnects_.load(); }
  [[nodiscard]] std::uint64_t reconnects() const noexcept { return reconnects_.load(); }

  /// Waits until connected (true), the connection closed (false) or a stop request (false).
  bool wait_connected(const std::stop_token& stop) {
    wait_until(
        changed_, [&] { return connected() || closed(); }, Deadline::forever(), stop);
    return connected();
  }

  /// Waits at most `d` for the connection to close (or a stop request): a pause between tries.
  void pause(const std::stop_token& stop, std::chrono::milliseconds d) {
    wait_until(
        changed_, [&] { return closed(); }, Deadline::after(d), stop);
  }

 private:
  [[nodiscard]] bool closed() const noexcept { return closed_.load(std::memory_order_seq_cst); }

  // The waiters of `changed_` wait for different conditions ("connected or closed", "closed"),
  // so a change wakes them all unconditionally (wake_all) rather than through notify_all, which
  // may leave the wake-up to a waiter that does not care. State changes are rare.
  void set(std::atomic<bool>& flag, bool value) noexcept {
    flag.store(value, std::memory_order_seq_cst);
    changed_.wake_all();
  }

  static void on_disconnected(natsConnection*, void* self) {
    auto& c = *static_cast<Connection*>(self);
    c.disconnects_.fetch_add(1, std::memory_order_relaxed);
    c.set(c.connected_, false);
    if (c.on_change_) c.on_change_(false);
  }
  static void on_reconnected(natsConnection* nc, void* self) {
    auto& c = *static_cast<Connection*>(self);
    c.reconnects_.fetch_add(1, std::memory_order_relaxed);
    {
      const std::lock_guard lock(c.backoff_mutex_);
      c.backoff_.reset();
    }
    // Another server of the cluster may have another limit.
    c.max_payload_.store(natsConnection_GetMaxPayload(nc), std::memory_order_relaxed);
    c.set(c.connected_, true);
    if (c.on_change_) c.on_change_(true);
  }
  static void on_closed(natsConnection*, void* self) {
    auto& c = *static_cast<Connection*>(self);
    const std::lock_guard lock(c.close_mutex_);  // see the destructor
    if (c.on_change_) c.on_change_(false);
    c.connected_.store(false, std::memory_order_seq_cst);
    c.set(c.closed_, true);
  }
  static void on_async_error(natsConnection*, natsSubscription* sub, natsStatus err, void* self) {
    auto& c = *static_cast<Connection*>(self);
    const char* subject = sub ? natsSubscription_GetSubject(sub) : nullptr;
    c.report_(ErrorKind::connection, subject ? subject : "",
              std::string("herald::nats: ") + natsStatus_GetText(err), err);
  }
  static std::int64_t on_reconnect_delay(natsConnection*, int /*attempts*/, void* self) {
    auto& c = *static_cast<Connection*>(self);
    const std::lock_guard lock(c.backoff_mutex_);
    const auto d = std::chrono::duration_cast<std::chrono::milliseconds>(c.backoff_.next());
    return std::max<std::int64_t>(1, d.count());
  }

  Reporter& report_;
  std::mutex backoff_mutex_;  // the client's reconnect thread and reconnect callback
  herald::detail::DecorrelatedJitter backoff_;
  const std::function<void(bool)> on_change_;
  natsConnection* nc_ = nullptr;
  std::atomic<bool> connected_{false};
  std::atomic<bool> closed_{false};
  std::atomic<std::int64_t> max_payload_{0};
  std::atomic<std::uint64_t> disconnects_{0};
  std::atomic<std::uint64_t> reconnects_{0};
  EventCount changed_;      // connected_ or closed_ changed
  std::mutex close_mutex_;  // held by on_closed while it touches this object
};

/// One NATS subscription that ends cleanly: end() (and the destructor) unsubscribes and waits
/// until the client runs no callback for it and never will, then frees it.
class NatsSubscription {
 public:
  /// Subscribes to `subject` (in `queue_group` unless empty); the client calls `handler` with
  /// `closure` for each message and keeps at most the given numbers pending (beyond: drops them).
  /// Throws: NatsError naming the subject; nothing is left subscribed then.
  NatsSubscription(natsConnection* nc, const std::string& subject, const std::string& queue_group,
                   natsMsgHandler handler, void* closure, int pending_messages = 65536,
                   int pending_bytes = 64 * 1024 * 1024) {
    natsStatus s = queue_group.empty()
                       ? natsConnection_Subscribe(&sub_, nc, subject.c_str(), handler, closure)
                       : natsConnection_QueueSubscribe(&sub_, nc, subject.c_str(),
                                                       queue_group.c_str(), handler, closure);
    check(s, ("herald::nats: cannot subscribe to '" + subject + "'").c_str());
    s = natsSubscription_SetOnCompleteCB(sub_, &NatsSubscription::on_complete, this);
    if (s != NATS_OK) complete_.store(true);  // no completion callback to wait for
    if (s == NATS_OK) s = natsSubscription_SetPendingLimits(sub_, pending_messages, pending_bytes);
    if (s != NATS_OK) {
      end();
      throw NatsError("herald::nats: cannot set up the subscription to '" + subject + "'", s);
    }
  }
  NatsSubscription(const NatsSubscription&) = delete;
  NatsSubscription& operator=(const NatsSubscription&) = delete;
  ~NatsSubscription() { end(); }

  [[nodiscard]] natsSubscription* get() const noexcept { return sub_; }
  /// Messages the client dropped because the pending limits were reached.
  [[nodiscard]] std::uint64_t dropped() const noexcept {
    std::int64_t n = 0;
    return sub_ && natsSubscription_GetDropped(sub_, &n) == NATS_OK && n > 0
               ? static_cast<std::uint64_t>(n)
               : 0;
  }

  /// Unsubscribes and waits until no callback runs or will run, then frees the subscription.
  /// Idempotent. Must not be called from this subscription's own callback.
  void end() noexcept {
    if (!sub_) return;
    natsSubscription_Unsubscribe(sub_);
    wait_until(done_, [&] { return complete_.load(std::memory_order_seq_cst); });
    // on_complete finishes under mutex_: once we hold it, it no longer touches this object.
    { const std::lock_guard lock(mutex_); }
    natsSubscription_Destroy(sub_);
    sub_ = nullptr;
  }

 private:
  static void on_complete(void* self) {
    auto& s = *static_cast<NatsSubscription*>(self);
    const std::lock_guard lock(s.mutex_);
    s.complete_.store(true, std::memory_order_seq_cst);
    s.done_.notify_all();
  }

  natsSubscription* sub_ = nullptr;
  std::mutex mutex_;  // held by on_complete while it touches this object
  EventCount done_;
  std::atomic<bool> complete_{false};
};

// What the C client makes of a status line ("NATS/1.0 503 No Responders"): not a publisher's.
inline constexpr std::string_view kStatusHeader = "Status";
inline constexpr std::string_view kDescriptionHeader = "Description";

/// Adds every field of `headers` to `msg` (they met NATS's rules when they were built).
inline natsStatus add_headers(natsMsg* msg, const Headers& headers) {
  for (const auto& [name, value] : headers) {
    if (const natsStatus s = natsMsgHeader_Add(msg, name.c_str(), value.c_str()); s != NATS_OK) {
      return s;
    }
  }
  return NATS_OK;
}

/// Appends the NATS headers of `msg` to `out`, but for the names `skip(name)` is true of and the
/// status of a no-responders message. A field herald's rules refuse (Headers::check) throws
/// std::invalid_argument, or is left out when `lenient`. Throws NatsError when the client cannot
/// read them. A message without headers costs one call that allocates nothing (the C client has
/// no cheaper way to ask).
template <class Skip>
void read_headers(natsMsg* msg, Headers& out, Skip&& skip, bool lenient) {
  struct FreeArray {  // the client allocates the arrays of pointers; the strings are its own
    void operator()(const char** p) const noexcept { std::free(static_cast<void*>(p)); }
  };
  const char** keys = nullptr;
  int count = 0;
  natsStatus s = natsMsgHeader_Keys(msg, &keys, &count);
  if (s == NATS_NOT_FOUND) return;
  const std::unique_ptr<const char*, FreeArray> own_keys(keys);
  if (s != NATS_OK) throw NatsError("herald::nats: cannot read the headers", s);
  const bool status = natsMsg_IsNoResponders(msg);
  for (int k = 0; k < count; ++k) {
    const std::string_view name(keys[k]);
    if (skip(name)) continue;
    if (status && (name == kStatusHeader || name == kDescriptionHeader)) continue;
    const char** values = nullptr;
    int n = 0;
    s = natsMsgHeader_Values(msg, keys[k], &values, &n);
    if (s != NATS_OK) throw NatsError("herald::nats: cannot read the headers", s);
    const std::unique_ptr<const char*, FreeArray> own_values(values);
    for (int v = 0; v < n; ++v) {
      try {
        out.add(name, values[v] ? std::string_view(values[v]) : std::string_view());
      } catch (const std::invalid_argument&) {
        if (!lenient) throw;
      }
    }
  }
}

}  // namespace detail
}  // namespace herald::nats
