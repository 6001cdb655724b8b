// Request-reply over the broker: Service<Req, Rep> is a typed request/reply bus. Responders
// serve a topic pattern (wildcards, queue groups) on an executor; requesters ask a topic and get
// one typed Reply -- or every reply, for scatter-gather -- or an error that says why not.
//
//     herald::Service<PriceQuery, Price> prices;
//     auto responder = prices.serve("prices.*", [](const herald::Request<PriceQuery>& r) {
//       return lookup(r.topic(), r->symbol);            // a Price, or throw: the requester
//     }, pool, {.queue_group = "pricing"});             // gets the exception's text
//     herald::Reply<Price> reply = prices.request("prices.eu", PriceQuery{"ACME"}, 100ms);
//     if (reply) use(*reply); else log(reply.error(), reply.error_text());
//
// How it works: a request is a message on the service's own broker whose payload carries the
// requester's reply slot (its inbox). A responder's handler subscription runs the handler and
// writes the outcome into that slot; the first outcome wins and later ones are counted, never
// seen by another request (every request has its own slot). The slot also learns when every
// responder that received the request has let go of it, so a request nobody will answer ends at
// once (no_responders) instead of at its timeout.
#pragma once

#include <herald/broker.hpp>
#include <herald/detail/counters.hpp>
#include <herald/detail/error_text.hpp>
#include <herald/detail/parking.hpp>
#include <herald/detail/unique_function.hpp>
#include <herald/executor.hpp>
#include <herald/headers.hpp>
#include <herald/message.hpp>
#include <herald/policy.hpp>
#include <herald/stats.hpp>
#include <herald/subscription.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <future>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace herald {

/// Why a request got no value.
enum class RequestError : std::uint8_t {
  none,           ///< it did: the reply holds a value
  timeout,        ///< no reply within the timeout
  no_responders,  ///< nobody serves the topic, or every responder that got it went away unanswered
  failed,         ///< the responder failed (threw; error_text() says what), or could not take it
  cancelled,      ///< the requester's stop_token was stopped
  closed,         ///< the service is closed
};

[[nodiscard]] constexpr const char* to_string(RequestError e) noexcept {
  switch (e) {
    case RequestError::none:
      return "none";
    case RequestError::timeout:
      return "timeout";
    case RequestError::no_responders:
      return "no_responders";
    case RequestError::failed:
      return "failed";
    case RequestError::cancelled:
      return "cancelled";
    case RequestError::closed:
      return "closed";
  }
  return "unknown";
}

/// Thrown by Reply::value() when the reply holds an error.
class RequestFailed : public std::runtime_error {
 public:
  RequestFailed(RequestError error, const std::string& text)
      : std::runtime_error(std::string("herald: request ") + to_string(error) +
                           (text.empty() ? "" : ": " + text)),
        error_(error) {}
  [[nodiscard]] RequestError error() const noexcept { return error_; }

 private:
  RequestError error_;
};

/// The outcome of a request: a value of type Rep, or an error and its text.
template <class Rep>
class Reply {
 public:
  /// A reply holding `value`.
  static Reply success(Rep value, Headers headers = {}) {
    Reply r;
    r.value_.emplace(std::move(value));
    r.headers_ = std::move(headers);
    return r;
  }
  /// A reply holding the error `error` (not RequestError::none) and its text.
  static Reply failure(RequestError error, std::string text, Headers headers = {}) {
    Reply r;
    r.error_ = error == RequestError::none ? RequestError::failed : error;
    r.text_ = std::move(text);
    r.headers_ = std::move(headers);
    return r;
  }

  [[nodiscard]] bool ok() const noexcept { return value_.has_value(); }
  explicit operator bool() const noexcept { return ok(); }
  /// The value. Throws: RequestFailed when !ok().
  [[nodiscard]] const Rep& value() const& {
    check();
    return *value_;
  }
  [[nodiscard]] Rep&& value() && {
    check();
    return std::move(*value_);
  }
  /// The value; precondition ok().
  [[nodiscard]] const Rep& operator*() const noexcept { return *value_; }
  [[nodiscard]] const Rep* operator->() const noexcept { return &*value_; }
  /// RequestError::none when ok().
  [[nodiscard]] RequestError error() const noexcept { return error_; }
  /// What went wrong, in words (the responder's exception text for `failed`); empty when ok().
  [[nodiscard]] const std::string& error_text() const noexcept { return text_; }
  /// Headers the responder sent with its reply (NATS responders may send some).
  [[nodiscard]] const Headers& headers() const noexcept { return headers_; }

 private:
  Reply() = default;
  void check() const {
    if (!ok()) throw RequestFailed(error_, text_);
  }
  std::optional<Rep> value_;
  RequestError error_ = RequestError::none;
  std::string text_;
  Headers headers_;
};

