// herald::nats::ServiceBridge<Req, Rep>: a Service<Req, Rep> answered and asked across NATS, in
// NATS's own request-reply protocol, so the other side may be any NATS client (nats.go's
// nc.Request and m.Respond, `nats req`, another herald). Optional: it needs the NATS C client
// (Debian: libnats-dev; CMake: herald::nats) and is not part of herald.hpp.
#pragma once

#include <herald/detail/counters.hpp>
#include <herald/detail/error_text.hpp>
#include <herald/executor.hpp>
#include <herald/headers.hpp>
#include <herald/nats/codec.hpp>
#include <herald/nats/connection.hpp>
#include <herald/request.hpp>
#include <herald/topic.hpp>

#include <nats/nats.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace herald::nats {

/// How a ServiceBridge connects (the connection part of BridgeOptions, with the same meaning).
struct ServiceBridgeOptions {
  std::string url = "nats://127.0.0.1:4222";
  /// Connection name, shown by the server's monitoring.
  std::string name{};
  std::chrono::milliseconds connect_timeout{2000};
  ReconnectPolicy reconnect{};
  std::chrono::milliseconds ping_interval{10000};
  int reconnect_buffer_bytes = 8 * 1024 * 1024;
  /// Send each request and reply at once (libnats's SendAsap): without it the client's flusher
  /// may hold a publish for up to about a millisecond, which a round trip pays twice. Measured
  /// with bench_nats_service: ~2x the round trips per second of the default.
  bool send_asap = true;
  /// Longer subjects are refused (NATS servers close a connection whose protocol line exceeds
  /// max_control_line, 4096 by default).
  std::size_t max_subject_bytes = 4000;
  /// Called for every failure, from the bridge's, the service's or the NATS client's threads
  /// (concurrently). Exceptions from it are ignored.
  std::function<void(const BridgeError&)> on_error{};
};

/// How ServiceBridge::answer takes NATS requests.
struct AnswerOptions {
  /// Non-empty: a NATS queue group, so each request goes to one of the bridges in the group.
  std::string queue_group{};
  /// How long the herald service may take; then the NATS requester gets a 504 error reply.
  std::chrono::nanoseconds timeout = std::chrono::seconds(5);
  /// The NATS client's buffer of requests not yet handed to the service; beyond it, it drops.
  int pending_messages = 65536;
  int pending_bytes = 64 * 1024 * 1024;
};

/// How ServiceBridge::forward sends herald requests to NATS.
struct ForwardOptions {
  /// The herald responder the bridge serves the pattern with (queue group, queue capacity).
  ServeOptions serve{};
  /// The longest a forwarded request waits for a NATS reply; a requester's sooner deadline wins.
  std::chrono::nanoseconds max_wait = std::chrono::seconds(60);
};

/// A ServiceBridge's counters. Each request taken ends in exactly one outcome, so
///   answers.requests == answered + timeouts + no_responders + failed + bad_requests + unsent
///                       (+ those still in the service), and
///   forwards.requests == skipped + unsent + sent, with
///   forwards.sent == replied + no_responders + service_errors + timeouts + decode_failed
///                    + connection_lost + in_flight.
struct ServiceBridgeStats {
  /// NATS requests answered by herald responders (answer()).
  struct Answers {
    std::uint64_t requests = 0;          ///< NATS requests received (with a reply subject)
    std::uint64_t answered = 0;          ///< replied to with a value
    std::uint64_t timeouts = 0;          ///< ... with a 504 error: the service took too long
    std::uint64_t no_responders = 0;     ///< ... with a 503 error: no herald responder
    std::uint64_t failed = 0;            ///< ... with a 500 error: a responder failed
    std::uint64_t bad_requests = 0;      ///< ... with a 400 error: undecodable request or subject
    std::uint64_t unsent = 0;            ///< the reply could not be sent (see on_error)
    std::uint64_t no_reply_subject = 0;  ///< messages without a reply subject: ignored
    std::uint64_t dropped_slow = 0;      ///< dropped by the NATS client (pending limits)
  } answers;
  /// herald requests sent to NATS responders (forward()).
  struct Forwards {
    std::uint64_t requests = 0;         ///< herald requests taken by the forwarding responders
    std::uint64_t skipped = 0;          ///< the requester had given up before they were sent
    std::uint64_t unsent = 0;           ///< not sent: encode failure, not connected, refused
    std::uint64_t sent = 0;             ///< published to NATS
    std::uint64_t replied = 0;          ///< ended with a value
    std::uint64_t no_responders = 0;    ///< NATS said nobody serves the subject
    std::uint64_t service_errors = 0;   ///< the NATS responder sent a service error
    std::uint64_t timeouts = 0;         ///< no NATS reply before the deadline
    std::uint64_t decode_failed = 0;    ///< a reply the codec could not read
    std::uint64_t connection_lost = 0;  ///< in flight when the connection dropped or closed
    std::uint64_t late_replies = 0;     ///< replies to requests that had ended (dropped)
    std::uint64_t in_flight = 0;        ///< waiting for their NATS reply now
  } forwards;
  std::uint64_t disconnects = 0;
  std::uint64_t reconnects = 0;
  std::uint64_t errors = 0;  ///< failures reported to on_error
  bool connected = false;
};

