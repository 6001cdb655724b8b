// The machinery of handler (push) subscriptions: a strand over the subscription's own queue, run
// inline in the publisher, on a WorkerPool, or on a dedicated thread; quiescent unsubscribe;
// retries with backoff and dead letters.
#pragma once

#include <herald/detail/parking.hpp>
#include <herald/detail/subscription_state.hpp>
#include <herald/detail/unique_function.hpp>
#include <herald/message.hpp>
#include <herald/policy.hpp>
#include <herald/worker_pool.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>

namespace herald {

/// Counters of a handler subscription: the queue's (see SubscriptionStats) plus the handler's.
struct HandlerStats : SubscriptionStats {
  std::uint64_t invocations = 0;    ///< handler calls, retries included
  std::uint64_t failures = 0;       ///< calls that threw
  std::uint64_t retries = 0;        ///< calls that were retries of a failed message
  std::uint64_t dead_lettered = 0;  ///< messages that failed every attempt
  std::chrono::nanoseconds handler_time_total{0};
  std::chrono::nanoseconds handler_time_max{0};
};

namespace detail {

/// Which executor runs a handler subscription. Built implicitly from what the user passes.
class ExecutorRef {
 public:
  enum class Kind : std::uint8_t { inline_call, pool, thread };
  ExecutorRef(WorkerPool& pool) noexcept : kind_(Kind::pool), pool_(&pool) {}  // NOLINT
  ExecutorRef(InlineExecutor) noexcept : kind_(Kind::inline_call) {}           // NOLINT
  ExecutorRef(DedicatedThread) noexcept : kind_(Kind::thread) {}               // NOLINT
  [[nodiscard]] Kind kind() const noexcept { return kind_; }
  [[nodiscard]] WorkerPool* pool() const noexcept { return pool_; }