/// How Service::serve subscribes a responder.
struct ServeOptions {
  /// Non-empty: responders of one group on the same pattern share the requests (each request
  /// goes to one member). Empty: every responder gets every request (scatter-gather; a plain
  /// request takes the first reply). Named like a topic, at most 256 bytes.
  std::string queue_group{};
  /// The responder's queue of waiting requests, in [1, max_capacity].
  std::size_t capacity = 1024;
  /// When that queue is full: the default fails the request at once (RequestError::failed)
  /// rather than letting it wait for a timeout; Overflow::block makes the requester wait.
  Overflow overflow = Overflow::drop_incoming;
};

/// Limits of Service::request_many: it returns when any is reached.
struct RequestMany {
  std::size_t max_replies = std::numeric_limits<std::size_t>::max();
  /// From the start of the request. > 0.
  std::chrono::nanoseconds timeout = std::chrono::seconds(1);
  /// After the last reply (or the start, before the first). > 0; max(): no stall limit.
  std::chrono::nanoseconds stall = std::chrono::nanoseconds::max();
};

/// Why request_many returned.
enum class ManyEnd : std::uint8_t {
  max_replies,    ///< RequestMany::max_replies replies arrived
  all_answered,   ///< every responder that received the request is done with it
  timeout,        ///< RequestMany::timeout passed
  stall,          ///< RequestMany::stall passed without a reply
  no_responders,  ///< nobody serves the topic (no reply at all)
  failed,         ///< every responder's queue was full
  cancelled,      ///< the stop_token was stopped
  closed,         ///< the service is closed
};

/// What request_many collected, in arrival order, and why it stopped collecting.
template <class Rep>
struct Replies {
  std::vector<Reply<Rep>> replies;
  ManyEnd ended = ManyEnd::timeout;

  [[nodiscard]] std::size_t size() const noexcept { return replies.size(); }
  [[nodiscard]] bool empty() const noexcept { return replies.empty(); }
  [[nodiscard]] auto begin() const noexcept { return replies.begin(); }
  [[nodiscard]] auto end() const noexcept { return replies.end(); }
  [[nodiscard]] const Reply<Rep>& operator[](std::size_t i) const noexcept { return replies[i]; }
};

/// A service's totals since construction.
struct ServiceStats {
  std::uint64_t requests = 0;       ///< request, request_async and request_many calls
  std::uint64_t replied = 0;        ///< requests that ended with a value (request_many: >= 1)
  std::uint64_t failed = 0;         ///< ... with a responder's error (or a full queue)
  std::uint64_t no_responders = 0;  ///< ... with no responder
  std::uint64_t timeouts = 0;       ///< ... at their timeout
  std::uint64_t cancelled = 0;      ///< ... by their stop_token
  std::uint64_t closed = 0;         ///< ... because the service was closed
  std::uint64_t late_replies = 0;   ///< replies to a request that had timed out or was cancelled
  std::uint64_t extra_replies = 0;  ///< replies after the first to a plain request
  std::uint64_t skipped = 0;        ///< requests not handled: the requester had already given up
};

namespace detail {

/// The counters of one Service, shared with its slots and responders.
struct ServiceCounters {
  enum Field : std::size_t {
    requests,
    replied,
    failed,
    no_responders,
    timeouts,
    cancelled,
    closed,
    late,
    extra,
    skipped,
    count
  };
  ShardedCounters<count> c;
  void add(Field f) noexcept { c.add(f, 1); }

  static Field ended_as(RequestError e) noexcept {
    switch (e) {
      case RequestError::none:
        return replied;
      case RequestError::timeout:
        return timeouts;
      case RequestError::no_responders:
        return no_responders;
      case RequestError::failed:
        return failed;
      case RequestError::cancelled:
        return cancelled;
      case RequestError::closed:
        return closed;
    }
    return failed;
  }
};

/// One request's inbox. A plain request takes the first outcome (a reply, or an error from the
/// requester's side: timeout, cancelled, ...); request_many collects replies until it stops.
///
/// "Holds" count who may still answer: the requester while it publishes, and every Request
/// payload and Replier alive. When the last one goes without an answer, nobody ever will: a
/// plain request ends at once with `unanswered_`, which the requester sets from its publish
/// result before letting go of its own hold.
template <class Rep>
class ReplySlot {
 public:
  using Continuation = UniqueFunction<void(Reply<Rep>&&)>;

  ReplySlot(std::shared_ptr<ServiceCounters> counters, bool many)
      : counters_(std::move(counters)), many_(many) {}

  // ---- answering side (responders, Repliers) ----

  /// A responder's outcome. Counted as late or extra when the request had already ended (except
  /// a timeout error, which is no reply).
  void answer(Reply<Rep>&& r) {
    if (many_) {
      std::unique_lock lock(mutex_);
      if (collecting_) {
        replies_.push_back(std::move(r));
        last_reply_ = std::chrono::steady_clock::now();
        lock.unlock();
        cv_.notify_all();
        return;
      }
      lock.unlock();
      counters_->add(ServiceCounters::late);
      return;
    }
    // A responder (a bridge) reporting a timeout after the request ended has not replied: it
    // only agrees that nobody did in time. Not counted.
    const bool is_timeout = r.error() == RequestError::timeout;
    const RequestError by = finish(std::move(r));
    if (by != kWon && !is_timeout) {
      counters_->add(by == RequestError::timeout || by == RequestError::cancelled ||
                             by == RequestError::closed
                         ? ServiceCounters::late
                         : ServiceCounters::extra);
    }
  }