namespace detail {

/// NATS's HTTP-like codes of a service error reply (header::service_error_code).
inline constexpr std::string_view kBadRequest = "400";
inline constexpr std::string_view kFailed = "500";
inline constexpr std::string_view kUnavailable = "503";
inline constexpr std::string_view kTimedOut = "504";

/// The code a herald RequestError is sent as.
inline std::string_view service_error_code(RequestError e) noexcept {
  switch (e) {
    case RequestError::timeout:
      return kTimedOut;
    case RequestError::no_responders:
    case RequestError::closed:
      return kUnavailable;
    default:
      return kFailed;
  }
}

/// The RequestError a NATS service error code is read as: 503 and 504 mean what herald sends
/// them for; every other code is a failure of the responder.
inline RequestError request_error_of(std::string_view code) noexcept {
  if (code == kUnavailable) return RequestError::no_responders;
  if (code == kTimedOut) return RequestError::timeout;
  return RequestError::failed;
}

/// A text fit for a header value: one line (CR and LF become spaces), at most 1 KiB.
inline std::string header_text(std::string_view text) {
  std::string out(text.substr(0, 1024));
  std::replace_if(
      out.begin(), out.end(), [](char c) { return c == '\r' || c == '\n'; }, ' ');
  return out;
}

/// The headers of a NATS message as herald Headers; fields herald cannot hold are left out.
inline Headers headers_of(natsMsg* msg) {
  Headers out;
  try {
    read_headers(
        msg, out, [](std::string_view) { return false; }, true);
  } catch (const NatsError&) {  // unreadable: what was read so far
  }
  return out;
}

}  // namespace detail

/// Carries a Service<Req, Rep> over NATS, both ways, in NATS's request-reply protocol:
///
/// - answer(pattern): NATS requests on subjects matching `pattern` (from any NATS client) are
///   asked of the service's responders, and their replies (or errors) go back to the requester's
///   reply subject. A failed request is answered with an empty payload and the NATS service
///   error headers `Nats-Service-Error` (the text) and `Nats-Service-Error-Code`: 400 for a
///   request the codec cannot read, 500 when a responder failed, 503 when no herald responder
///   serves the subject (also with `Status: 503`, so NATS clients report "no responders"),
///   504 when the service took longer than AnswerOptions::timeout.
/// - forward(pattern): the bridge serves `pattern` in the service, so `svc.request(topic, ...)`
///   on a matching topic is published to NATS on the same subject, with a reply subject in the
///   bridge's inbox; the NATS reply completes the herald request. NATS's no-responders status
///   (and a 503 service error) becomes RequestError::no_responders, a 504 becomes timeout, any
///   other service error becomes failed with its text; its headers reach Reply::headers().
///
///     herald::Service<std::string, std::string> svc;
///     herald::nats::ServiceBridge<std::string, std::string> bridge(svc, {.url = url});
///     bridge.answer("prices.>");               // NATS clients ask herald's responders
///     bridge.forward("quotes.>");              // herald asks NATS responders
///     auto reply = svc.request("quotes.eu", "ACME", 100ms);
///
/// Nothing blocks the NATS client's threads on a herald responder: answers are asked with
/// Service::request_async and sent from whichever thread ends them. Forwarded requests share
/// one wildcard inbox subscription (`_INBOX.<id>.*`) and a table of requests in flight, so any
/// number may be in flight; a timer thread ends those that reach their deadline (a requester's,
/// or ForwardOptions::max_wait). Requests in flight when the connection drops end at once with
/// RequestError::failed (their replies may be lost), and with `closed` when the bridge goes.
/// The forwarding responder runs on the requester's thread (inline_executor): it only encodes
/// and hands the request to the NATS client. The connection never receives its own publishes,
/// so one bridge does not answer the requests it forwards.
/// Lifetime: the service must outlive the bridge. Destroying the bridge stops answering and
/// forwarding (the forwarding responders unsubscribe), ends forwarded requests in flight with
/// `closed`, then closes the connection; replies of the service that arrive later are dropped.
/// Throws: (constructor) NatsError when the server cannot be reached.
/// Thread-safety: every member function may be called concurrently, except the destructor.
template <class Req, class Rep, class ReqCodec = DefaultCodec<Req>,
          class RepCodec = DefaultCodec<Rep>>
