// What a handler subscription is: a subscription (subscription_state.hpp) whose queue is drained
// by a strand posted to an executor (executor.hpp) -- at most one invocation at a time, in
// publish order; a quiescent unsubscribe; retries with backoff and dead letters; a circuit
// breaker in front of the handler and deduplication of what it handled.
//
// Retries do not hold a thread: a failed message goes to a timer of the executor
// (ExecutorRef::schedule_at) for its backoff, and the strand is free meanwhile. When the timer
// fires, the message joins `ready_` and the strand runs it before anything else. What later
// messages do meanwhile is HandlerOptions::ordering: strict keeps the strand held (nothing else
// of this subscription runs; the timer resumes it), per_key holds the later messages of the
// same key aside, none lets them go ahead. A message the circuit breaker refuses under
// WhenOpen::wait waits on a timer the same way, and whatever the ordering the whole
// subscription waits for the breaker (strict holds the strand; the others take no queued
// message meanwhile, see held_back). Only HandlerOptions::sleep (a test hook) makes
// these waits happen on the strand's thread, as they all did before timers existed.
#pragma once

#include <herald/dedup_window.hpp>
#include <herald/detail/backoff.hpp>
#include <herald/detail/cache_line.hpp>
#include <herald/detail/counters.hpp>
#include <herald/detail/error_text.hpp>
#include <herald/detail/hashing.hpp>
#include <herald/detail/parking.hpp>
#include <herald/detail/unique_function.hpp>
#include <herald/executor.hpp>
#include <herald/message.hpp>
#include <herald/policy.hpp>
#include <herald/stats.hpp>
#include <herald/subscription_state.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <stop_token>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace herald {

/// What a handler subscription accepts as its handler: callable as `h(const Message<T>&)`.
// In parentheses: clang-format 14 splits a bare `std::invocable<H&, const Message<T>&>` apart.
template <class H, class T>
concept MessageHandler = (std::invocable<H&, const Message<T>&>);

/// What a batch handler subscription accepts: callable as `h(std::span<const Message<T>>)` (and
/// not as a per-message handler).
template <class H, class T>
concept BatchHandler = (std::invocable<H&, std::span<const Message<T>>> &&
                        !std::invocable<H&, const Message<T>&>);