  /// True once the requester stopped waiting: a responder may skip the work.
  [[nodiscard]] bool ended() const noexcept {
    if (many_) return !collecting_flag_.load(std::memory_order_acquire);
    return (state_.load(std::memory_order_acquire) & kPhase) >= kWriting;
  }

  void add_hold() noexcept { holds_.fetch_add(1, std::memory_order_relaxed); }
  void release_hold() {
    if (holds_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    if (many_) {
      {
        std::lock_guard lock(mutex_);
        all_done_ = true;
      }
      cv_.notify_all();
      return;
    }
    if (ended()) return;  // answered (the usual case): no failure text to build
    finish(Reply<Rep>::failure(unanswered_,
                               unanswered_topic_.empty()
                                   ? std::string(unanswered_text_)
                                   : "no responder serves \"" + unanswered_topic_ + "\""));
  }

  // ---- requester side ----

  /// Set before the request is published: who runs when the request ends (async requests).
  void set_continuation(Continuation c) { continuation_ = std::move(c); }

  /// What the request ends with if every hold goes unanswered; called after publishing, before
  /// the requester releases its hold. `text` must outlive the slot (a literal); a non-empty
  /// `topic` makes the text "no responder serves <topic>" instead. Nothing is allocated unless a
  /// topic is given (nobody was subscribed), so an answered request builds no failure text.
  void set_unanswered(RequestError e, std::string_view text, std::string_view topic = {}) {
    unanswered_ = e;
    unanswered_text_ = text;
    unanswered_topic_.assign(topic);
  }

  /// Ends the request from the requester's side (timeout, cancelled, closed) unless it has ended.
  bool end_with(RequestError e, std::string text) {
    return finish(Reply<Rep>::failure(e, std::move(text))) == kWon;
  }

  /// Ends the request without an outcome, counting nothing and running no continuation: the
  /// call that sent it threw, so nobody will look at the slot again.
  void discard() noexcept {
    state_.store(kDone, std::memory_order_release);
    continuation_ = nullptr;
    std::lock_guard lock(mutex_);
    collecting_ = false;
    collecting_flag_.store(false, std::memory_order_release);
  }

  /// Waits for the outcome of a plain request (no continuation set) until `deadline` or a stop.
  Reply<Rep> wait(const Deadline& deadline, const std::stop_token& stop) {
    const auto done = [&] { return (state_.load(std::memory_order_acquire) & kPhase) == kDone; };
    if (!done()) spin(done, deadline, stop);
    std::optional<std::stop_callback<EndOnStop>> on_stop;
    if (!done() && stop.stop_possible()) on_stop.emplace(stop, EndOnStop{this});
    for (;;) {
      std::uint32_t s = state_.load(std::memory_order_acquire);
      const std::uint32_t phase = s & kPhase;
      if (phase == kDone) break;
      if (phase == kWriting) {  // an outcome is being stored: a few instructions away
        std::this_thread::yield();
        continue;
      }
      if (deadline.passed()) {
        end_with(RequestError::timeout, "no reply within the timeout");
        continue;
      }
      if (phase == kPending &&
          !state_.compare_exchange_weak(s, kSleeping, std::memory_order_acq_rel)) {
        continue;
      }
      futex_wait(state_, kSleeping, deadline);
    }
    return std::move(*result_);
  }

  /// request_many: collects until a limit, then stops collecting (later replies count as late).
  Replies<Rep> collect(const RequestMany& limits, std::chrono::steady_clock::time_point start,
                       const std::stop_token& stop) {
    using clock = std::chrono::steady_clock;
    const clock::time_point end = saturating_add(start, limits.timeout);
    Replies<Rep> out;
    std::unique_lock lock(mutex_);
    last_reply_ = start;
    for (;;) {
      if (replies_.size() >= limits.max_replies) {
        out.ended = ManyEnd::max_replies;
        break;
      }
      if (all_done_) {
        out.ended = unanswered_many();
        break;
      }
      if (stop.stop_requested()) {
        out.ended = ManyEnd::cancelled;
        break;
      }
      const auto now = clock::now();
      if (now >= end) {
        out.ended = ManyEnd::timeout;
        break;
      }
      const auto stall_end = saturating_add(last_reply_, limits.stall);
      if (now >= stall_end) {
        out.ended = ManyEnd::stall;
        break;
      }
      cv_.wait_until(lock, stop, std::min(end, stall_end),
                     [&] { return replies_.size() >= limits.max_replies || all_done_; });
    }
    collecting_ = false;
    collecting_flag_.store(false, std::memory_order_release);
    const std::size_t n = std::min(replies_.size(), limits.max_replies);
    out.replies.assign(std::make_move_iterator(replies_.begin()),
                       std::make_move_iterator(replies_.begin() + static_cast<std::ptrdiff_t>(n)));
    const std::size_t beyond = replies_.size() - n;  // arrived with the last one: not taken
    replies_.clear();
    lock.unlock();
    for (std::size_t i = 0; i < beyond; ++i)
      counters_->add(ServiceCounters::late);
    return out;
  }

 private:
  // state_: the phase in the low two bits, the winning outcome's RequestError above them.
  static constexpr std::uint32_t kPending = 0, kSleeping = 1, kWriting = 2, kDone = 3, kPhase = 3;
  static constexpr RequestError kWon = static_cast<RequestError>(0xff);

  struct EndOnStop {
    ReplySlot* slot;
    void operator()() const {
      try {
        slot->end_with(RequestError::cancelled, "the request was cancelled");
      } catch (...) {  // std::bad_alloc building the text: the waiter times out instead
      }
    }
  };

  // Stores `r` as the outcome if none was stored yet: returns kWon, or the error of the outcome
  // that had won (RequestError::none for a value).
  RequestError finish(Reply<Rep>&& r) {
    std::uint32_t s = state_.load(std::memory_order_acquire);
    const std::uint32_t claim = (static_cast<std::uint32_t>(r.error()) << 2) | kWriting;
    do {
      if ((s & kPhase) >= kWriting) return static_cast<RequestError>(s >> 2);
    } while (!state_.compare_exchange_weak(s, claim, std::memory_order_acq_rel));
    counters_->add(ServiceCounters::ended_as(r.error()));
    if (continuation_) {
      Continuation c = std::move(continuation_);
      state_.store((claim & ~kPhase) | kDone, std::memory_order_release);
      c(std::move(r));
      return kWon;
    }
    result_.emplace(std::move(r));
    state_.store((claim & ~kPhase) | kDone, std::memory_order_release);
    if ((s & kPhase) == kSleeping) futex_wake(state_, 1);
    return kWon;
  }

  ManyEnd unanswered_many() const noexcept {
    if (!replies_.empty()) return ManyEnd::all_answered;
    switch (unanswered_) {
      case RequestError::closed:
        return ManyEnd::closed;
      case RequestError::failed:
        return ManyEnd::failed;
      case RequestError::no_responders:
        return ManyEnd::no_responders;
      default:
        return ManyEnd::all_answered;
    }
  }

  static std::chrono::steady_clock::time_point saturating_add(
      std::chrono::steady_clock::time_point t, std::chrono::nanoseconds d) noexcept {
    const auto room = std::chrono::steady_clock::time_point::max() - t;
    return d >= room ? std::chrono::steady_clock::time_point::max() : t + d;
  }

  std::shared_ptr<ServiceCounters> counters_;
  const bool many_;
  std::atomic<int> holds_{1};  // the requester's, until it has published
  RequestError unanswered_ = RequestError::no_responders;
  std::string_view unanswered_text_;
  std::string unanswered_topic_;  // set only when nobody was subscribed
  // A plain request:
  std::atomic<std::uint32_t> state_{kPending};
  std::optional<Reply<Rep>> result_;
  Continuation continuation_;
  // request_many:
  std::mutex mutex_;
  std::condition_variable_any cv_;
  std::vector<Reply<Rep>> replies_;
  std::chrono::steady_clock::time_point last_reply_{};
  bool collecting_ = true;
  std::atomic<bool> collecting_flag_{true};
  bool all_done_ = false;
};

/// A hold on a slot, released when it goes (move-only).
template <class Rep>
class SlotHold {
 public:
  explicit SlotHold(std::shared_ptr<ReplySlot<Rep>> slot) noexcept : slot_(std::move(slot)) {}
  SlotHold(SlotHold&&) noexcept = default;
  SlotHold& operator=(SlotHold&& other) noexcept {
    if (this != &other) {
      release();
      slot_ = std::move(other.slot_);
    }
    return *this;
  }
  ~SlotHold() { release(); }
  [[nodiscard]] ReplySlot<Rep>* slot() const noexcept { return slot_.get(); }
  [[nodiscard]] const std::shared_ptr<ReplySlot<Rep>>& shared() const noexcept { return slot_; }
  void release() noexcept {
    if (!slot_) return;
    try {
      slot_->release_hold();
    } catch (...) {  // bad_alloc copying the unanswered text: the request times out instead
    }
    slot_.reset();
  }