requires(Codec<ReqCodec, Req>&& Codec<RepCodec, Rep>) class ServiceBridge {
 public:
  ServiceBridge(Service<Req, Rep>& service, ServiceBridgeOptions options,
                ReqCodec request_codec = ReqCodec{}, RepCodec reply_codec = RepCodec{})
      : service_(service),
        core_(std::make_shared<Core>(std::move(options), std::move(request_codec),
                                     std::move(reply_codec))) {
    const ServiceBridgeOptions& o = core_->options;
    conn_ = std::make_unique<detail::Connection>(
        detail::ConnectionSettings{o.url, o.name, o.connect_timeout, o.reconnect, o.ping_interval,
                                   o.reconnect_buffer_bytes, o.send_asap},
        core_->report, detail::random_id(), [core = core_.get()](bool connected) {
          if (!connected) {
            core->end_all(RequestError::failed,
                          "herald::nats: the connection was lost while the request was in flight");
          }
        });
    core_->nc = conn_->get();
    natsInbox* inbox = nullptr;
    detail::check(natsInbox_Create(&inbox), "herald::nats: cannot create an inbox");
    core_->inbox = std::string(inbox) + ".";
    natsInbox_Destroy(inbox);
    inbox_sub_ = std::make_unique<detail::NatsSubscription>(
        conn_->get(), core_->inbox + "*", std::string(), &Core::on_reply, core_.get());
    timer_ = std::jthread([core = core_.get()](std::stop_token stop) { core->expire(stop); });
  }
  ServiceBridge(const ServiceBridge&) = delete;
  ServiceBridge& operator=(const ServiceBridge&) = delete;

  /// Stops answering and forwarding, ends what is in flight, closes the connection.
  ~ServiceBridge() {
    {
      const std::lock_guard lock(mutex_);
      answers_.clear();   // no NATS request is taken after this
      forwards_.clear();  // quiescent: no herald request is forwarded after this
    }
    inbox_sub_.reset();
    timer_.request_stop();
    if (timer_.joinable()) timer_.join();
    core_->end_all(RequestError::closed, "herald::nats: the service bridge was destroyed");
    {
      const std::unique_lock gate(core_->gate);
      core_->nc = nullptr;  // replies the service sends later are dropped
    }
    conn_.reset();
  }

  /// Answers NATS requests on subjects matching `pattern` (NATS wildcards) with the service's
  /// responders, until the bridge is destroyed. Requests are asked of the service on the same
  /// topic, with the NATS headers as herald headers; the reply's headers go back as NATS
  /// headers. A message without a reply subject is counted and ignored.
  /// Throws: InvalidTopic for an invalid pattern; std::invalid_argument for a queue group with
  /// whitespace or a timeout <= 0; std::length_error for a pattern over max_subject_bytes;
  /// NatsError when the client refuses the subscription.
  void answer(std::string_view pattern, AnswerOptions options = {}) {
    check_subject(pattern);
    if (std::any_of(options.queue_group.begin(), options.queue_group.end(),
                    herald::detail::is_topic_space)) {
      throw std::invalid_argument("herald::nats: queue group '" + options.queue_group +
                                  "' contains whitespace");
    }
    if (options.timeout <= std::chrono::nanoseconds::zero()) {
      throw std::invalid_argument("herald::nats: ServiceBridge::answer timeout must be > 0");
    }
    auto a = std::make_unique<Answer>(*this, options.timeout);
    a->sub.emplace(conn_->get(), std::string(pattern), options.queue_group, &on_request, a.get(),
                   options.pending_messages, options.pending_bytes);
    // When answer() returns, the server knows the subscription.
    detail::check(natsConnection_FlushTimeout(conn_->get(), core_->options.connect_timeout.count()),
                  "herald::nats: cannot register the answer subscription");
    const std::lock_guard lock(mutex_);
    answers_.push_back(std::move(a));
  }

  /// Serves `pattern` in the service with a responder that forwards each request to NATS on
  /// its topic and completes it with the NATS reply, until the bridge is destroyed.
  /// Throws: InvalidTopic for an invalid pattern; std::invalid_argument for bad options;
  /// std::length_error for a pattern over max_subject_bytes.
  void forward(std::string_view pattern, ForwardOptions options = {}) {
    check_subject(pattern);
    if (options.max_wait <= std::chrono::nanoseconds::zero()) {
      throw std::invalid_argument("herald::nats: ServiceBridge::forward max_wait must be > 0");
    }
    auto responder = service_.serve(
        pattern,
        [core = core_.get(), max_wait = options.max_wait](const Request<Req>& r,
                                                          Replier<Rep> replier) {
          core->send(r, std::move(replier), max_wait);
        },
        inline_executor, std::move(options.serve));
    const std::lock_guard lock(mutex_);
    forwards_.push_back(std::move(responder));
  }

  /// A snapshot of the counters (see ServiceBridgeStats for the identities they satisfy).
  [[nodiscard]] ServiceBridgeStats stats() const {
    using A = typename Core::A;
    using F = typename Core::F;
    const auto& a = core_->answers;
    const auto& f = core_->forwards;
    ServiceBridgeStats s;
    s.answers.requests = a.sum(A::requests);
    s.answers.answered = a.sum(A::answered);
    s.answers.timeouts = a.sum(A::timeouts);
    s.answers.no_responders = a.sum(A::no_responders);
    s.answers.failed = a.sum(A::failed);
    s.answers.bad_requests = a.sum(A::bad_requests);
    s.answers.unsent = a.sum(A::unsent);
    s.answers.no_reply_subject = a.sum(A::no_reply_subject);
    {
      const std::lock_guard lock(mutex_);
      for (const auto& answer : answers_)
        s.answers.dropped_slow += answer->sub->dropped();
    }
    s.forwards.requests = f.sum(F::f_requests);
    s.forwards.skipped = f.sum(F::skipped);
    s.forwards.unsent = f.sum(F::f_unsent);
    s.forwards.sent = f.sum(F::sent);
    s.forwards.replied = f.sum(F::replied);
    s.forwards.no_responders = f.sum(F::f_no_responders);
    s.forwards.service_errors = f.sum(F::service_errors);
    s.forwards.timeouts = f.sum(F::f_timeouts);
    s.forwards.decode_failed = f.sum(F::decode_failed);
    s.forwards.connection_lost = f.sum(F::connection_lost);
    s.forwards.late_replies = f.sum(F::late_replies);
    {
      const std::lock_guard lock(core_->pending_mutex);
      s.forwards.in_flight = core_->pending.size();
    }
    s.disconnects = conn_->disconnects();
    s.reconnects = conn_->reconnects();
    s.errors = core_->report.errors();
    s.connected = conn_->connected();
    return s;
  }

  /// True while the connection to the server is up (as last reported by the client).
  [[nodiscard]] bool is_connected() const noexcept { return conn_->connected(); }
  /// The NATS connection (e.g. to flush). Do not close it.
  [[nodiscard]] natsConnection* native_handle() const noexcept { return conn_->get(); }

 private:
  // What outlives the bridge: a reply of the service can arrive after the bridge is gone (the
  // service ends it later), so answers reach the connection through `gate` and `nc`.
  struct Core {
    enum A : std::size_t {
      requests,
      answered,
      timeouts,
      no_responders,
      failed,
      bad_requests,
      unsent,
      no_reply_subject,
      answer_fields
    };
    enum F : std::size_t {
      f_requests,
      skipped,
      f_unsent,
      sent,
      replied,
      f_no_responders,
      service_errors,
      f_timeouts,
      decode_failed,
      connection_lost,
      late_replies,
      forward_fields
    };

    // A forwarded request waiting for its NATS reply.
    struct Pending {
      Replier<Rep> replier;
      std::chrono::steady_clock::time_point deadline;
    };

    Core(ServiceBridgeOptions o, ReqCodec rc, RepCodec pc)
        : options(std::move(o)),
          request_codec(std::move(rc)),
          reply_codec(std::move(pc)),
          report(options.on_error) {}

    // The bytes of `value`, or nothing after reporting why not (the text in `error`).
    template <class C, class V>
    std::optional<std::string_view> encode(const C& codec, const V& value, std::string& scratch,
                                           std::string_view subject, std::string& error) {
      try {
        return std::string_view(codec.encode(value, scratch));
      } catch (...) {
        error = "herald::nats: encode: " + herald::detail::exception_text(std::current_exception());
        report(ErrorKind::encode_failed, subject, error);
        return std::nullopt;
      }
    }

    // ----- answer: the service's outcome goes back to the NATS requester -----

    void reply(const std::string& subject, Reply<Rep>&& r) noexcept {
      try {
        const std::shared_lock lock(gate);
        if (nc == nullptr) {
          answers.add(unsent, 1);
          return;
        }
        if (!r.ok()) {
          reply_error(subject, r.error(), r.error_text(), r.headers());
          return;
        }
        std::string scratch;
        std::string why;
        const auto encoded = encode(reply_codec, *r, scratch, subject, why);
        if (!encoded) {
          reply_error(subject, RequestError::failed, why, {});
          return;
        }
        const std::string_view data = *encoded;
        const std::int64_t max = natsConnection_GetMaxPayload(nc);
        if (max > 0 && data.size() > static_cast<std::uint64_t>(max)) {
          const std::string text = "herald::nats: the reply is " + std::to_string(data.size()) +
                                   " bytes; the server's max_payload is " + std::to_string(max);
          report(ErrorKind::payload_too_large, subject, text, NATS_MAX_PAYLOAD);
          reply_error(subject, RequestError::failed, text, {});
          return;
        }
        publish(subject, data, r.headers(), nullptr, answered);
      } catch (...) {  // bad_alloc: the requester times out; never unwind into the service
        answers.add(unsent, 1);
      }
    }

    // Under a shared `gate` with nc set.
    void reply_error(const std::string& subject, RequestError e, std::string_view text,
                     const Headers& headers) {
      const std::string_view code = detail::service_error_code(e);
      const auto kind = e == RequestError::timeout         ? timeouts
                        : e == RequestError::no_responders ? no_responders
                                                           : failed;
      publish(subject, {}, headers, &code, kind, text.empty() ? to_string(e) : text);
    }

    // Sends one reply and counts it as `kind` (or as unsent). Under a shared `gate`.
    void publish(const std::string& subject, std::string_view data, const Headers& headers,
                 const std::string_view* error_code, A kind, std::string_view error_text = {}) {
      natsStatus s = NATS_OK;
      if (headers.empty() && error_code == nullptr) {
        s = natsConnection_Publish(nc, subject.c_str(), data.data(), static_cast<int>(data.size()));
      } else {
        natsMsg* msg = nullptr;
        s = natsMsg_Create(&msg, subject.c_str(), nullptr, data.data(),
                           static_cast<int>(data.size()));
        if (s == NATS_OK) s = detail::add_headers(msg, headers);
        if (s == NATS_OK && error_code != nullptr) {
          s = natsMsgHeader_Set(msg, header::service_error.data(),
                                detail::header_text(error_text).c_str());
          if (s == NATS_OK) {
            s = natsMsgHeader_Set(msg, header::service_error_code.data(),
                                  std::string(*error_code).c_str());
          }
          // What NATS servers send for "no responders": NATS clients report it as such.
          if (s == NATS_OK && kind == no_responders) s = natsMsgHeader_Set(msg, "Status", "503");
        }
        if (s == NATS_OK) s = natsConnection_PublishMsg(nc, msg);
        natsMsg_Destroy(msg);
      }
      if (s == NATS_OK) {
        answers.add(kind, 1);
        return;
      }
      answers.add(unsent, 1);
      report(ErrorKind::publish_failed, subject,
             std::string("herald::nats: cannot send the reply: ") + natsStatus_GetText(s), s);
    }

    // ----- forward: a herald request goes to NATS -----

    void send(const Request<Req>& r, Replier<Rep>&& replier, std::chrono::nanoseconds max_wait) {
      forwards.add(f_requests, 1);
      if (replier.abandoned()) {
        forwards.add(skipped, 1);
        return;
      }
      const std::string& subject = r.topic();
      std::string scratch;
      std::string why;
      const auto encoded = encode(request_codec, *r, scratch, subject, why);
      if (!encoded) return refuse(std::move(replier), std::move(why));
      const std::string_view data = *encoded;
      if (subject.size() > options.max_subject_bytes) {
        const std::string text = "herald::nats: subject is " + std::to_string(subject.size()) +
                                 " bytes; max_subject_bytes is " +
                                 std::to_string(options.max_subject_bytes);
        report(ErrorKind::subject_too_long, subject, text);
        return refuse(std::move(replier), text);
      }
      // A NUL (valid in a herald topic): the C client would cut the subject there and the
      // request would reach the responders of another subject.
      if (const std::size_t nul = subject.find('\0'); nul != std::string::npos) [[unlikely]] {
        const std::string text = detail::wire_unsafe_text("subject", subject, nul);
        report(ErrorKind::subject_unsafe, subject, text);
        return refuse(std::move(replier), text);
      }
      if (natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED) {
        return refuse(std::move(replier), "herald::nats: not connected to the NATS server");
      }
      const std::uint64_t token = next_token.fetch_add(1, std::memory_order_relaxed);
      std::string reply_to = inbox;
      char digits[24];
      reply_to.append(digits, std::to_chars(digits, digits + sizeof digits, token).ptr);
      const auto now = std::chrono::steady_clock::now();
      const auto deadline =
          max_wait >= r.deadline() - now ? r.deadline() : now + max_wait;  // no overflow
      {
        const std::lock_guard lock(pending_mutex);
        pending.emplace(token, Pending{std::move(replier), deadline});
        deadlines.emplace(deadline, token);
        if (deadlines.begin()->second == token) pending_cv.notify_one();
      }
      natsStatus s = NATS_OK;
      if (r.headers().empty()) {
        s = natsConnection_PublishRequest(nc, subject.c_str(), reply_to.c_str(), data.data(),
                                          static_cast<int>(data.size()));
      } else {
        natsMsg* msg = nullptr;
        s = natsMsg_Create(&msg, subject.c_str(), reply_to.c_str(), data.data(),
                           static_cast<int>(data.size()));
        if (s == NATS_OK) s = detail::add_headers(msg, r.headers());
        if (s == NATS_OK) s = natsConnection_PublishMsg(nc, msg);
        natsMsg_Destroy(msg);
      }
      if (s == NATS_OK) {
        forwards.add(sent, 1);
        return;
      }
      // Unless a disconnect already ended it, the request is still ours to fail.
      std::optional<Pending> p = take(token);
      if (!p) {
        forwards.add(sent, 1);  // counted as connection_lost by whoever took it
        return;
      }
      report(ErrorKind::publish_failed, subject,
             std::string("herald::nats: cannot send the request: ") + natsStatus_GetText(s), s);
      refuse(std::move(p->replier),
             std::string("herald::nats: cannot send the request: ") + natsStatus_GetText(s));
    }

    void refuse(Replier<Rep>&& replier, std::string text) {
      forwards.add(f_unsent, 1);
      replier.fail(RequestError::failed, std::move(text));
    }

    // The pending request of `token`, taken out of the tables.
    std::optional<Pending> take(std::uint64_t token) {
      const std::lock_guard lock(pending_mutex);
      const auto it = pending.find(token);
      if (it == pending.end()) return std::nullopt;
      std::optional<Pending> p(std::move(it->second));
      deadlines.erase({p->deadline, token});
      pending.erase(it);
      return p;
    }

    static void on_reply(natsConnection*, natsSubscription*, natsMsg* msg, void* self) {
      try {
        static_cast<Core*>(self)->complete(msg);
      } catch (...) {  // bad_alloc: the request times out; never unwind into C
      }
      natsMsg_Destroy(msg);
    }

    void complete(natsMsg* msg) {
      const std::string_view subject = natsMsg_GetSubject(msg);
      std::uint64_t token = 0;
      const std::string_view digits = subject.substr(std::min(inbox.size(), subject.size()));
      std::from_chars(digits.data(), digits.data() + digits.size(), token);
      std::optional<Pending> p = take(token);
      if (!p) {
        forwards.add(late_replies, 1);
        return;
      }
      if (natsMsg_IsNoResponders(msg)) {
        forwards.add(f_no_responders, 1);
        return p->replier.fail(RequestError::no_responders, "no NATS responder");
      }
      Headers headers = detail::headers_of(msg);
      if (const auto text = headers.get(header::service_error)) {
        const RequestError e =
            detail::request_error_of(headers.get(header::service_error_code).value_or(""));
        forwards.add(e == RequestError::no_responders ? f_no_responders
                     : e == RequestError::timeout     ? f_timeouts
                                                      : service_errors,
                     1);
        return p->replier.fail(e, std::string(*text), std::move(headers));
      }
      const std::string_view data(natsMsg_GetData(msg),
                                  static_cast<std::size_t>(natsMsg_GetDataLength(msg)));
      std::optional<Rep> value;
      try {
        value.emplace(reply_codec.decode(data));
      } catch (...) {
        const std::string text =
            "herald::nats: decode: " + herald::detail::exception_text(std::current_exception());
        forwards.add(decode_failed, 1);
        report(ErrorKind::decode_failed, subject, text);
        return p->replier.fail(RequestError::failed, text, std::move(headers));
      }
      forwards.add(replied, 1);
      p->replier.reply(std::move(*value), std::move(headers));
    }

    // Ends every forwarded request in flight (the connection dropped or the bridge goes).
    void end_all(RequestError e, std::string_view why) noexcept {
      std::unordered_map<std::uint64_t, Pending> taken;
      {
        const std::lock_guard lock(pending_mutex);
        taken.swap(pending);
        deadlines.clear();
      }
      for (auto& [token, p] : taken) {
        forwards.add(connection_lost, 1);
        try {
          if (!p.replier.abandoned()) {
            p.replier.fail(e, std::string(why));
          }
        } catch (...) {  // bad_alloc: dropping the Replier still ends the request
        }
      }
    }

    // The timer thread: ends forwarded requests at their deadlines.
    void expire(const std::stop_token& stop) {
      std::unique_lock lock(pending_mutex);
      while (!stop.stop_requested()) {
        if (deadlines.empty()) {
          pending_cv.wait(lock, stop, [&] { return !deadlines.empty(); });
          continue;
        }
        const auto first = deadlines.begin()->first;
        if (std::chrono::steady_clock::now() < first) {
          pending_cv.wait_until(lock, stop, first, [&] {
            return deadlines.empty() || deadlines.begin()->first < first;
          });
          continue;
        }
        const std::uint64_t token = deadlines.begin()->second;
        deadlines.erase(deadlines.begin());
        auto it = pending.find(token);
        Pending p(std::move(it->second));
        pending.erase(it);
        lock.unlock();
        forwards.add(f_timeouts, 1);
        if (!p.replier.abandoned()) {  // else the requester has timed out on its own already
          try {
            p.replier.fail(RequestError::timeout, "no reply from NATS within the timeout");
          } catch (...) {
          }
        }
        lock.lock();
      }
    }

    const ServiceBridgeOptions options;
    const ReqCodec request_codec;
    const RepCodec reply_codec;
    detail::Reporter report;
    herald::detail::ShardedCounters<answer_fields> answers;
    herald::detail::ShardedCounters<forward_fields> forwards;
    std::shared_mutex gate;        // shared: sending a reply; unique: the bridge is closing
    natsConnection* nc = nullptr;  // null once closing
    std::string inbox;             // "_INBOX.<unique id>."
    std::atomic<std::uint64_t> next_token{1};
    std::mutex pending_mutex;
    std::condition_variable_any pending_cv;  // the earliest deadline moved
    std::unordered_map<std::uint64_t, Pending> pending;
    std::set<std::pair<std::chrono::steady_clock::time_point, std::uint64_t>> deadlines;
  };

  // One answer() subscription.
  struct Answer {
    Answer(ServiceBridge& b, std::chrono::nanoseconds t) : bridge(b), timeout(t) {}
    ServiceBridge& bridge;
    const std::chrono::nanoseconds timeout;
    std::optional<detail::NatsSubscription> sub;
  };

  void check_subject(std::string_view pattern) const {
    validate_pattern(pattern);
    if (const std::size_t at = detail::find_wire_unsafe(pattern); at != std::string_view::npos) {
      throw std::invalid_argument(detail::wire_unsafe_text("pattern", pattern, at));
    }
    if (pattern.size() > core_->options.max_subject_bytes) {
      throw std::length_error("herald::nats: the subject '" + std::string(pattern) + "' is " +
                              std::to_string(pattern.size()) + " bytes; max_subject_bytes is " +
                              std::to_string(core_->options.max_subject_bytes));
    }
  }

  static void on_request(natsConnection*, natsSubscription*, natsMsg* msg, void* self) {
    auto& a = *static_cast<Answer*>(self);
    try {
      a.bridge.ask(a, msg);
    } catch (...) {  // bad_alloc: the requester times out; never unwind into C
    }
    natsMsg_Destroy(msg);
  }

  // A NATS request on the client's thread: decoded and asked of the service without waiting.
  void ask(const Answer& a, natsMsg* msg) {
    using A = typename Core::A;
    Core& core = *core_;
    const char* reply_to = natsMsg_GetReply(msg);
    if (reply_to == nullptr || *reply_to == '\0') {
      core.answers.add(A::no_reply_subject, 1);
      return;
    }
    core.answers.add(A::requests, 1);
    const std::string_view subject = natsMsg_GetSubject(msg);
    std::string reply(reply_to);
    const auto bad_request = [&](const std::string& text) {
      const std::shared_lock lock(core.gate);
      core.publish(reply, {}, {}, &detail::kBadRequest, A::bad_requests, text);
    };
    // A subject the C client cut short at a NUL another client sent is not asked under the
    // shorter topic.
    if (detail::subject_cut_short(msg, subject)) [[unlikely]] {
      const std::string text = "herald::nats: subject '" + std::string(subject) +
                               "...' was cut short by a NUL byte (NATS cannot carry it intact)";
      core.report(ErrorKind::invalid_topic, subject, text);
      return bad_request(text);
    }
    // NATS servers do not check what publishers send (e.g. "a..b"): herald's rules apply.
    if (!is_valid_topic(subject)) {
      const std::string text =
          "herald::nats: subject '" + std::string(subject) + "' is not a valid herald topic";
      core.report(ErrorKind::invalid_topic, subject, text);
      return bad_request(text);
    }
    std::optional<Req> value;
    try {
      value.emplace(core.request_codec.decode(
          {natsMsg_GetData(msg), static_cast<std::size_t>(natsMsg_GetDataLength(msg))}));
    } catch (...) {
      const std::string text =
          "herald::nats: decode: " + herald::detail::exception_text(std::current_exception());
      core.report(ErrorKind::decode_failed, subject, text);
      return bad_request(text);
    }
    try {
      service_.request_async(
          subject, std::move(*value), a.timeout, inline_executor,
          [core = core_, reply = std::move(reply)](Reply<Rep> r) mutable {
            core->reply(reply, std::move(r));
          },
          detail::headers_of(msg));
    } catch (...) {
      const std::string text = "herald::nats: the service refused the request: " +
                               herald::detail::exception_text(std::current_exception());
      const std::shared_lock lock(core.gate);
      core.publish(reply_to, {}, {}, &detail::kFailed, A::failed, text);
    }
  }

  Service<Req, Rep>& service_;
  std::shared_ptr<Core> core_;
  mutable std::mutex mutex_;  // answers_, forwards_
  // Destroyed in reverse, but the destructor ends them explicitly in the right order.
  std::unique_ptr<detail::Connection> conn_;
  std::unique_ptr<detail::NatsSubscription> inbox_sub_;
  std::vector<std::unique_ptr<Answer>> answers_;
  std::vector<Responder<Req, Rep>> forwards_;
  std::jthread timer_;
};

}  // namespace herald::nats