namespace detail {

/// The handler invocations running on this thread, innermost first: an inline handler may
/// publish to another inline one, which may unsubscribe a handler further up the same stack.
/// Such an unsubscribe must not wait for an invocation that can only finish after it returns.
struct RunningHandler {
  const void* state;
  const RunningHandler* outer;
};
inline thread_local const RunningHandler* running_handlers = nullptr;

/// True when this thread is inside an invocation of `state`'s handler, at any depth.
inline bool running_on_this_thread(const void* state) noexcept {
  for (const RunningHandler* r = running_handlers; r != nullptr; r = r->outer) {
    if (r->state == state) return true;
  }
  return false;
}

template <class T>
class HandlerState final : public SubscriptionState<T>,
                           public ExecutorListener,
                           public std::enable_shared_from_this<HandlerState<T>> {
 public:
  using Handler = UniqueFunction<void(const Message<T>&)>;
  using BatchFn = UniqueFunction<void(std::span<const Message<T>>)>;

  /// A batch handler subscription (see BatchOptions).
  /// Throws: as the other constructor; std::invalid_argument for an option batches do not take.
  HandlerState(std::string pattern, SubscribeOptions options, BatchFn handler, ExecutorRef executor,
               HandlerOptions<T> handler_options)
      : HandlerState(std::move(pattern), std::move(options), Handler(), std::move(executor),
                     batch_checked(std::move(handler_options))) {
    batch_handler_ = std::move(handler);
    batch_mode_ = true;
    batch_.reserve(hopts_.batch.max_size);
  }

  /// Throws: std::invalid_argument for an option out of range (SubscribeOptions, RetryPolicy);
  /// std::system_error when dedicated_thread cannot start one; std::bad_alloc.
  HandlerState(std::string pattern, SubscribeOptions options, Handler handler, ExecutorRef executor,
               HandlerOptions<T> handler_options)
      : SubscriptionState<T>(std::move(pattern), std::move(options)),
        handler_(std::move(handler)),
        executor_(std::move(executor)),
        hopts_(validated(std::move(handler_options))),
        backoff_(hopts_.retry.initial_backoff, hopts_.retry.max_backoff, std::random_device{}()),
        timed_retries_(!hopts_.sleep),
        plain_first_attempt_(!hopts_.dedup.key && !hopts_.breaker &&
                             hopts_.ordering != Ordering::per_key) {
    if (hopts_.dedup.key) {
      // The strand is its only user: one shard, whose lock is never contended.
      handled_ = std::make_unique<DedupWindow<std::uint64_t>>(
          hopts_.dedup.max_count, hopts_.dedup.max_age, DedupWindowOptions{.shards = 1});
    }
    if (hopts_.concurrency > 1) make_lanes(executor_);
    if (executor_.wants_own_thread()) {
      own_thread_ = std::make_unique<ThreadExecutor>();
      executor_ = ExecutorRef(*own_thread_);
    }
  }

  /// Asks the executor to say when it stops accepting work (see executor_stopped). Called once
  /// the state is owned by a shared_ptr, before it is registered.
  /// Throws: std::bad_alloc.
  void attach() override {
    executor_.watch(this->weak_from_this());
    for (const auto& lane : lanes_) {
      lane->dispatcher_ = this->weak_from_this();
      lane->attach();
    }
  }

  /// The executor stopped accepting work (a WorkerPool was shut down or destroyed): close, so
  /// that publishers are refused from now on instead of queueing messages nothing would run.
  /// What was queued before still runs if the executor runs the strand's pending task (a
  /// shutting-down WorkerPool does); wait_idle() tells.
  void executor_stopped() noexcept override {
    this->close_and_leave(CloseReason::executor_stopped);
  }

  /// Waits until every message delivered before the call has been handled (or evicted by
  /// drop_oldest). False when `deadline` passes first, when the subscription is unsubscribed with
  /// messages unhandled, or when called from inside this subscription's own handler.
  bool wait_idle(const Deadline& deadline) noexcept {
    if (running_on_this_thread(this)) return false;  // it would wait for itself
    for (const auto& lane : lanes_) {
      if (running_on_this_thread(lane.get())) return false;
    }
    const std::uint64_t target = this->stats().delivered;
    for (;;) {
      // With lanes, "finished" is "handed to a lane" here; then each lane is waited for.
      const std::uint64_t seen = finished_.get(std::memory_order_seq_cst);
      if (seen + this->stats().evicted >= target) break;
      if (cancelled() || stranded()) return false;
      // Waiters of different targets share `idle_`, so each waits for "finished_ moved", which
      // every notifier's change satisfies (see the protocol in detail/parking.hpp).
      const auto moved = [&] {
        return finished_.get(std::memory_order_seq_cst) != seen || cancelled() || stranded();
      };
      if (wait_until(idle_, moved, deadline) == WaitStatus::timeout) return false;
    }
    for (const auto& lane : lanes_) {
      if (!lane->wait_idle(deadline)) return false;
    }
    return true;
  }

  /// Waits until no invocation runs and none will start. From inside the handler: returns at
  /// once, and no further invocation starts.
  void quiesce() noexcept override {
    cancelled_.store(true, std::memory_order_seq_cst);
    // The retries waiting on timers: each timer's task is destroyed unrun, which counts it in
    // retries_cancelled (RetryTimer). A timer already firing sees `cancelled_` (retry_due).
    retry_stop_.request_stop();
    drop_ready();
    cancel_.wake_all();  // cut a backoff wait short
    idle_.wake_all();    // wait_idle returns false now
    if (running_on_this_thread(this)) {
      if (own_thread_) own_thread_->stop();  // we run on it: it exits once we return
      return;
    }
    // Dekker with run_one(): it announces `in_handler_` then checks `cancelled_`; we set
    // `cancelled_` then check `in_handler_`. seq_cst on all four: one of us sees the other.
    wait_until(quiet_, [&] { return in_handler_.load(std::memory_order_seq_cst) == 0; });
    // The dispatcher is quiet: no lane gets another message. Then each lane quiesces (from
    // inside one lane's handler that one returns at once, as above).
    for (const auto& lane : lanes_) {
      lane->close(CloseReason::unsubscribed);
      lane->quiesce();
    }
    if (own_thread_) own_thread_->stop();
  }

  /// After the last handle: what is queued is let go (SubscriptionState::release), and so are
  /// the handler with its captures and the share of the breaker, unless this thread is inside
  /// the handler (then they go with the state).
  void release() noexcept override {
    SubscriptionState<T>::release();
    for (const auto& lane : lanes_)
      lane->release();
    if (running_on_this_thread(this)) return;  // then they go with the state
    // Quiesced: never called again. The breaker's share goes too (it may be the last one).
    handler_ = nullptr;
    batch_handler_ = nullptr;
    batch_.clear();  // a partial batch goes with what was queued
    hopts_.breaker = nullptr;
  }

  [[nodiscard]] SubscriptionKind kind() const noexcept override {
    return SubscriptionKind::handler;
  }

  [[nodiscard]] HandlerCounters handler_counters() const noexcept override {
    HandlerCounters c;
    c.invocations = invocations_.get();
    c.failures = failures_.get();
    c.retries = retries_.get();
    c.dead_lettered = dead_lettered_.get();
    c.breaker_refused = breaker_refused_.get();
    c.breaker_dead_lettered = breaker_dead_lettered_.get();
    c.deduplicated = deduplicated_.get();
    c.retries_pending = retries_pending_.load(std::memory_order_relaxed);
    c.retries_cancelled = retries_cancelled_.load(std::memory_order_relaxed);
    c.rate_limited = rate_limited_.load(std::memory_order_relaxed);
    // Two runs overlap only while one finishes after handing its strand to a timer (see
    // enter_handler): one strand.
    c.in_flight = std::min<std::uint32_t>(in_handler_.load(std::memory_order_relaxed), 1);
    c.handler_time_total = std::chrono::nanoseconds(time_total_.get());
    c.handler_time_max = std::chrono::nanoseconds(time_max_.get());
    for (const auto& lane : lanes_) {
      const HandlerCounters l = lane->handler_counters();
      c.invocations += l.invocations;
      c.failures += l.failures;
      c.retries += l.retries;
      c.dead_lettered += l.dead_lettered;
      c.breaker_refused += l.breaker_refused;
      c.breaker_dead_lettered += l.breaker_dead_lettered;
      c.deduplicated += l.deduplicated;
      c.retries_pending += l.retries_pending;
      c.retries_cancelled += l.retries_cancelled;
      c.rate_limited += l.rate_limited;
      c.in_flight += l.in_flight;
      c.handler_time_total += l.handler_time_total;
      c.handler_time_max = std::max(c.handler_time_max, l.handler_time_max);
    }
    return c;
  }

  [[nodiscard]] DurationHistogram handler_durations() const noexcept override {
    DurationHistogram h;
    for (std::size_t i = 0; i < DurationHistogram::buckets; ++i)
      h.counts[i] = durations_[i].get();
    h.sum = std::chrono::nanoseconds(time_total_.get());
    for (const auto& lane : lanes_) {
      const DurationHistogram l = lane->handler_durations();
      for (std::size_t i = 0; i < DurationHistogram::buckets; ++i)
        h.counts[i] += l.counts[i];
      h.sum += l.sum;
    }
    return h;
  }

  [[nodiscard]] HandlerStats handler_stats() const noexcept {
    HandlerStats s;
    static_cast<SubscriptionStats&>(s) = this->stats();
    static_cast<HandlerCounters&>(s) = handler_counters();
    return s;
  }

 protected:
  void after_enqueue() noexcept override {
    // Held already (the common case under load): a load, no read-modify-write. The load is
    // seq_cst, after the push's seq_cst CAS: if it reads `true`, the holder's later release
    // (store false, fence, look at the queue) is bound to see this message.
    if (scheduled_.load(std::memory_order_seq_cst)) return;
    if (scheduled_.exchange(true, std::memory_order_seq_cst)) return;
    if (executor_.runs_inline()) {
      drain(SIZE_MAX);  // nothing to yield to: the publisher's thread is the executor
    } else {
      post();
    }
  }

 private:
  // Messages run per posted task before the task yields the executor to other work.
  static constexpr std::size_t kBatch = 64;

  // Hands the strand to the executor. Only the holder of `scheduled_` calls this.
  void post() noexcept {
    try {
      const Priority priority = this->options().priority;
      Task task([self = this->shared_from_this()] { self->drain(kBatch); });
      if (executor_.try_execute(task, priority)) return;
      if (task && executor_.running_in_this_thread()) {
        drain(kBatch);  // a task must not wait for room that only its own executor can make
        return;
      }
      if (task && executor_.execute(std::move(task), priority)) return;
    } catch (...) {  // the executor threw: treat as refused
    }
    // Refused: the executor is shut down (or gone) and nothing will run this strand again. Say
    // so rather than keep accepting messages nobody handles: close, leave the routes, wake
    // wait_idle(). What is queued stays counted in queue_depth.
    stranded_.store(true, std::memory_order_seq_cst);
    scheduled_.store(false, std::memory_order_seq_cst);
    this->close_and_leave(CloseReason::executor_stopped);
    idle_.wake_all();
  }

  // Runs queued messages in order, at most `budget` before handing the strand back. Only the
  // holder of `scheduled_` runs this, so invocations never overlap.
  void drain(std::size_t budget) noexcept {
    for (;;) {
      const Batch b = run_batch(budget);
      if (is_lane_ && b.taken != 0) room_made();
      if (b.suspended) return;  // a strict retry waits: its timer holds the strand
      if (b.taken == budget && !cancelled()) {
        post();  // fairness: let the executor's other work run, keep the strand scheduled
        return;
      }
      scheduled_.store(false, std::memory_order_seq_cst);
      // A publisher that enqueued after our last try_pop saw `scheduled_` set and left the
      // message to us (and so did a retry whose timer fired): look again, and take the strand
      // back if nobody else did.
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (cancelled() || !runnable()) return;
      if (scheduled_.exchange(true, std::memory_order_seq_cst)) return;
    }
  }

  // Budget of one drain run on the executor (inline: all, there is nothing to yield to).
  std::size_t budget() const noexcept { return executor_.runs_inline() ? SIZE_MAX : kBatch; }

  // Whether the strand has something it may run now: a retry whose time came, or a queued
  // message while the retries waiting do not hold the queue back. Read after the strand was
  // released: the counts are only raised by a later holder, which re-checks itself.
  bool runnable() noexcept {
    if (flush_request_.load(std::memory_order_seq_cst) != 0) return true;
    if (!lanes_.empty()) {
      return this->queue().approx_size() != 0 && !stalled_flag_.load(std::memory_order_seq_cst);
    }
    if (ready_count_.load(std::memory_order_seq_cst) != 0) return true;
    return this->queue().approx_size() != 0 && !held_back();
  }

  // Whether the queue must not be drained now. While a message waits on a timer for the breaker
  // (WhenOpen::wait) no queued message is taken, whatever the ordering (strict holds the strand
  // anyway); retries that come due still run, and ask the breaker too. Retries and messages held
  // aside (per_key) are bounded by the queue's capacity: past that, the queue stops being
  // drained and its overflow policy applies.
  bool held_back() noexcept {
    if (breaker_waits_.load(std::memory_order_seq_cst) != 0) return true;
    return retries_pending_.load(std::memory_order_relaxed) +
               held_count_.load(std::memory_order_relaxed) >=
           this->queue().capacity();
  }

  bool cancelled() const noexcept { return cancelled_.load(std::memory_order_seq_cst); }
  bool stranded() const noexcept { return stranded_.load(std::memory_order_seq_cst); }

  // What run_batch did: how many messages (or retries) it took, and whether it stopped because
  // a strict retry now waits on its timer (the strand then stays held; the timer resumes it).
  struct Batch {
    std::size_t taken;
    bool suspended;
  };

  // Handles up to `budget` retries that came due and queued messages, in order, and says how
  // many. The strand announces itself (in_handler_) once for the batch and checks the
  // cancellation before taking each message: a quiesce() either waits for the message being
  // handled or is seen before the next one is taken, so a message taken off the queue is always
  // handled (or held, or scheduled for a retry that the quiesce then cancels).
  // Dekker with quiesce(): we announce `in_handler_` then check `cancelled_`; it sets
  // `cancelled_` then checks `in_handler_`. seq_cst on all four: one of us sees the other.
  Batch run_batch(std::size_t budget) noexcept {
    if (!lanes_.empty()) return dispatch(budget);
    // Not batch_handler_ itself: release() empties it, and a drain task posted before an
    // unsubscribe may still run (it finds the subscription cancelled).
    if (batch_mode_) return run_batches(budget);
    enter_handler();
    const RunningHandler frame{this, running_handlers};
    running_handlers = &frame;
    Batch b{0, false};
    mark_ = std::chrono::steady_clock::now();
    const bool strict = hopts_.ordering == Ordering::strict;
    while (b.taken < budget && !cancelled()) {
      if (std::optional<Retry> r = take_ready()) {
        ++b.taken;
        if (!retry_now(std::move(*r)) && strict) {
          b.suspended = true;
          break;
        }
        continue;
      }
      if (timed_retries_ && held_back()) break;
      if (hopts_.rate && this->queue().approx_size() != 0 && !token()) {
        b.suspended = true;  // a timer resumes the strand when the next token is due
        break;
      }
      std::optional<Message<T>> m = pop_live(b, budget);
      if (!m) break;
      if (!timed_retries_) {
        handle(*m);
        done();
        continue;
      }
      if (!first_attempt(std::move(*m)) && strict) {
        b.suspended = true;
        break;
      }
    }
    running_handlers = frame.outer;
    if (b.taken != 0) {
      // finished_ before the event count's state, as the protocol of detail/parking.hpp wants
      // of a notifier (a plain store made visible by the fence); one notify per batch.
      std::atomic_thread_fence(std::memory_order_seq_cst);
      idle_.notify_all();  // a load, no syscall, unless wait_idle() is parked
    }
    leave_handler();
    return b;
  }

  // A message is done with (handled, skipped, dead-lettered or given up). The strand is the
  // only writer: no locked instruction. Release, so that wait_idle()'s load of the count also
  // sees what the handler did (its contract: "handled").
  void done() noexcept { finished_.add_release(1); }

  // The next queued message to hand on, taken within `budget` (counted in `b`, and as taken for
  // the lag). Expired ones (SubscribeOptions::max_age) are discarded on the way, counted in
  // `expired` and as done for wait_idle(); they need no cancellation check, nothing runs for
  // them. Empty when the queue is, or the budget is spent.
  std::optional<Message<T>> pop_live(Batch& b, std::size_t budget) noexcept {
    while (b.taken < budget) {
      std::optional<Message<T>> m = this->queue().try_pop();
      if (!m) return m;
      this->taken(*m);
      ++b.taken;
      if (!this->expired(*m)) return m;
      done();
    }
    return std::nullopt;
  }

  // --- batches (a BatchHandler) ---------------------------------------------------------------
  //
  // The strand collects messages in `batch_` and calls the handler once it holds max_size, or
  // once the first of them was published max_wait ago: a timer of the executor (one per
  // partial batch, tagged with the batch's number) asks for that flush; a timer for a batch
  // already flushed by size finds another number and does nothing.

  static HandlerOptions<T> batch_checked(HandlerOptions<T> o) {
    const auto fail = [](const std::string& what) {
      throw std::invalid_argument("herald: HandlerOptions::" + what +
                                  " is not supported with a batch handler");
    };
    if (o.retry.max_attempts != 1) fail("retry.max_attempts > 1");
    if (o.concurrency != 1) fail("concurrency > 1");
    if (o.breaker) fail("breaker");
    if (o.dedup.key) fail("dedup");
    if (o.ordering == Ordering::per_key) fail("ordering = per_key");
    if (o.rate) fail("rate");
    return o;
  }

  Batch run_batches(std::size_t budget) noexcept {
    enter_handler();
    const RunningHandler frame{this, running_handlers};
    running_handlers = &frame;
    Batch b{0, false};
    const std::uint64_t finished_before = finished_.get();
    // cancelled() first: once it is seen false, a quiesce() waits for this run before
    // release() may empty batch_.
    if (!cancelled() &&
        flush_request_.exchange(0, std::memory_order_seq_cst) == batch_number_ + 1 &&
        !batch_.empty())
      flush();
    while (b.taken < budget && !cancelled()) {
      std::optional<Message<T>> m = pop_live(b, budget);
      if (!m) break;
      batch_.push_back(std::move(*m));  // reserved: no allocation
      if (batch_.size() >= hopts_.batch.max_size) flush();
    }
    if (!cancelled() && !batch_.empty()) {
      const auto due = batch_.front().published_at() + hopts_.batch.max_wait;
      if (due <= std::chrono::steady_clock::now()) {
        flush();
      } else if (!flush_timer_) {
        flush_timer_ = true;
        try {
          executor_.schedule_at(due, Task([self = this->shared_from_this(), n = batch_number_] {
                                  self->flush_due(n);
                                }),
                                retry_stop_.get_token(), this->shared_from_this());
        } catch (...) {  // no timer: the next message or batch flushes it
          flush_timer_ = false;
        }
      }
    }
    running_handlers = frame.outer;
    // A flush asked for by the timer finishes messages taken in an earlier run: wake wait_idle()
    // whenever messages were finished, not only when some were taken.
    if (b.taken != 0 || finished_.get() != finished_before) {
      std::atomic_thread_fence(std::memory_order_seq_cst);
      idle_.notify_all();
    }
    leave_handler();
    return b;
  }

  // Calls the batch handler with what was collected; a throw counts once and dead-letters each.
  void flush() noexcept {
    const auto start = std::chrono::steady_clock::now();
    std::exception_ptr error;
    try {
      batch_handler_(std::span<const Message<T>>(batch_.data(), batch_.size()));
    } catch (...) {
      error = std::current_exception();
    }
    const auto ns = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                   std::chrono::steady_clock::now() - start)
                                                   .count());
    invocations_.add();
    time_total_.add(ns);
    time_max_.raise(ns);
    durations_[DurationHistogram::bucket_of(ns)].add();
    if (error) {
      failures_.add();
      for (const Message<T>& m : batch_) {
        report_error(m, error);
        dead_letter(m, error, 1);
      }
    }
    for (std::size_t i = 0; i < batch_.size(); ++i)
      done();
    batch_.clear();
    ++batch_number_;
    flush_timer_ = false;  // a pending one belongs to the batch just flushed
  }

  // On the executor, when a partial batch's max_wait has passed.
  void flush_due(std::uint64_t number) noexcept {
    // Never lower it: two timers firing on two workers may run this out of order, and the one
    // for an older batch must not hide the request for the current one.
    std::uint64_t r = flush_request_.load(std::memory_order_seq_cst);
    while (r < number + 1 &&
           !flush_request_.compare_exchange_weak(r, number + 1, std::memory_order_seq_cst)) {
    }
    if (scheduled_.load(std::memory_order_seq_cst)) return;
    if (scheduled_.exchange(true, std::memory_order_seq_cst)) return;
    drain(budget());
  }

  // --- lanes (HandlerOptions::concurrency > 1) -------------------------------------------------
  //
  // The subscription's own strand becomes a dispatcher: it takes messages out of the queue in
  // order and hands each to one of `concurrency` lanes -- the lane of hash(key) when there is a
  // key (so one key's messages stay in order), else the next in turn. A lane is a handler
  // subscription of its own (same handler, shared; same options), not registered anywhere: its
  // strand runs its messages one at a time, in order, with retries, breaker and dedup as usual,
  // while the lanes run in parallel on the executor. A lane's queue holds `capacity` messages;
  // when the one a message needs is full, the dispatcher keeps that message (`stalled_`),
  // raises `stalled_flag_` and lets the strand go; the lane, after its next batch, sees the flag
  // and takes the dispatcher back (room_made). The subscription's queue meanwhile fills up under
  // its overflow policy.

  void make_lanes(const ExecutorRef& executor) {
    auto shared = std::make_shared<Handler>(std::move(handler_));
    HandlerOptions<T> lane_options = hopts_;
    lane_options.concurrency = 1;
    SubscribeOptions lane_sub = this->options();
    lane_sub.queue_group.clear();
    lane_sub.max_age = std::chrono::nanoseconds::max();  // checked once, by the dispatcher
    lanes_.reserve(hopts_.concurrency);
    for (std::size_t i = 0; i < hopts_.concurrency; ++i) {
      lanes_.push_back(std::make_shared<HandlerState>(
          this->pattern(), lane_sub, Handler([shared](const Message<T>& m) { (*shared)(m); }),
          executor, lane_options));
      lanes_.back()->is_lane_ = true;
    }
  }

  std::size_t lane_of(const Message<T>& m) noexcept {
    if (!hopts_.key) {
      if (++next_lane_ == lanes_.size()) next_lane_ = 0;
      return next_lane_;
    }
    return static_cast<std::size_t>(mix64(order_key(m)) % lanes_.size());
  }

  // The dispatcher's batch: hands up to `budget` queued messages to their lanes, in order.
  Batch dispatch(std::size_t budget) noexcept {
    enter_handler();
    Batch b{0, false};
    if (stalled_) {
      if (!lanes_[stalled_lane_]->try_offer(std::move(*stalled_))) {
        leave_handler();
        return b;  // still full: the lane takes us back when it has made room
      }
      stalled_.reset();
      stalled_flag_.store(false, std::memory_order_seq_cst);
      done();
      ++b.taken;
    }
    while (b.taken < budget && !cancelled()) {
      std::optional<Message<T>> m = pop_live(b, budget);
      if (!m) break;
      const std::size_t lane = lane_of(*m);
      if (lanes_[lane]->try_offer(std::move(*m))) {  // moved from only when it succeeds
        done();
        continue;
      }
      // Full: keep it, raise the flag, and look again (Dekker with room_made(): the lane pops,
      // then reads the flag; we raise the flag, then push again).
      stalled_.emplace(std::move(*m));
      stalled_lane_ = lane;
      stalled_flag_.store(true, std::memory_order_seq_cst);
      if (!lanes_[lane]->try_offer(std::move(*stalled_))) break;
      stalled_.reset();
      stalled_flag_.store(false, std::memory_order_seq_cst);
      done();
    }
    if (b.taken != 0) {
      std::atomic_thread_fence(std::memory_order_seq_cst);
      idle_.notify_all();
    }
    leave_handler();
    return b;
  }

  // A lane took messages out of its queue: if the dispatcher waits for room, take it back.
  void room_made() noexcept {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const std::shared_ptr<HandlerState> d = dispatcher_.lock();
    if (!d || !d->stalled_flag_.load(std::memory_order_seq_cst)) return;
    if (d->scheduled_.load(std::memory_order_seq_cst)) return;
    if (d->scheduled_.exchange(true, std::memory_order_seq_cst)) return;
    d->post();
  }

  // --- rate (HandlerOptions::rate) -----------------------------------------------------------

  // Takes a token for the next message; without one, keeps the strand and sets a timer for when
  // the next is due (false). A limiter that throws lets the message through.
  bool token() noexcept {
    std::chrono::nanoseconds wait{};
    try {
      if (hopts_.rate.try_acquire()) return true;
      wait = hopts_.rate.time_until_available();
    } catch (...) {
      return true;
    }
    rate_limited_.fetch_add(1, std::memory_order_relaxed);
    try {
      executor_.schedule_at(std::chrono::steady_clock::now() + wait,
                            Task(ResumeTimer(this->shared_from_this())), retry_stop_.get_token(),
                            this->shared_from_this());
    } catch (...) {  // no memory for a timer: ResumeTimer, if it was made, stranded us
    }
    return false;
  }

  // Resumes a strand held for a token; destroyed unrun (a shutdown) while the subscription is
  // still wanted, it says the subscription is stranded.
  class ResumeTimer {
   public:
    explicit ResumeTimer(std::shared_ptr<HandlerState> self) noexcept : self_(std::move(self)) {}
    ResumeTimer(ResumeTimer&& o) noexcept : self_(std::move(o.self_)) {}
    ResumeTimer& operator=(ResumeTimer&&) = delete;
    ~ResumeTimer() {
      if (self_ && !self_->cancelled()) {
        self_->stranded_.store(true, std::memory_order_seq_cst);
        self_->close_and_leave(CloseReason::executor_stopped);
        self_->idle_.wake_all();
      }
    }
    void operator()() {
      const std::shared_ptr<HandlerState> s = std::move(self_);
      s->drain(s->budget());  // the strand is held for us
    }

   private:
    std::shared_ptr<HandlerState> self_;
  };

  // --- timed retries -------------------------------------------------------------------------

  // A failed message waiting for its next attempt, or (breaker_wait) a message waiting to ask
  // the breaker again for the attempt it was refused.
  struct Retry {
    Message<T> message;
    std::uint32_t attempts = 0;           // made so far
    std::chrono::nanoseconds previous{};  // the last backoff: decorrelated jitter's state
    std::optional<std::uint64_t> dedup_key;
    std::uint64_t order_key = 0;  // Ordering::per_key
    bool breaker_wait = false;    // not a retry: counted in breaker_waits_, not as a retry
  };

  // The timer's task: hands the retry back to the strand when it fires; destroyed unrun
  // (cancelled by an unsubscribe, abandoned by a shutdown, refused), it counts the retry as
  // cancelled.
  class RetryTimer {
   public:
    RetryTimer(std::shared_ptr<HandlerState> self, Retry&& r) noexcept
        : self_(std::move(self)), retry_(std::move(r)) {}
    RetryTimer(RetryTimer&& o) noexcept : self_(std::move(o.self_)), retry_(std::move(o.retry_)) {
      o.retry_.reset();
    }
    RetryTimer& operator=(RetryTimer&&) = delete;
    ~RetryTimer() {
      if (retry_ && self_) self_->retry_dropped(retry_->breaker_wait);
    }
    void operator()() {
      Retry r = std::move(*retry_);
      retry_.reset();
      self_->retry_due(std::move(r));
    }

   private:
    std::shared_ptr<HandlerState> self_;
    std::optional<Retry> retry_;
  };

  // A message fresh from the queue: held aside if its key waits for a retry (per_key), else
  // its first attempt. False when it now waits for a retry.
  bool first_attempt(Message<T>&& m) noexcept {
    if (plain_first_attempt_) {  // nothing to check before the call, and success needs no Retry
      if (std::exception_ptr error = call(m)) {
        Retry r{std::move(m), 1, backoff_.initial(), std::nullopt, 0};
        if (!after_failure(r, std::move(error))) return false;
      }
      done();
      return true;
    }
    Retry r{std::move(m), 0, backoff_.initial(), std::nullopt, 0};
    if (hopts_.ordering == Ordering::per_key) {
      r.order_key = order_key(r.message);
      if (const auto it = held_.find(r.order_key); it != held_.end()) {
        try {
          it->second.push_back(std::move(r.message));
          held_count_.store(held_count_.load(std::memory_order_relaxed) + 1,
                            std::memory_order_relaxed);
          return true;   // taken; handled when its key is released
        } catch (...) {  // no memory to hold it: handle it now, out of order, rather than lose it
        }
      }
    }
    if (!attempt(r)) return false;
    done();
    return true;
  }

  // A retry whose time came. False when it failed again and waits for the next one.
  bool retry_now(Retry&& r) noexcept {
    const std::uint64_t key = r.order_key;
    if (!attempt(r)) return false;
    done();
    if (hopts_.ordering == Ordering::per_key) release_held(key);
    return true;
  }

  // The retried message of `key` is done with: its held followers run now, in order, until one
  // of them fails and waits for a retry (the rest wait behind it again).
  void release_held(std::uint64_t key) noexcept {
    const auto it = held_.find(key);
    if (it == held_.end()) return;
    std::deque<Message<T>> followers = std::move(it->second);
    held_.erase(it);
    held_count_.store(held_count_.load(std::memory_order_relaxed) - followers.size(),
                      std::memory_order_relaxed);
    while (!followers.empty()) {
      Retry r{std::move(followers.front()), 0, backoff_.initial(), std::nullopt, key};
      followers.pop_front();
      if (attempt(r)) {
        done();
        continue;
      }
      // Waiting again: schedule_retry made the key's (empty) entry; the rest go back in order.
      const auto again = held_.find(key);
      if (again == held_.end()) break;  // could not hold them: schedule_retry gave up
      held_count_.store(held_count_.load(std::memory_order_relaxed) + followers.size(),
                        std::memory_order_relaxed);
      again->second = std::move(followers);
      return;
    }
  }

  // One attempt now. True when the message is done with (handled, skipped as a duplicate,
  // refused by the breaker, dead-lettered, or given up by an unsubscribe); false when it
  // failed with attempts left, or the breaker refused it under WhenOpen::wait, and it now waits
  // on a timer (moved out of `r`).
  bool attempt(Retry& r) noexcept {
    // Back from waiting for the breaker: the key was checked and the retry counted before.
    if (!std::exchange(r.breaker_wait, false)) {
      if (r.attempts == 0 && handled_) {
        r.dedup_key = dedup_key(r.message);
        if (r.dedup_key && seen(*r.dedup_key)) {
          deduplicated_.add();
          return true;
        }
      }
      if (r.attempts > 0) retries_.add();
    }
    std::exception_ptr error;
    if (hopts_.breaker) {
      std::chrono::nanoseconds wait{};
      switch (admit(r.message, r.attempts, error, wait)) {
        case Admission::called:
          break;
        case Admission::given_up:
          return true;
        case Admission::wait:
          return !wait_for_breaker(std::move(r), wait);
      }
    } else {
      error = call(r.message);
    }
    ++r.attempts;
    if (!error) {
      if (r.dedup_key) remember(*r.dedup_key);
      return true;
    }
    return after_failure(r, std::move(error));
  }

  // Attempt r.attempts of `r` failed with `error`: counted and reported, then retried later or
  // dead-lettered. True when the message is done with, as attempt.
  bool after_failure(Retry& r, std::exception_ptr error) noexcept {
    failures_.add();
    report_error(r.message, error);
    if (r.attempts < hopts_.retry.max_attempts) {
      if (cancelled()) {  // unsubscribed meanwhile: the retry that would come is cancelled
        retries_cancelled_.fetch_add(1, std::memory_order_relaxed);
        return true;
      }
      return !schedule_retry(std::move(r));
    }
    dead_letter(r.message, error, r.attempts);
    return true;
  }

  // The breaker refused `r` under WhenOpen::wait: it asks again after `wait`, on a timer, like a
  // retry (strict holds the strand), and no queued message is taken meanwhile (see
  // held_back). False as wait_on_timer.
  bool wait_for_breaker(Retry&& r, std::chrono::nanoseconds wait) noexcept {
    r.breaker_wait = true;
    return wait_on_timer(std::move(r), wait);
  }

  // Puts `r` on a timer for its backoff. False as wait_on_timer.
  bool schedule_retry(Retry&& r) noexcept {
    const std::chrono::nanoseconds delay = backoff_.next_after(r.previous);
    r.previous = delay;
    return wait_on_timer(std::move(r), delay);
  }

  // Puts `r` on a timer that hands it back to the strand after `delay` (retry_due), counted as
  // a pending retry or a breaker wait. Under per_key its key is held, so that the key's later
  // messages wait behind it. False when it could not (no memory to hold the key): then it was
  // dead-lettered instead. A timer the executor refuses is destroyed unrun, which RetryTimer
  // counts (retry_dropped).
  bool wait_on_timer(Retry&& r, std::chrono::nanoseconds delay) noexcept {
    if (hopts_.ordering == Ordering::per_key) {
      try {
        held_.try_emplace(r.order_key);
      } catch (...) {
        dead_letter(r.message, std::current_exception(), r.attempts);
        return false;
      }
    }
    if (r.breaker_wait) {
      breaker_waits_.fetch_add(1, std::memory_order_seq_cst);
    } else {
      retries_pending_.fetch_add(1, std::memory_order_relaxed);
    }
    try {
      executor_.schedule_at(std::chrono::steady_clock::now() + delay,
                            Task(RetryTimer(this->shared_from_this(), std::move(r))),
                            retry_stop_.get_token(), this->shared_from_this());
    } catch (...) {  // the RetryTimer, if it was made, counted itself dropped (retry_dropped)
    }
    return true;
  }

  // On the executor, when a retry's backoff has passed: hand it to the strand. Strict: the
  // strand is held for this retry, so run it here; otherwise take the strand if it is free.
  void retry_due(Retry&& r) noexcept {
    // A wait for the breaker is not a retry (see wait_for_breaker).
    const bool retry = !r.breaker_wait;
    const bool strict = hopts_.ordering == Ordering::strict;
    if (retry) retries_pending_.fetch_sub(1, std::memory_order_relaxed);
    {
      // Under the lock: quiesce()'s drop_ready() either sees this retry or happens first.
      const std::lock_guard lock(ready_mutex_);
      if (cancelled()) {
        if (retry) {
          retries_cancelled_.fetch_add(1, std::memory_order_relaxed);
        } else {
          breaker_waits_.fetch_sub(1, std::memory_order_seq_cst);
        }
        return;
      }
      bool queued = true;
      try {
        ready_.push_back(std::move(r));
      } catch (...) {
        queued = false;
        if (retry) retries_cancelled_.fetch_add(1, std::memory_order_relaxed);
      }
      // Before the strand is looked at (seq_cst): a strand that let go sees this one ready, or
      // (a lost message) the queue no longer held back by it.
      if (queued || strict) ready_count_.fetch_add(1, std::memory_order_seq_cst);
      if (!retry) breaker_waits_.fetch_sub(1, std::memory_order_seq_cst);
      if (!queued && !strict) return;
    }
    if (!strict) {
      if (scheduled_.load(std::memory_order_seq_cst)) return;
      if (scheduled_.exchange(true, std::memory_order_seq_cst)) return;
    }
    drain(budget());
  }

  // A retry's timer was destroyed unrun. After an unsubscribe that is the cancellation;
  // otherwise the executor shut down (or refused), so nothing will run the message again: the
  // subscription is stranded, as when the executor refuses the strand (post()).
  void retry_dropped(bool breaker_wait) noexcept {
    if (breaker_wait) {
      breaker_waits_.fetch_sub(1, std::memory_order_seq_cst);
    } else {
      retries_pending_.fetch_sub(1, std::memory_order_relaxed);
      retries_cancelled_.fetch_add(1, std::memory_order_relaxed);
    }
    if (cancelled()) return;
    stranded_.store(true, std::memory_order_seq_cst);
    this->close_and_leave(CloseReason::executor_stopped);
    idle_.wake_all();
  }

  std::optional<Retry> take_ready() noexcept {
    if (ready_count_.load(std::memory_order_seq_cst) == 0) return std::nullopt;
    const std::lock_guard lock(ready_mutex_);
    if (ready_.empty()) return std::nullopt;
    std::optional<Retry> r(std::move(ready_.front()));
    ready_.pop_front();
    ready_count_.fetch_sub(1, std::memory_order_seq_cst);
    return r;
  }

  // Unsubscribed: the retries that came due and were not run yet are cancelled.
  void drop_ready() noexcept {
    const std::lock_guard lock(ready_mutex_);
    for (const Retry& r : ready_) {
      if (!r.breaker_wait) retries_cancelled_.fetch_add(1, std::memory_order_relaxed);
    }
    ready_.clear();
    ready_count_.store(0, std::memory_order_seq_cst);
  }

  std::uint64_t order_key(const Message<T>& m) noexcept {
    try {
      return hopts_.key(m);
    } catch (...) {  // no key: all such messages share key 0
      report_error(m, std::current_exception());
      return 0;
    }
  }

  void report_error(const Message<T>& m, const std::exception_ptr& error) noexcept {
    if (!hopts_.on_error) return;
    try {
      hopts_.on_error(m, error);
    } catch (...) {  // an error callback must not take the strand down
    }
  }

  // One message through the handler: skipped if deduplication has seen its key, else called
  // (each attempt guarded by the breaker, if any) with retries, then to the dead-letter sink.
  void handle(const Message<T>& m) noexcept {
    std::optional<std::uint64_t> key;
    if (handled_) {
      key = dedup_key(m);
      if (key && seen(*key)) {
        deduplicated_.add();
        return;
      }
    }
    backoff_.reset();
    std::exception_ptr error;
    std::uint32_t attempt = 0;
    while (attempt < hopts_.retry.max_attempts) {
      if (attempt > 0) {
        if (cancelled()) break;
        pause(backoff_.next());
        if (cancelled()) break;
        retries_.add();
        mark_ = std::chrono::steady_clock::now();  // the backoff is not handler time
      }
      if (hopts_.breaker && !admitted(m, attempt, error)) return;
      ++attempt;
      if (!hopts_.breaker) error = call(m);
      if (!error) break;
      failures_.add();
      if (hopts_.on_error) {
        try {
          hopts_.on_error(m, error);
        } catch (...) {  // an error callback must not take the strand down
        }
      }
    }
    if (!error && attempt != 0) {
      if (key) remember(*key);
      return;
    }
    if (error && attempt == hopts_.retry.max_attempts) {
      dead_letter(m, error, attempt);
    }
  }

  // What the breaker said before an attempt (see admit).
  enum class Admission : std::uint8_t {
    called,    ///< the call was made (its outcome is in `error`)
    given_up,  ///< refused under WhenOpen::dead_letter: done with, unhandled
    wait,      ///< refused under WhenOpen::wait: ask again after `wait`
  };

  // The breaker's turn before an attempt: asks it for a permit and, when granted, makes the call
  // (its outcome goes to the breaker and to `error`). When refused: WhenOpen::dead_letter gives
  // the message up; WhenOpen::wait sets `wait` to the time the breaker says (or breaker_recheck).
  Admission admit(const Message<T>& m, std::uint32_t attempt, std::exception_ptr& error,
                  std::chrono::nanoseconds& wait) noexcept {
    bool called = false;
    auto attempt_call = [&] {
      called = true;
      error = call(m);
      return !error;
    };
    BreakerRef::Outcome outcome;
    try {
      outcome = hopts_.breaker.guard(attempt_call);
    } catch (...) {  // a breaker that throws: make the call unguarded rather than lose it
      if (!called) error = call(m);
      return Admission::called;
    }
    if (outcome != BreakerRef::Outcome::refused) return Admission::called;
    breaker_refused_.add();
    if (hopts_.when_open == WhenOpen::dead_letter) {
      breaker_dead_lettered_.add();
      dead_letter(m, nullptr, attempt);
      return Admission::given_up;
    }
    wait = hopts_.breaker_recheck;
    try {
      const auto after = hopts_.breaker.retry_after();
      if (after > std::chrono::nanoseconds::zero()) wait = after;
    } catch (...) {
    }
    return Admission::wait;
  }

  // handle()'s way (HandlerOptions::sleep): waits on this thread and asks again, until the call
  // is made (true) or the message is given up or unsubscribed (false).
  bool admitted(const Message<T>& m, std::uint32_t attempt, std::exception_ptr& error) noexcept {
    for (;;) {
      std::chrono::nanoseconds wait{};
      const Admission a = admit(m, attempt, error, wait);
      if (a != Admission::wait) return a == Admission::called;
      pause(wait);
      if (cancelled()) return false;
      mark_ = std::chrono::steady_clock::now();  // the wait is not handler time
    }
  }

  std::optional<std::uint64_t> dedup_key(const Message<T>& m) noexcept {
    try {
      return hopts_.dedup.key(m);
    } catch (...) {  // no key: the message is handled without deduplication
      if (hopts_.on_error) {
        try {
          hopts_.on_error(m, std::current_exception());
        } catch (...) {
        }
      }
      return std::nullopt;
    }
  }

  // The window allocates nothing after construction; only its mutex could throw.
  bool seen(std::uint64_t key) const noexcept {
    try {
      return handled_->contains(key);
    } catch (...) {
      return false;
    }
  }
  void remember(std::uint64_t key) noexcept {
    try {
      handled_->insert(key);
    } catch (...) {
    }
  }

  // Times the invocation from mark_ and moves mark_ to its end: one clock read per message,
  // not two (a read costs 30-50 ns on a VM, as much as the rest of a delivery), since the end of
  // one invocation is the start of the next. What lies between them -- the pop of the next
  // message -- is counted as handler time: a few nanoseconds.
  std::exception_ptr call(const Message<T>& m) noexcept {
    std::exception_ptr error;
    try {
      handler_(m);
    } catch (...) {
      error = std::current_exception();
    }
    const auto end = std::chrono::steady_clock::now();
    const auto ns = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(end - mark_).count());
    mark_ = end;
    invocations_.add();
    time_total_.add(ns);
    time_max_.raise(ns);
    durations_[DurationHistogram::bucket_of(ns)].add();
    return error;
  }

  static HandlerOptions<T> validated(HandlerOptions<T> o) {
    validate(o);
    return o;
  }

  // Every message that evicted another was delivered, and an eviction needs a full queue, whose
  // messages the strand will still handle: so the last change a wait_idle() needs is always a
  // batch's end, which wakes it.
  void leave_handler() noexcept {
    in_handler_.fetch_sub(1, std::memory_order_seq_cst);
    quiet_.notify_all();  // a load, no syscall, unless quiesce() is parked
  }

  // A count, not a flag: a run that suspended for a strict retry (or a breaker wait, or a rate
  // token) has handed its timer over before its own leave_handler(); the timer may already have
  // started the next run on another thread, and clearing a flag there would hide that run from
  // quiesce(). The locked add costs what the seq_cst store it replaces did (an xchg on x86).
  void enter_handler() noexcept { in_handler_.fetch_add(1, std::memory_order_seq_cst); }

  // Backoff between retries, and waits for the breaker: the sleep hook, or the clock, cut short
  // by an unsubscribe.
  void pause(std::chrono::nanoseconds d) noexcept {
    if (hopts_.sleep) {
      try {
        hopts_.sleep(d);
      } catch (...) {
      }
      return;
    }
    wait_until(
        cancel_, [&] { return cancelled(); }, Deadline::after(d));
  }

  // `error` null: the breaker refused the message.
  void dead_letter(const Message<T>& m, const std::exception_ptr& error,
                   std::uint32_t attempts) noexcept {
    if (!hopts_.dead_letters) return;
    try {
      std::string text =
          error ? exception_text(error) : "herald: the circuit breaker refused the call";
      if (hopts_.dead_letters(DeadLetter<T>{m, std::move(text), attempts, this->pattern()})) {
        dead_lettered_.add();
      }
    } catch (...) {  // a failing dead-letter sink is counted as a failure, not fatal
      failures_.add();
    }
  }

  Handler handler_;
  ExecutorRef executor_;
  std::unique_ptr<ThreadExecutor> own_thread_;  // dedicated_thread only
  HandlerOptions<T> hopts_;
  DecorrelatedJitter backoff_;  // used by the strand only
  const bool timed_retries_;    // retries wait on timers (no HandlerOptions::sleep hook)
  // A first attempt is just a call: no dedup key to look up, no breaker to ask, no per_key
  // order to keep. Most subscriptions; their messages skip building a Retry unless they fail.
  const bool plain_first_attempt_;
  std::unique_ptr<DedupWindow<std::uint64_t>> handled_;  // dedup: keys handled, strand only
  std::chrono::steady_clock::time_point mark_;  // strand only: where the next timing starts

  // Timed retries. `ready_` is filled by timers (any thread) and emptied by the strand;
  // `held_` (per_key: the followers of keys that wait for a retry) is the strand's alone, its
  // size mirrored in `held_count_` for runnable(), which reads it after releasing the strand.
  std::mutex ready_mutex_;
  std::deque<Retry> ready_;
  std::atomic<std::size_t> ready_count_{0};
  std::unordered_map<std::uint64_t, std::deque<Message<T>>> held_;
  std::atomic<std::size_t> held_count_{0};
  std::atomic<std::uint64_t> retries_pending_{0};
  std::atomic<std::uint32_t> breaker_waits_{0};  // messages on a timer for the breaker
  std::atomic<std::uint64_t> retries_cancelled_{0};
  std::atomic<std::uint64_t> rate_limited_{0};
  std::stop_source retry_stop_;  // quiesce() cancels every retry timer through it

  // Batches: the strand's alone, but for the flush request a timer makes.
  BatchFn batch_handler_;
  bool batch_mode_ = false;  // set by the constructor, before the state is shared
  std::vector<Message<T>> batch_;
  std::uint64_t batch_number_ = 0;
  bool flush_timer_ = false;                     // a timer is set for the current batch
  std::atomic<std::uint64_t> flush_request_{0};  // batch number + 1 whose max_wait passed

  // Lanes (concurrency > 1). The dispatcher's state is its strand's alone, but for the flag.
  std::vector<std::shared_ptr<HandlerState>> lanes_;
  std::optional<Message<T>> stalled_;
  std::size_t stalled_lane_ = 0;
  std::size_t next_lane_ = 0;
  std::atomic<bool> stalled_flag_{false};
  bool is_lane_ = false;                    // set before the lane is shared
  std::weak_ptr<HandlerState> dispatcher_;  // a lane's, set by the dispatcher's attach()

  alignas(cache_line_size) std::atomic<bool> scheduled_{false};  // the strand is held
  alignas(cache_line_size) std::atomic<std::uint32_t> in_handler_{0};
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> stranded_{false};  // the executor refused: closed with executor_stopped
  alignas(cache_line_size) OwnedCounter finished_;  // messages handled
  // One event count per condition, as the protocol requires: quiesce() waits on `quiet_` for
  // in_handler_ == 0, wait_idle() on `idle_` for finished_ to move, backoff on `cancel_`.
  EventCount quiet_;
  EventCount idle_;
  EventCount cancel_;

  // Written by the strand only (its runs never overlap and hand over through `scheduled_`), so
  // plain loads and stores: no locked instruction per message.
  OwnedCounter invocations_;
  OwnedCounter failures_;
  OwnedCounter retries_;
  OwnedCounter dead_lettered_;
  OwnedCounter breaker_refused_;
  OwnedCounter breaker_dead_lettered_;
  OwnedCounter deduplicated_;
  OwnedCounter time_total_;
  OwnedCounter time_max_;
  std::array<OwnedCounter, DurationHistogram::buckets> durations_;  // the duration histogram
};

}  // namespace detail
}  // namespace herald