 private:
  std::shared_ptr<ReplySlot<Rep>> slot_;
};

/// The payload of a request message: the request and the requester's slot.
template <class Req, class Rep>
struct RequestBody {
  Req value;
  mutable SlotHold<Rep> hold;  // mutable: the message is immutable, the hold is bookkeeping
  std::chrono::steady_clock::time_point deadline;
};

/// Ends a service's async requests at their deadlines, on one thread started with the first.
template <class Rep>
class TimeoutThread {
 public:
  TimeoutThread() = default;
  TimeoutThread(const TimeoutThread&) = delete;
  TimeoutThread& operator=(const TimeoutThread&) = delete;
  ~TimeoutThread() { stop(); }

  /// Ends `slot` with a timeout at `when` unless it has ended by then.
  /// Throws: std::bad_alloc, std::system_error (starting the thread).
  void add(std::chrono::steady_clock::time_point when,
           const std::shared_ptr<ReplySlot<Rep>>& slot) {
    std::unique_lock lock(mutex_);
    if (stopped_) {
      lock.unlock();
      slot->end_with(RequestError::closed, "the service is closed");
      return;
    }
    if (!thread_.joinable()) thread_ = std::jthread([this] { run(); });
    heap_.push(Entry{when, slot});
    if (heap_.top().slot.lock() == slot) cv_.notify_one();
  }