 private:
  Kind kind_;
  WorkerPool* pool_ = nullptr;
};

/// The handler subscription whose handler this thread is running now (to recognise an
/// unsubscribe from inside the handler, which must not wait for itself).
inline thread_local const void* running_handler = nullptr;

/// Publishes a dead letter; defined by the broker (which knows Broker<DeadLetter<T>>).
template <class T>
void publish_dead_letter(Broker<DeadLetter<T>>& dlq, DeadLetter<T> letter);

template <class T>
class PushState final : public SubscriptionState<T>,
                        public std::enable_shared_from_this<PushState<T>> {
 public:
  using Handler = UniqueFunction<void(const Message<T>&)>;

  PushState(std::string pattern, SubscribeOptions options, Handler handler, ExecutorRef executor,
            HandlerOptions<T> handler_options)
      : SubscriptionState<T>(std::move(pattern), std::move(options)),
        handler_(std::move(handler)),
        executor_(executor),
        hopts_(std::move(handler_options)),
        rng_(std::random_device{}()) {
    if (hopts_.retry.max_attempts == 0) hopts_.retry.max_attempts = 1;
  }

  ~PushState() override {
    // Only reachable once no thread runs for us: the dedicated thread holds a reference.
    if (thread_.joinable()) thread_.detach();
  }

  /// Starts the dedicated thread, if that is the executor. Called once, after construction.
  void start() {
    if (executor_.kind() != ExecutorRef::Kind::thread) return;
    thread_ = std::thread([self = this->shared_from_this()] {
      while (auto m = self->queue().pop()) {
        self->note_received();
        if (!self->invoke(*m)) break;
        self->note_finished();
      }
    });
  }

  /// Waits until every message delivered before the call has been handled (or evicted by
  /// drop_oldest). False when `deadline` passes first, when the subscription is unsubscribed with
  /// messages unhandled, or when called from inside this subscription's own handler.
  bool wait_idle(const Deadline& deadline) noexcept {
    if (running_handler == this) return false;  // it would wait for itself
    const std::uint64_t target = this->stats().delivered;
    for (;;) {
      const std::uint32_t epoch = finished_epoch_.load(std::memory_order_seq_cst);
      if (handled_or_evicted() >= target) return true;
      if (cancelled() || deadline.passed()) return false;
      // Dekker with note_finished(): announce, then re-check; it counts, then looks for us.
      idle_waiters_.fetch_add(1, std::memory_order_seq_cst);
      if (handled_or_evicted() < target && !cancelled()) {
        futex_wait(finished_epoch_, epoch, deadline);  // returns at once if the epoch moved
      }
      idle_waiters_.fetch_sub(1, std::memory_order_seq_cst);
    }
  }

  /// Waits until no invocation runs and none will start. From inside the handler: returns at
  /// once, and no further invocation starts.
  void quiesce() noexcept override {
    cancelled_.store(1, std::memory_order_seq_cst);
    futex_wake(cancelled_, INT32_MAX);  // cut a backoff sleep short
    wake_idle_waiters();                // they return false now
    if (executor_.kind() == ExecutorRef::Kind::thread) {
      if (thread_.joinable()) {
        if (thread_.get_id() == std::this_thread::get_id()) {
          thread_.detach();  // we are the handler: the thread ends after we return
        } else {
          this->queue().close();  // wakes its pop; it checks `cancelled_` before invoking
          thread_.join();
        }
      }
      return;
    }
    if (running_handler == this) return;
    // Dekker with invoke(): it announces `in_handler_` then checks `cancelled_`; we set
    // `cancelled_` then check `in_handler_`. seq_cst on all four: one of us sees the other.
    while (in_handler_.load(std::memory_order_seq_cst) != 0) {
      // Dekker again with leave_handler(): announce, then re-check; it clears, then looks for us.
      quiesce_waiters_.fetch_add(1, std::memory_order_seq_cst);
      if (in_handler_.load(std::memory_order_seq_cst) != 0) {
        futex_wait(in_handler_, 1, Deadline::forever());  // returns at once if already 0
      }
      quiesce_waiters_.fetch_sub(1, std::memory_order_seq_cst);
    }
  }

  [[nodiscard]] HandlerStats handler_stats() const noexcept {
    HandlerStats s;
    static_cast<SubscriptionStats&>(s) = this->stats();
    s.invocations = invocations_.load(std::memory_order_relaxed);
    s.failures = failures_.load(std::memory_order_relaxed);
    s.retries = retries_.load(std::memory_order_relaxed);
    s.dead_lettered = dead_lettered_.load(std::memory_order_relaxed);
    s.handler_time_total = std::chrono::nanoseconds(time_total_.load(std::memory_order_relaxed));
    s.handler_time_max = std::chrono::nanoseconds(time_max_.load(std::memory_order_relaxed));
    return s;
  }

 protected:
  void after_enqueue() noexcept override {
    switch (executor_.kind()) {
      case ExecutorRef::Kind::thread:
        return;  // the thread is waiting on the queue
      case ExecutorRef::Kind::inline_call:
        if (!scheduled_.exchange(true, std::memory_order_seq_cst)) drain(SIZE_MAX);
        return;
      case ExecutorRef::Kind::pool:
        if (!scheduled_.exchange(true, std::memory_order_seq_cst)) post();
        return;
    }
  }

 private:
  // Messages run per pool task before the task yields the worker to other work.
  static constexpr std::size_t kBatch = 64;

  // Hands the strand to the pool. Only the holder of `scheduled_` calls this.
  void post() noexcept {
    WorkerPool& pool = *executor_.pool();
    auto task = [self = this->shared_from_this()] { self->drain(kBatch); };
    if (pool.try_submit(task)) return;
    if (pool.on_worker_thread()) {
      drain(kBatch);  // a worker must not block on its own pool's full queue
      return;
    }
    if (!pool.submit(task)) {
      // The pool is shut down: nothing will run this strand again.
      scheduled_.store(false, std::memory_order_seq_cst);
    }
  }

  // Runs queued messages in order, at most `budget` before handing the strand back. Only the
  // holder of `scheduled_` runs this, so invocations never overlap.
  void drain(std::size_t budget) noexcept {
    for (;;) {
      std::size_t n = 0;
      while (n < budget && !cancelled()) {
        auto m = this->queue().try_pop();
        if (!m) break;
        this->note_received();
        if (invoke(*m)) note_finished();
        ++n;
      }
      if (n == budget && !cancelled()) {
        post();  // fairness: let the pool's other work run, keep the strand scheduled
        return;
      }
      scheduled_.store(false, std::memory_order_seq_cst);
      // A publisher that enqueued after our last try_pop saw `scheduled_` set and left the
      // message to us: look again, and take the strand back if nobody else did.
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (cancelled() || this->queue().approx_size() == 0) return;
      if (scheduled_.exchange(true, std::memory_order_seq_cst)) return;
    }
  }

  bool cancelled() const noexcept { return cancelled_.load(std::memory_order_seq_cst) != 0; }

  // One message through the handler, with retries. False once cancelled (nothing was run).
  bool invoke(const Message<T>& m) noexcept {
    in_handler_.store(1, std::memory_order_seq_cst);
    if (cancelled()) {
      leave_handler();
      return false;
    }
    const void* outer = running_handler;  // inline handlers may publish to other inline ones
    running_handler = this;
    auto backoff = hopts_.retry.initial_backoff;
    std::exception_ptr error;
    std::uint32_t attempt = 0;
    while (attempt < hopts_.retry.max_attempts) {
      if (attempt > 0) {
        if (cancelled()) break;
        backoff = next_backoff(backoff);
        wait_backoff(backoff);
        if (cancelled()) break;
        retries_.fetch_add(1, std::memory_order_relaxed);
      }
      ++attempt;
      error = call(m);
      if (!error) break;
      failures_.fetch_add(1, std::memory_order_relaxed);
      if (hopts_.on_error) {
        try {
          hopts_.on_error(m, error);
        } catch (...) {  // an error callback must not take the strand down
        }
      }
    }
    if (error && attempt == hopts_.retry.max_attempts) dead_letter(m, error, attempt);
    running_handler = outer;
    leave_handler();
    return true;
  }

  std::exception_ptr call(const Message<T>& m) noexcept {
    const auto start = std::chrono::steady_clock::now();
    std::exception_ptr error;
    try {
      handler_(m);
    } catch (...) {
      error = std::current_exception();
    }
    const auto ns = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                   std::chrono::steady_clock::now() - start)
                                                   .count());
    invocations_.fetch_add(1, std::memory_order_relaxed);
    time_total_.fetch_add(ns, std::memory_order_relaxed);
    if (ns > time_max_.load(std::memory_order_relaxed)) {
      time_max_.store(ns, std::memory_order_relaxed);  // one invocation at a time: no race
    }
    return error;
  }