  /// Ends every pending request with `closed` and joins the thread. Idempotent.
  void stop() noexcept {
    std::unique_lock lock(mutex_);
    stopped_ = true;
    cv_.notify_one();
    std::jthread thread = std::move(thread_);  // one caller joins it, however many call stop()
    lock.unlock();
    if (thread.joinable()) thread.join();
    lock.lock();
    while (!heap_.empty())
      end_first(lock, RequestError::closed, "the service is closed");
  }

 private:
  struct Entry {
    std::chrono::steady_clock::time_point when;
    std::weak_ptr<ReplySlot<Rep>> slot;  // a request answered early lets its slot go
    bool operator>(const Entry& o) const noexcept { return when > o.when; }
  };

  void run() {
    std::unique_lock lock(mutex_);
    while (!stopped_) {
      if (heap_.empty()) {
        cv_.wait(lock);
        continue;
      }
      const auto when = heap_.top().when;
      if (std::chrono::steady_clock::now() < when) {
        cv_.wait_until(lock, when);
        continue;
      }
      end_first(lock, RequestError::timeout, "no reply within the timeout");
    }
  }

  // Takes the earliest entry and ends its request (if still alive) with `e`, unlocked meanwhile.
  void end_first(std::unique_lock<std::mutex>& lock, RequestError e, const char* text) {
    auto slot = heap_.top().slot.lock();
    heap_.pop();
    if (!slot) return;
    lock.unlock();
    try {
      slot->end_with(e, text);
    } catch (...) {  // bad_alloc building the reply: that request's waiter stays to its timeout
    }
    slot.reset();  // outside the lock: the last reference may run a continuation's cleanup
    lock.lock();
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<>> heap_;
  bool stopped_ = false;
  std::jthread thread_;
};

struct ServiceAccess;

}  // namespace detail

/// What a responder's handler sees of a request: reads like a Message<Req> (`*r`, `r->`,
/// `value()`, `topic()`, `headers()`). A view, valid during the handler call.
template <class Req>
class Request {
 public:
  [[nodiscard]] const Req& value() const noexcept { return *value_; }
  [[nodiscard]] const Req& operator*() const noexcept { return *value_; }
  [[nodiscard]] const Req* operator->() const noexcept { return value_; }
  /// The topic the request was sent to (a responder may serve a wildcard pattern).
  [[nodiscard]] const std::string& topic() const noexcept { return *topic_; }
  /// The headers the requester sent.
  [[nodiscard]] const Headers& headers() const noexcept { return *headers_; }
  /// When the requester stops waiting (time_point::max() for none).
  [[nodiscard]] std::chrono::steady_clock::time_point deadline() const noexcept {
    return deadline_;
  }

  Request(const Req& value, const std::string& topic, const Headers& headers,
          std::chrono::steady_clock::time_point deadline) noexcept
      : value_(&value), topic_(&topic), headers_(&headers), deadline_(deadline) {}

 private:
  const Req* value_;
  const std::string* topic_;
  const Headers* headers_;
  std::chrono::steady_clock::time_point deadline_;
};

/// Answers one request later, from any thread (for responders that reply asynchronously; see
/// Service::serve). Move-only; the first reply or failure counts. Destroying it unanswered
/// tells the requester at once if nobody else will answer (RequestError::no_responders).
template <class Rep>
class Replier {
 public:
  Replier(Replier&&) noexcept = default;
  Replier& operator=(Replier&&) noexcept = default;

  void reply(Rep value, Headers headers = {}) {
    answer(Reply<Rep>::success(std::move(value), std::move(headers)));
  }
  /// Fails the request with `error` (failed, no_responders, timeout, ...) and a text.
  void fail(RequestError error, std::string text, Headers headers = {}) {
    answer(Reply<Rep>::failure(error, std::move(text), std::move(headers)));
  }
  /// True when the requester no longer waits (timed out, cancelled).
  [[nodiscard]] bool abandoned() const noexcept {
    return hold_.slot() == nullptr || hold_.slot()->ended();
  }

  explicit Replier(const std::shared_ptr<detail::ReplySlot<Rep>>& slot) : hold_(slot) {
    slot->add_hold();
  }

 private:
  void answer(Reply<Rep>&& r) {
    if (auto* slot = hold_.slot()) {
      slot->answer(std::move(r));
      hold_.release();
    }
  }
  detail::SlotHold<Rep> hold_;
};

/// A responder: an RAII handle like HandlerSubscription. unsubscribe() is quiescent (when it
/// returns the handler is not running and will not run again) and lets go of the requests still
/// queued, so their requesters learn at once (no_responders, unless another responder answers);
/// stats(), close_reason() and pattern() keep what they were at that moment. Closed otherwise (a
/// stop request, the service closed), its queued requests go when the handle does.
template <class Req, class Rep>
class Responder {
 public:
  Responder() = default;
  void unsubscribe() noexcept {
    if (last_) return;  // done already
    sub_.unsubscribe();
    last_ = Last{sub_.stats(), sub_.close_reason()};
    sub_ = {};  // the handle's end releases what is queued
  }
  template <class R = std::int64_t, class P = std::nano>
  bool wait_idle(std::chrono::duration<R, P> timeout = std::chrono::duration<R, P>::max()) const {
    return sub_.wait_idle(timeout);
  }
  [[nodiscard]] bool is_open() const noexcept { return !last_ && sub_.is_open(); }
  [[nodiscard]] CloseReason close_reason() const noexcept {
    return last_ ? last_->reason : sub_.close_reason();
  }
  /// The queue and handler counters of its subscription (received = requests taken).
  [[nodiscard]] HandlerStats stats() const noexcept { return last_ ? last_->stats : sub_.stats(); }
  [[nodiscard]] const std::string& pattern() const noexcept { return pattern_; }

  /// Throws: std::bad_alloc (copying the pattern).
  explicit Responder(HandlerSubscription<detail::RequestBody<Req, Rep>> sub)
      : sub_(std::move(sub)), pattern_(sub_.pattern()) {}

 private:
  struct Last {
    HandlerStats stats;
    CloseReason reason;
  };
  HandlerSubscription<detail::RequestBody<Req, Rep>> sub_;
  std::string pattern_;
  std::optional<Last> last_;  // set by unsubscribe()
};

/// A handler that answers by returning: `Rep handler(const Request<Req>&)`.
template <class H, class Req, class Rep>
concept ReturningResponder = std::is_invocable_r_v < Rep,
        H&, const Request<Req>
& > ;
/// A handler that answers later through a Replier: `void handler(const Request<Req>&,
/// Replier<Rep>)`.
template <class H, class Req, class Rep>
concept DeferringResponder = std::is_invocable_v < H&,
        const Request<Req>
&, Replier < Rep >> ;

/// A typed request/reply bus: requests of type Req, replies of type Rep (a reply of another type
/// does not compile). Topics are NATS topics; responders serve patterns.
///
/// Thread-safety: every member function may be called concurrently, except the destructor.
/// Lifetime: no call may be in progress when the service is destroyed. Destroying it (or
/// close()) ends pending async requests with `closed`; Responder handles may outlive it.
/// A requester blocked in request() from inside a responder that runs on the same single-thread
/// executor as the responder it asks waits until its timeout: nothing else can run there.
template <class Req, class Rep>
class Service {
  static_assert(std::is_nothrow_destructible_v<Req>, "Req must be nothrow destructible");
  static_assert(std::is_move_constructible_v<Rep>, "Rep must be move constructible");

 public:
  using request_type = Req;
  using reply_type = Rep;

  Service() = default;
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;
  ~Service() { close(); }

  /// Serves `pattern` with `handler`, run by `executor` (a WorkerPool&, inline_executor,
  /// dedicated_thread or any Executor). `handler` is either `Rep(const Request<Req>&)` -- its
  /// return value is the reply, an exception it throws fails the request with the exception's
  /// text -- or `void(const Request<Req>&, Replier<Rep>)`, which answers through the Replier,
  /// now or later. A request whose requester has already given up is skipped (counted).
  /// Throws: InvalidTopic for an invalid pattern; std::invalid_argument for bad options.
  template <class Handler>
  requires(ReturningResponder<Handler, Req, Rep> || DeferringResponder<Handler, Req, Rep>)
      [[nodiscard]] Responder<Req, Rep> serve(std::string_view pattern, Handler handler,
                                              ExecutorRef executor, ServeOptions options = {},
                                              std::stop_token stop = {}) {
    SubscribeOptions sub{.capacity = options.capacity,
                         .overflow = options.overflow,
                         .queue_group = std::move(options.queue_group)};
    auto run = [h = std::move(handler), counters = counters_](const Message<Body>& m) mutable {
      ReplySlot* slot = m->hold.slot();
      if (slot == nullptr) return;
      if (slot->ended()) {
        counters->add(detail::ServiceCounters::skipped);
        return;
      }
      const Request<Req> request(m->value, m.topic(), m.headers(), m->deadline);
      if constexpr (DeferringResponder<Handler, Req, Rep>) {
        Replier<Rep> replier(m->hold.shared());
        try {
          h(request, std::move(replier));
        } catch (...) {
          // The handler threw before handing the Replier on (or after using it: then this
          // answer comes second and is only counted).
          slot->answer(Reply<Rep>::failure(RequestError::failed,
                                           detail::exception_text(std::current_exception())));
        }
      } else {
        try {
          slot->answer(Reply<Rep>::success(h(request)));
        } catch (...) {
          slot->answer(Reply<Rep>::failure(RequestError::failed,
                                           detail::exception_text(std::current_exception())));
        }
      }
    };
    return Responder<Req, Rep>(
        broker_.subscribe(pattern, std::move(run), executor, std::move(sub), std::move(stop)));
  }