  // Every message that evicted another was delivered, and an eviction needs a full queue, whose
  // messages the strand will still handle: so the last change a waiter needs is always a
  // note_finished(), which wakes it.
  std::uint64_t handled_or_evicted() const noexcept {
    return finished_.load(std::memory_order_seq_cst) + this->stats().evicted;
  }

  void note_finished() noexcept {
    finished_.fetch_add(1, std::memory_order_seq_cst);
    // A load, no syscall, unless wait_idle() is waiting.
    if (idle_waiters_.load(std::memory_order_seq_cst) != 0) wake_idle_waiters();
  }

  void wake_idle_waiters() noexcept {
    finished_epoch_.fetch_add(1, std::memory_order_seq_cst);
    futex_wake(finished_epoch_, INT32_MAX);
  }

  void leave_handler() noexcept {
    in_handler_.store(0, std::memory_order_seq_cst);
    // A load, no syscall, unless quiesce() is waiting.
    if (quiesce_waiters_.load(std::memory_order_seq_cst) != 0) futex_wake(in_handler_, INT32_MAX);
  }

  // Decorrelated jitter: uniform in [initial, 3 x previous], capped.
  std::chrono::nanoseconds next_backoff(std::chrono::nanoseconds previous) noexcept {
    const auto lo = hopts_.retry.initial_backoff.count();
    const auto hi =
        std::max(lo, std::min(hopts_.retry.max_backoff.count(),
                              previous.count() > INT64_MAX / 3 ? INT64_MAX : previous.count() * 3));
    std::uniform_int_distribution<std::int64_t> pick(lo, hi);
    return std::min(std::chrono::nanoseconds(pick(rng_)), hopts_.retry.max_backoff);
  }

  void wait_backoff(std::chrono::nanoseconds d) noexcept {
    if (hopts_.sleep) {
      try {
        hopts_.sleep(d);
      } catch (...) {
      }
      return;
    }
    const auto deadline = Deadline::after(d);
    while (!cancelled() && !deadline.passed())
      futex_wait(cancelled_, 0, deadline);
  }

  void dead_letter(const Message<T>& m, const std::exception_ptr& error,
                   std::uint32_t attempts) noexcept {
    if (!hopts_.dead_letters) return;
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    try {
      publish_dead_letter(*hopts_.dead_letters,
                          DeadLetter<T>{m, std::move(what), attempts, this->pattern()});
      dead_lettered_.fetch_add(1, std::memory_order_relaxed);
    } catch (...) {  // a failing dead-letter publish is counted as a failure, not fatal
      failures_.fetch_add(1, std::memory_order_relaxed);
    }
  }

  Handler handler_;
  const ExecutorRef executor_;
  HandlerOptions<T> hopts_;
  std::minstd_rand rng_;
  std::thread thread_;

  alignas(cache_line_size) std::atomic<bool> scheduled_{false};  // the strand is held
  alignas(cache_line_size) std::atomic<std::uint32_t> in_handler_{0};
  std::atomic<std::uint32_t> cancelled_{0};        // a futex word: backoff sleeps wait on it
  std::atomic<std::uint32_t> quiesce_waiters_{0};  // threads in quiesce() waiting on in_handler_
  alignas(cache_line_size) std::atomic<std::uint64_t> finished_{0};  // messages handled
  std::atomic<std::uint32_t> finished_epoch_{0};  // a futex word: bumped to wake wait_idle()
  std::atomic<std::uint32_t> idle_waiters_{0};    // threads in wait_idle()

  std::atomic<std::uint64_t> invocations_{0};
  std::atomic<std::uint64_t> failures_{0};
  std::atomic<std::uint64_t> retries_{0};
  std::atomic<std::uint64_t> dead_lettered_{0};
  std::atomic<std::uint64_t> time_total_{0};
  std::atomic<std::uint64_t> time_max_{0};
};

}  // namespace detail
}  // namespace herald