  /// Sends `request` to `topic` and waits for the first reply, at most `timeout`, or until
  /// `stop` is stopped. Never throws for a request that fails: the Reply says why
  /// (no_responders comes back at once, without waiting for the timeout).
  /// Throws: InvalidTopic for an invalid topic; std::invalid_argument for a negative timeout;
  /// what copying Req throws.
  [[nodiscard]] Reply<Rep> request(std::string_view topic, Req request,
                                   std::chrono::nanoseconds timeout, std::stop_token stop = {}) {
    return this->request(topic, std::move(request), timeout, Headers{}, std::move(stop));
  }
  /// As above, sending `headers` with the request.
  [[nodiscard]] Reply<Rep> request(std::string_view topic, Req request,
                                   std::chrono::nanoseconds timeout, Headers headers,
                                   std::stop_token stop = {}) {
    check_timeout(timeout, "request");
    const auto deadline = detail::Deadline::after(timeout);
    if (stop.stop_requested()) return cancelled_now();
    auto slot = std::make_shared<ReplySlot>(counters_, false);
    send(topic, std::move(request), std::move(headers), slot, deadline.point());  // no 2nd read
    return slot->wait(deadline, stop);
  }

  /// As request(), without waiting: the future becomes ready with the outcome.
  [[nodiscard]] std::future<Reply<Rep>> request_async(std::string_view topic, Req request,
                                                      std::chrono::nanoseconds timeout,
                                                      Headers headers = {}) {
    auto promise = std::make_shared<std::promise<Reply<Rep>>>();
    auto future = promise->get_future();
    start_async(topic, std::move(request), timeout, std::move(headers),
                [promise](Reply<Rep>&& r) mutable { promise->set_value(std::move(r)); });
    return future;
  }

  /// As request(), without waiting: `callback(Reply<Rep>)` runs on `executor` with the outcome
  /// (inline_executor: on the thread that ended the request -- a responder, the timeout thread,
  /// or this one for no_responders). If the executor refuses the task (stopped), the callback
  /// runs on the thread that ended the request, so it always runs exactly once.
  /// Throws: std::invalid_argument for dedicated_thread (it has no thread to lend).
  template <class Callback>
  requires(std::invocable<Callback&, Reply<Rep>>) void request_async(
      std::string_view topic, Req request, std::chrono::nanoseconds timeout, ExecutorRef executor,
      Callback callback, Headers headers = {}) {
    if (executor.wants_own_thread()) {
      throw std::invalid_argument(
          "herald: Service::request_async cannot run a callback on dedicated_thread; pass a "
          "WorkerPool, inline_executor or another Executor");
    }
    start_async(topic, std::move(request), timeout, std::move(headers),
                [executor, cb = std::move(callback)](Reply<Rep>&& r) mutable {
                  auto run = std::make_shared<std::pair<Callback, std::optional<Reply<Rep>>>>(
                      std::move(cb), std::move(r));
                  bool accepted = false;
                  try {
                    accepted =
                        executor.execute(Task([run] { run->first(std::move(*run->second)); }));
                  } catch (...) {
                  }
                  if (!accepted) run->first(std::move(*run->second));
                });
  }

  /// Sends `request` to `topic` and collects every reply (scatter-gather) until `limits`
  /// says stop or every responder that received it is done; Replies::ended says which.
  /// Throws: InvalidTopic; std::invalid_argument for a timeout or stall <= 0.
  [[nodiscard]] Replies<Rep> request_many(std::string_view topic, Req request, RequestMany limits,
                                          Headers headers = {}, std::stop_token stop = {}) {
    if (limits.timeout <= std::chrono::nanoseconds::zero() ||
        limits.stall <= std::chrono::nanoseconds::zero()) {
      throw std::invalid_argument("herald: RequestMany timeout and stall must be > 0");
    }
    const auto start = std::chrono::steady_clock::now();
    if (stop.stop_requested()) {
      cancelled_now();
      return Replies<Rep>{{}, ManyEnd::cancelled};
    }
    auto slot = std::make_shared<ReplySlot>(counters_, true);
    send(topic, std::move(request), std::move(headers), slot,
         deadline_point(start, limits.timeout));
    Replies<Rep> out = slot->collect(limits, start, stop);
    counters_->add(out.empty() ? many_end_counter(out.ended) : detail::ServiceCounters::replied);
    return out;
  }

  /// Closes the service: responders stop taking requests (they still answer what they had
  /// queued), later requests end at once with `closed`, pending async requests end with
  /// `closed`. Idempotent.
  void close() noexcept {
    broker_.close();
    timeouts_.stop();
  }
  [[nodiscard]] bool is_closed() const noexcept { return broker_.is_closed(); }

  [[nodiscard]] ServiceStats stats() const noexcept {
    using F = detail::ServiceCounters;
    const auto& c = counters_->c;
    return ServiceStats{c.sum(F::requests),      c.sum(F::replied),  c.sum(F::failed),
                        c.sum(F::no_responders), c.sum(F::timeouts), c.sum(F::cancelled),
                        c.sum(F::closed),        c.sum(F::late),     c.sum(F::extra),
                        c.sum(F::skipped)};
  }

 private:
  friend struct detail::ServiceAccess;
  using Body = detail::RequestBody<Req, Rep>;
  using ReplySlot = detail::ReplySlot<Rep>;

  static void check_timeout(std::chrono::nanoseconds timeout, const char* what) {
    if (timeout < std::chrono::nanoseconds::zero()) {
      throw std::invalid_argument(std::string("herald: Service::") + what +
                                  " timeout is negative (" + std::to_string(timeout.count()) +
                                  " ns)");
    }
  }

  // `timeout` after `now`, saturated at time_point::max().
  static std::chrono::steady_clock::time_point deadline_point(
      std::chrono::steady_clock::time_point now, std::chrono::nanoseconds timeout) {
    const auto room = std::chrono::steady_clock::time_point::max() - now;
    return timeout >= room ? std::chrono::steady_clock::time_point::max() : now + timeout;
  }

  static detail::ServiceCounters::Field many_end_counter(ManyEnd e) noexcept {
    using F = detail::ServiceCounters;
    switch (e) {
      case ManyEnd::no_responders:
      case ManyEnd::all_answered:
        return F::no_responders;
      case ManyEnd::failed:
        return F::failed;
      case ManyEnd::cancelled:
        return F::cancelled;
      case ManyEnd::closed:
        return F::closed;
      default:
        return F::timeouts;
    }
  }

  Reply<Rep> cancelled_now() {
    counters_->add(detail::ServiceCounters::requests);
    counters_->add(detail::ServiceCounters::cancelled);
    return Reply<Rep>::failure(RequestError::cancelled, "the request was cancelled");
  }

  // Publishes the request carrying a hold on `slot`, then tells the slot what an unanswered end
  // means and lets go of the requester's own hold.
  void send(std::string_view topic, Req&& request, Headers&& headers,
            const std::shared_ptr<ReplySlot>& slot,
            std::chrono::steady_clock::time_point deadline) {
    detail::SlotHold<Rep> requester(slot);  // released last, whatever happens below
    slot->add_hold();                       // the payload's
    PublishResult r;
    try {
      r = broker_.publish(topic, Body{std::move(request), detail::SlotHold<Rep>(slot), deadline},
                          PublishOptions{.headers = std::move(headers)});
    } catch (...) {
      slot->discard();  // the caller gets the exception; the request never existed
      throw;
    }
    counters_->add(detail::ServiceCounters::requests);
    if (r.closed) {
      slot->set_unanswered(RequestError::closed, "the service is closed");
    } else if (r.matched == 0) {
      slot->set_unanswered(RequestError::no_responders, {}, topic);
    } else if (r.delivered == 0) {
      slot->set_unanswered(RequestError::failed,
                           "every responder's queue was full; the request was dropped");
    } else {
      slot->set_unanswered(RequestError::no_responders,
                           "every responder that received the request went away unanswered");
    }
  }

  template <class Continuation>
  void start_async(std::string_view topic, Req&& request, std::chrono::nanoseconds timeout,
                   Headers&& headers, Continuation&& continuation) {
    check_timeout(timeout, "request_async");
    // Not make_shared: the timeout thread's weak reference must not keep the slot's memory.
    std::shared_ptr<ReplySlot> slot(new ReplySlot(counters_, false));
    slot->set_continuation(typename ReplySlot::Continuation(std::move(continuation)));
    const auto deadline = deadline_point(std::chrono::steady_clock::now(), timeout);
    send(topic, std::move(request), std::move(headers), slot, deadline);
    if (!slot->ended()) timeouts_.add(deadline, slot);
  }

  std::shared_ptr<detail::ServiceCounters> counters_ = std::make_shared<detail::ServiceCounters>();
  Broker<Body> broker_;
  detail::TimeoutThread<Rep> timeouts_;
};

namespace detail {
/// What a bridge needs beyond the public interface: the broker that carries the requests.
struct ServiceAccess {
  template <class Req, class Rep>
  static Broker<RequestBody<Req, Rep>>& broker(Service<Req, Rep>& s) noexcept {
    return s.broker_;
  }
};
}  // namespace detail

}  // namespace herald
