// WorkerPool: a fixed set of threads running move-only tasks, with back-pressure, per-key FIFO
// and a shutdown that drains what it accepted.
//
// Layout: every worker owns two BoundedQueues. Its "plain" queue receives plain submissions
// (round-robin per submitting thread, or the worker's own queue when a task submits), and any idle
// worker may steal from it, so plain work load-balances. Its "keyed" queue receives the keys that
// hash to it and only that worker pops it, so one key's tasks run one at a time, in order.
// Two more queues belong to the pool as a whole: the high and low priority lanes. A worker takes
// high before its own work before low, and ages the lanes it passes over (WorkerPoolOptions::
// max_bypass), so neither a flood of high nor of normal tasks starves the lanes below. While
// both lanes are empty (one shared load per dispatch says so) a worker never looks at them:
// plain and keyed work pays nothing for priorities.
// Workers look for work, spin briefly (detail::spin, the one spin policy), then park on their
// own event count (detail/parking.hpp, the one waiting protocol); a submitter only pays for a
// wake-up (one syscall) when some worker is actually parked, and none is searching: a worker
// counts as searching from when it runs dry until it finds a task (also when it takes itself
// back from parking, or a waker picked it), and the last searcher to find one wakes a parked
// worker if work is left: no plain task stays queued while a worker that could run it sleeps.
// The pool's state lives in a shared PoolCore that every worker co-owns, so a task may destroy
// the pool that runs it.
// WorkerPool is an Executor (executor.hpp): handler subscriptions can run on it.
#pragma once

#include <herald/bounded_queue.hpp>
#include <herald/detail/cache_line.hpp>
#include <herald/detail/counters.hpp>
#include <herald/detail/hashing.hpp>
#include <herald/detail/parking.hpp>
#include <herald/detail/timer_queue.hpp>
#include <herald/detail/unique_function.hpp>
#include <herald/executor.hpp>
#include <herald/stats.hpp>

#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/prctl.h>
#endif

namespace herald {

/// Construction options of a WorkerPool.
struct WorkerPoolOptions {
  /// Called on the worker thread with the exception of every task that throws (may be empty).
  /// Exceptions thrown by the handler itself are swallowed.
  std::function<void(std::exception_ptr)> on_error{};
  /// Aging of the priority lanes, >= 1: once a worker has passed over a waiting normal or low
  /// task for this many dispatches of higher lanes, it takes that task next (when both are due,
  /// low first, so each waits for at most this many higher dispatches of that worker). With one
  /// worker that is the bound on how many higher-priority tasks run ahead of a waiting one;
  /// with several, each worker ages on its own, so at most threads x max_bypass run pool-wide.
  std::uint32_t max_bypass = 16;
};

namespace detail {

using PoolTask = Task;

/// What the pool accepts as a task: anything callable as `f()` once decayed and stored.
template <class F>
concept PoolCallable = std::invocable<std::add_lvalue_reference_t<std::decay_t<F>>> &&
    std::constructible_from<PoolTask, F>;

class PoolCore;

/// Which pool (if any) the calling thread works for, and its index there.
struct PoolWorkerIdentity {
  const PoolCore* pool = nullptr;
  std::size_t index = 0;
};

inline PoolWorkerIdentity& current_pool_worker() noexcept {
  static thread_local PoolWorkerIdentity identity;
  return identity;
}

/// Per submitting thread rotation over the workers: no shared counter to contend on.
inline std::size_t next_round_robin(std::size_t n) noexcept {
  static thread_local std::size_t next = 0;
  std::size_t i = next;
  if (i >= n) i = 0;
  next = i + 1;
  return i;
}

/// One worker's queues and its hot words, each written by few threads, on separate lines.
struct PoolWorker {
  explicit PoolWorker(std::size_t capacity) : plain(capacity), keyed(capacity) {}

  BoundedQueue<PoolTask> plain;  // round-robin submissions; other workers steal from it
  BoundedQueue<PoolTask> keyed;  // only this worker pops: per-key order

  static constexpr std::uint32_t awake = 0;
  static constexpr std::uint32_t parked = 1;
  static constexpr std::uint32_t waking = 2;  // a waker won it and is fixing the counts
  // Written by the worker when it parks and by whoever wakes it (CAS parked -> waking, so exactly
  // one waker pays for the notify and fixes the counts, then waking -> awake).
  alignas(cache_line_size) std::atomic<std::uint32_t> state{awake};
  // What the parked worker sleeps on, waiting for `state` to become `awake`.
  EventCount wakeup;
  // Written only by this worker (plain load + store, no locked instruction), read by stats().
  alignas(cache_line_size) std::atomic<std::uint64_t> completed{0};
  std::atomic<std::uint64_t> failed{0};
  std::atomic<std::uint64_t> stolen{0};
};

/// The pool's state, shared by the WorkerPool handle and every worker thread, so that a worker
/// which destroys the handle (from inside a task) keeps valid state until it exits.
class PoolCore {
 public:
  using ErrorHandler = std::function<void(std::exception_ptr)>;

  PoolCore(std::size_t threads, std::size_t capacity, ErrorHandler on_error,
           std::uint32_t max_bypass)
      : high_(capacity), low_(capacity), max_bypass_(max_bypass) {
    workers_.reserve(threads);
    for (std::size_t i = 0; i < threads; ++i)
      workers_.push_back(std::make_unique<PoolWorker>(capacity));
    set_error_handler(std::move(on_error));
  }

  std::size_t size() const noexcept { return workers_.size(); }

  enum class Wait { none, block, stop };

  /// Puts `task` on a plain queue. `wait` says what to do when every queue is full; when the
  /// task is refused, `task` is left intact.
  bool submit_plain(PoolTask& task, Wait wait, const std::stop_token* stop) {
    const std::size_t n = workers_.size();
    const PoolWorkerIdentity& me = current_pool_worker();
    // A worker submits to itself: the task's data is hot in its cache, and others steal if idle.
    const std::size_t first = me.pool == this ? me.index : next_round_robin(n);
    std::size_t i = first;
    for (std::size_t k = 0; k < n; ++k) {
      if (workers_[i]->plain.try_push(std::move(task))) return accepted_plain(i);
      if (++i == n) i = 0;
    }
    if (wait == Wait::none) return false;
    const bool ok = wait == Wait::stop ? workers_[first]->plain.push(std::move(task), *stop)
                                       : workers_[first]->plain.push(std::move(task));
    return ok && accepted_plain(first);
  }

  /// Puts `task` in the lane of `priority` (normal: a plain queue); as submit_plain otherwise.
  bool submit(PoolTask& task, Priority priority, Wait wait, const std::stop_token* stop) {
    if (priority == Priority::normal) return submit_plain(task, wait, stop);
    if (static_cast<std::size_t>(priority) >= priority_levels) {
      throw std::invalid_argument("herald::WorkerPool: priority " +
                                  std::to_string(static_cast<int>(priority)) +
                                  " is not a Priority (high, normal or low)");
    }
    BoundedQueue<PoolTask>& lane = priority == Priority::high ? high_ : low_;
    // Counted before the push, so that the count is never below what the lanes hold: a worker
    // that reads zero may skip them, and the push's own wake-up check below covers that window.
    lanes_pending_->fetch_add(1, std::memory_order_seq_cst);
    bool ok = lane.try_push(std::move(task));
    if (!ok && wait != Wait::none)
      ok = wait == Wait::stop ? lane.push(std::move(task), *stop) : lane.push(std::move(task));
    if (!ok) {
      lanes_pending_->fetch_sub(1, std::memory_order_relaxed);
      return false;
    }
    return accepted_plain(next_round_robin(workers_.size()));
  }

  /// Puts `f` on the keyed queue of worker `index`.
  template <class F>
  bool submit_keyed(std::size_t index, F&& f, Wait wait, const std::stop_token* stop) {
    PoolWorker& w = *workers_[index];
    PoolTask task(std::forward<F>(f));
    bool ok = w.keyed.try_push(std::move(task));
    if (!ok && wait != Wait::none)
      ok =
          wait == Wait::stop ? w.keyed.push(std::move(task), *stop) : w.keyed.push(std::move(task));
    if (!ok) return false;
    submitted_.add(0, 1);
    // Dekker with park(): either the worker's re-check sees this task, or this load sees it parked.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (w.state.load(std::memory_order_relaxed) == PoolWorker::parked) wake(w);
    return true;
  }

  template <class Key>
  std::size_t key_index(const Key& key) const noexcept {
    std::uint64_t h;
    if constexpr (std::is_integral_v<Key> || std::is_enum_v<Key>) {
      h = static_cast<std::uint64_t>(key);
    } else {
      h = static_cast<std::uint64_t>(std::hash<Key>{}(key));
    }
    return static_cast<std::size_t>(mix64(h) % workers_.size());
  }

  /// Closes every queue (pushes fail from now on, pops drain), wakes every parked worker, and
  /// tells the watchers (handler subscriptions) that no new work is accepted.
  void begin_shutdown() noexcept {
    std::vector<std::weak_ptr<ExecutorListener>> watchers;
    {
      const std::lock_guard lock(watchers_mutex_);  // watch() checks stopping() under it
      if (stopping_.exchange(true, std::memory_order_seq_cst)) return;
      watchers.swap(watchers_);
    }
    for (auto& w : workers_) {
      w->plain.close();
      w->keyed.close();
    }
    high_.close();
    low_.close();
    std::atomic_thread_fence(std::memory_order_seq_cst);
    for (auto& w : workers_)
      wake(*w);
    for (const auto& w : watchers) {
      if (auto l = w.lock()) l->executor_stopped();
    }
    // Pending timers are abandoned, not run early: their tasks are destroyed unrun (a task that
    // must know can tell from its destructor), counted in timers_abandoned, and their handles
    // say TimerStatus::abandoned. After the watchers: a handler subscription closes first.
    timers_.close();
  }

  bool stopping() const noexcept { return stopping_.load(std::memory_order_acquire); }

  /// Runs `task` on a worker once `when` has come, or never if cancelled (the handle, or a stop
  /// request on `stop`) or if the pool shuts down first (abandoned). Refused after shutdown.
  /// Wakes a worker only when this timer became the earliest: the worker that waits for the
  /// earliest deadline (the "keeper"), or a parked one to become keeper.
  /// Throws: std::bad_alloc (`task` is then untouched).
  TimerHandle schedule_at(std::chrono::steady_clock::time_point when, Task&& task,
                          const std::stop_token& stop = {}) {
    bool first = false;
    TimerHandle handle = timers_.schedule(when, std::move(task), stop, first);
    if (!first) return handle;
    // Dekker with park(): it publishes `parked`, takes the keeper's seat, then re-reads the
    // earliest deadline; schedule() published the deadline, and we now read the seat and the
    // states. Either the parking worker sees our deadline or we see it parked.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const std::int32_t k = keeper_->load(std::memory_order_seq_cst);
    if (k >= 0) {
      wake(*workers_[static_cast<std::size_t>(k)]);
    } else if (idle_->load(std::memory_order_seq_cst) != 0 &&
               searching_->load(std::memory_order_seq_cst) == 0) {
      wake_one(0);
    }
    return handle;
  }

  /// Executor concept: tells `listener` once the pool stops accepting work (now, if it has).
  /// Throws: std::bad_alloc.
  void watch(std::weak_ptr<ExecutorListener> listener) {
    {
      const std::lock_guard lock(watchers_mutex_);
      if (!stopping()) {
        // Drop the listeners that are gone before growing, so churn cannot grow the list.
        if (watchers_.size() == watchers_.capacity()) {
          std::erase_if(watchers_, [](const auto& w) { return w.expired(); });
        }
        watchers_.push_back(std::move(listener));
        return;
      }
    }
    if (auto l = listener.lock()) l->executor_stopped();
  }

  // The Executor concept (executor.hpp), for handler subscriptions that keep the core alive
  // through WorkerPool::shared_executor(): they outlive the WorkerPool handle safely, and once
  // it has shut down every call here refuses.
  bool execute(Task&& task) { return submit_plain(task, Wait::block, nullptr); }
  bool try_execute(Task& task) { return submit_plain(task, Wait::none, nullptr); }
  bool execute(Task&& task, Priority priority) {
    return submit(task, priority, Wait::block, nullptr);
  }
  bool try_execute(Task& task, Priority priority) {
    return submit(task, priority, Wait::none, nullptr);
  }
  [[nodiscard]] bool running_in_this_thread() const noexcept {
    return current_pool_worker().pool == this;
  }

  void set_error_handler(ErrorHandler handler) {
    auto h = handler ? std::make_shared<const ErrorHandler>(std::move(handler)) : nullptr;
    const std::lock_guard lock(error_mutex_);
    on_error_.swap(h);
  }

  WorkerPoolStats stats() const noexcept {
    WorkerPoolStats s;
    for (const auto& w : workers_) {
      s.completed += w->completed.load(std::memory_order_relaxed);
      s.failed += w->failed.load(std::memory_order_relaxed);
      s.queued += w->plain.approx_size() + w->keyed.approx_size();
    }
    for (const auto& w : workers_)
      s.stolen += w->stolen.load(std::memory_order_relaxed);
    s.queued += high_.approx_size() + low_.approx_size();
    s.submitted = submitted_.sum(0);
    s.threads = workers_.size();
    s.parked = idle_->load(std::memory_order_relaxed);
    const TimerCounts& t = timers_.counts();
    s.timers_fired = t.fired.load(std::memory_order_relaxed);
    s.timers_cancelled = t.cancelled.load(std::memory_order_relaxed);
    s.timers_abandoned = t.abandoned.load(std::memory_order_relaxed);
    s.timers_pending = timers_.pending();
    return s;
  }

  /// The body of worker thread `index`.
  void run(std::size_t index) noexcept {
    current_pool_worker() = {this, index};
#if defined(__linux__)
    // The keeper sleeps until a timer's deadline; Linux lets such a sleep overrun by the thread's
    // timer slack (50 us by default). 1 us: timers fire close to their deadline, at the cost of
    // less batching of this thread's wake-ups, which are rare while it is parked.
    ::prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
#endif
    PoolWorker& me = *workers_[index];
    Turn turn;
    bool searching = false;  // whether this worker is counted in searching_
    for (;;) {
      // One load of a word that stays shared while no timer is queued: the clock is read only
      // when some timer is.
      if (timers_.next_due() != TimerQueue::none) fire_due(me);
      std::optional<PoolTask> t = find_task(index, turn);
      if (!t) {
        if (stopping()) break;
        if (!searching) {
          searching = true;
          searching_->fetch_add(1, std::memory_order_seq_cst);
        }
        const auto found = [&] {
          t = find_task(index, turn);
          return t.has_value() || stopping() || timer_due();
        };
        // A yield can last a whole time slice of another process: while timers wait, spin
        // with pauses only, so that the keeper is not late for a deadline.
        const SpinPolicy policy = timers_.next_due() == TimerQueue::none
                                      ? SpinPolicy{}
                                      : SpinPolicy{.pauses = SpinPolicy{}.pauses, .yields = 0};
        if (!spin(found, Deadline::forever(), {}, policy) || !t) {
          if (!stopping() && !timer_due()) park(index);  // counted as searching again after
          continue;  // a timer that came due while spinning fires at the top of the loop
        }
      }
      if (searching) {
        searching = false;
        stop_searching(index);
      }
      execute(me, std::move(*t));
    }
    if (searching) searching_->fetch_sub(1, std::memory_order_relaxed);
    drain(index);
    current_pool_worker() = {};
  }

 private:
  bool accepted_plain(std::size_t index) noexcept {
    submitted_.add(0, 1);
    // Dekker with park() and stop_searching(): either a worker's re-check after its fence sees
    // this task, or these loads see that worker parked / no longer searching. In the common case
    // (nobody parked) this is one load of a line that stays shared in every cache. A parked
    // worker is woken only when no worker is searching: a searcher will find the task itself.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (idle_->load(std::memory_order_relaxed) != 0 &&
        searching_->load(std::memory_order_relaxed) == 0)
      wake_one(index);
    return true;
  }

  /// Wakes `w` if it is parked and counts it as searching on its behalf (so that submitters do
  /// not wake a second worker for the next task before this one is even running); true if this
  /// call woke it.
  /// The worker must not see itself awake before it is counted: it would run, and its
  /// stop_searching() could take its unit off the count before we add it, find the count was not
  /// 1, and skip the hand-on to a parked worker that a submitter, seeing our unit, left asleep.
  /// Hence `waking` while we count; the worker waits for `awake` (take_back, park).
  bool wake(PoolWorker& w) noexcept {
    std::uint32_t expected = PoolWorker::parked;
    if (w.state.load(std::memory_order_relaxed) != PoolWorker::parked ||
        !w.state.compare_exchange_strong(expected, PoolWorker::waking, std::memory_order_seq_cst))
      return false;
    searching_->fetch_add(1, std::memory_order_seq_cst);
    idle_->fetch_sub(1, std::memory_order_seq_cst);
    w.state.store(PoolWorker::awake, std::memory_order_seq_cst);
    w.wakeup.notify_one();
    return true;
  }

  /// Wakes one parked worker, preferring `preferred` (the owner of the queue just pushed to).
  void wake_one(std::size_t preferred) noexcept {
    const std::size_t n = workers_.size();
    std::size_t i = preferred;
    for (std::size_t k = 0; k < n; ++k) {
      if (wake(*workers_[i])) return;
      if (++i == n) i = 0;
    }
  }

  /// Work any worker may take: the lanes, and plain queues.
  bool plain_work() const noexcept {
    if (lanes_pending_->load(std::memory_order_relaxed) != 0) return true;
    for (const auto& w : workers_)
      if (w->plain.approx_size() != 0) return true;
    return false;
  }

  bool has_work(std::size_t index) const noexcept {
    return workers_[index]->keyed.approx_size() != 0 || plain_work();
  }

  /// A searching worker found a task. If it was the last searcher, submitters may have skipped
  /// waking anyone while it searched, so it hands on what is left to a parked worker.
  void stop_searching(std::size_t index) noexcept {
    if (searching_->fetch_sub(1, std::memory_order_seq_cst) != 1) return;
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (idle_->load(std::memory_order_relaxed) != 0 && plain_work())
      wake_one(index + 1 == workers_.size() ? 0 : index + 1);
  }

  /// Parks the calling worker (which is searching) until a waker picks it, or until it takes
  /// itself back (work, a due timer, shutdown). Either way it is counted as searching after.
  void park(std::size_t index) noexcept {
    PoolWorker& me = *workers_[index];
    // Count first, then publish the state: a waker that wins the CAS on `state` always finds the
    // count already incremented, so the count never wraps below zero.
    idle_->fetch_add(1, std::memory_order_seq_cst);
    me.state.store(PoolWorker::parked, std::memory_order_seq_cst);
    searching_->fetch_sub(1, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    // With timers queued, one parked worker (the keeper) sleeps until the earliest deadline; the
    // others sleep until woken, so idle workers are not woken by timers that are not due.
    Deadline deadline = Deadline::forever();
    bool keeper = false;
    if (timers_.next_due() != TimerQueue::none) {
      std::int32_t vacant = -1;
      keeper = keeper_->compare_exchange_strong(vacant, static_cast<std::int32_t>(index),
                                                std::memory_order_seq_cst);
      if (keeper) {
        // Re-read after taking the seat: a timer scheduled before that is seen here, one
        // scheduled after sees us in the seat and wakes us (schedule_at).
        const TimerQueue::clock::rep due = timers_.next_due();
        if (due != TimerQueue::none) {
          deadline = Deadline::at(TimerQueue::clock::time_point(TimerQueue::clock::duration(due)));
        }
      }
    }
    if (has_work(index) || stopping_.load(std::memory_order_seq_cst) || deadline.passed()) {
      if (keeper) keeper_->store(-1, std::memory_order_seq_cst);
      take_back(me);
      return;
    }
    // The search has just spun (run()), so park without spinning again. A waker sets `state` to
    // awake with a seq_cst store, then notifies: the event-count protocol's pairing.
    wait_until(
        me.wakeup, [&] { return me.state.load(std::memory_order_seq_cst) == PoolWorker::awake; },
        deadline, {}, SpinPolicy{.pauses = 0, .yields = 0});
    if (!keeper) return;
    keeper_->store(-1, std::memory_order_seq_cst);
    const bool woken = take_back(me);  // else the deadline came
    // Woken for work while timers wait: hand the seat to a parked worker, so that a long task
    // run by this one does not hold up the timers.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (woken && timers_.next_due() != TimerQueue::none &&
        idle_->load(std::memory_order_seq_cst) != 0)
      wake_one(index + 1 == workers_.size() ? 0 : index + 1);
  }

  /// A parking worker takes itself back (it has work, or a timer is due), unless a waker already
  /// did. Either way it is counted as searching afterwards. Returns whether a waker did.
  /// Counting itself matters: a submitter that saw this worker searching left the wake-up to it,
  /// and the work it saw may be more than it can run. As a searcher, once it finds a task its
  /// stop_searching() hands what is left on to a parked worker.
  bool take_back(PoolWorker& me) noexcept {
    std::uint32_t s = PoolWorker::parked;
    if (me.state.compare_exchange_strong(s, PoolWorker::awake, std::memory_order_seq_cst)) {
      searching_->fetch_add(1, std::memory_order_seq_cst);  // before idle: no needless wake-up
      idle_->fetch_sub(1, std::memory_order_seq_cst);
      return false;
    }
    // A waker won: wait out its two counter updates (see wake()) before running anything.
    while (s != PoolWorker::awake) {
      std::this_thread::yield();
      s = me.state.load(std::memory_order_seq_cst);
    }
    return true;
  }

  /// True when some timer's deadline has come (the clock is read only while timers are queued).
  bool timer_due() const noexcept {
    const TimerQueue::clock::rep due = timers_.next_due();
    return due != TimerQueue::none && due <= TimerQueue::clock::now().time_since_epoch().count();
  }

  /// Runs the timers that are due, each as a task of this worker (counted as submitted when it
  /// fires, so that submitted == completed + failed still holds after shutdown).
  void fire_due(PoolWorker& me) noexcept {
    if (timers_.next_due() > TimerQueue::clock::now().time_since_epoch().count()) return;
    for (;;) {
      std::optional<Task> task;
      try {
        task = timers_.pop_due(TimerQueue::clock::now());
      } catch (...) {  // the timer lock threw (std::system_error): try on the next turn
        return;
      }
      if (!task) return;
      submitted_.add(0, 1);
      execute(me, std::move(*task));
    }
  }

  std::optional<PoolTask> steal(std::size_t index) noexcept {
    const std::size_t n = workers_.size();
    std::size_t i = index;
    for (std::size_t k = 1; k < n; ++k) {
      if (++i == n) i = 0;
      if (auto t = workers_[i]->plain.try_pop()) {
        // Only worker `index` steals for itself: a plain load and store.
        std::atomic<std::uint64_t>& c = workers_[index]->stolen;
        c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        return t;
      }
    }
    return std::nullopt;
  }

  /// A worker's own bookkeeping between dispatches (only it reads or writes it).
  struct Turn {
    bool keyed_first = true;
    // Dispatches of higher lanes since this worker last took from the normal / low lane while
    // that lane had work waiting (aging).
    std::uint32_t normal_bypassed = 0;
    std::uint32_t low_bypassed = 0;
  };

  /// The next task for worker `index`. Without priority work: its own queues first, alternating
  /// between keyed and plain so that a busy key cannot starve plain work (or the reverse), then
  /// other workers' plain queues. With some, by lane (find_by_priority).
  std::optional<PoolTask> find_task(std::size_t index, Turn& turn) noexcept {
    // One load of a line that stays shared while nobody submits by priority; the lanes' code
    // is kept out of line so that this path compiles as it did before they existed.
    if (lanes_pending_->load(std::memory_order_relaxed) != 0) [[unlikely]]
      return find_by_priority(index, turn);
    return find_normal(index, turn.keyed_first);
  }

  std::optional<PoolTask> find_normal(std::size_t index, bool& keyed_first) noexcept {
    PoolWorker& me = *workers_[index];
    std::optional<PoolTask> t = keyed_first ? me.keyed.try_pop() : me.plain.try_pop();
    if (!t) t = keyed_first ? me.plain.try_pop() : me.keyed.try_pop();
    if (!t) t = steal(index);
    if (t) keyed_first = !keyed_first;
    return t;
  }

  std::optional<PoolTask> pop_lane(BoundedQueue<PoolTask>& lane) noexcept {
    std::optional<PoolTask> t = lane.try_pop();
    if (t) lanes_pending_->fetch_sub(1, std::memory_order_relaxed);
    return t;
  }

  /// High, then normal, then low, except for a lane this worker has passed over max_bypass
  /// times while it had work: that one goes first (low before normal when both are due, so that
  /// neither sees more than max_bypass dispatches of higher lanes). The normal lane is this
  /// worker's own queues (others age theirs); it steals only when those are empty.
  [[gnu::noinline, gnu::cold]] std::optional<PoolTask> find_by_priority(std::size_t index,
                                                                        Turn& turn) noexcept {
    PoolWorker& me = *workers_[index];
    const bool low_waits = low_.approx_size() != 0;
    const bool normal_waits = me.plain.approx_size() != 0 || me.keyed.approx_size() != 0;
    if (!low_waits) turn.low_bypassed = 0;
    if (!normal_waits) turn.normal_bypassed = 0;
    if (turn.low_bypassed >= max_bypass_) {
      if (std::optional<PoolTask> t = pop_lane(low_)) {
        turn.low_bypassed = 0;
        return t;
      }
    }
    const bool normal_due = turn.normal_bypassed >= max_bypass_;
    if (!normal_due) {
      if (std::optional<PoolTask> t = pop_lane(high_)) {
        if (normal_waits) ++turn.normal_bypassed;
        if (low_waits) ++turn.low_bypassed;
        return t;
      }
    }
    if (std::optional<PoolTask> t = find_normal(index, turn.keyed_first)) {
      turn.normal_bypassed = 0;
      if (low_waits) ++turn.low_bypassed;
      return t;
    }
    if (normal_due) {  // normal was due, but another worker took it
      if (std::optional<PoolTask> t = pop_lane(high_)) {
        if (low_waits) ++turn.low_bypassed;
        return t;
      }
    }
    std::optional<PoolTask> t = pop_lane(low_);
    if (t) turn.low_bypassed = 0;
    return t;
  }

  /// After shutdown began: run what is left in this worker's own queues (pop() waits for pushes
  /// that were accepted before close() but are still being written), then help the others.
  void drain(std::size_t index) noexcept {
    PoolWorker& me = *workers_[index];
    while (auto t = high_.pop())
      execute(me, std::move(*t));
    while (auto t = me.keyed.pop())
      execute(me, std::move(*t));
    while (auto t = me.plain.pop())
      execute(me, std::move(*t));
    while (auto t = steal(index))
      execute(me, std::move(*t));
    while (auto t = low_.pop())
      execute(me, std::move(*t));
  }

  void execute(PoolWorker& me, PoolTask&& task) noexcept {
    bool ok = true;
    std::exception_ptr error;
    try {
      PoolTask t(std::move(task));
      t();
    } catch (...) {
      ok = false;
      error = std::current_exception();
    }
    // Counted after the callable was destroyed: "completed" includes releasing its captures.
    std::atomic<std::uint64_t>& c = ok ? me.completed : me.failed;
    c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    if (!ok) report(std::move(error));
  }

  void report(std::exception_ptr error) noexcept {
    std::shared_ptr<const ErrorHandler> handler;
    {
      const std::lock_guard lock(error_mutex_);
      handler = on_error_;
    }
    if (!handler) return;
    try {
      (*handler)(std::move(error));
    } catch (...) {  // a throwing error handler must not kill the worker either
    }
  }

  std::vector<std::unique_ptr<PoolWorker>> workers_;
  BoundedQueue<PoolTask> high_;  // the priority lanes, shared by every worker
  BoundedQueue<PoolTask> low_;
  // Tasks in the lanes, counted before they are pushed: read by every dispatch (zero: skip the
  // lanes), written only by priority submissions and the dispatches that take them.
  CachePadded<std::atomic<std::uint32_t>> lanes_pending_{std::in_place, 0u};
  const std::uint32_t max_bypass_;
  // Parked workers: read by every plain submit, written only when a worker parks or is woken.
  CachePadded<std::atomic<std::uint32_t>> idle_{std::in_place, 0u};
  // Workers looking for work (spinning, or woken and not yet running): read by submitters only
  // when some worker is parked; written whenever a worker runs dry or finds work again.
  CachePadded<std::atomic<std::uint32_t>> searching_{std::in_place, 0u};
  std::atomic<bool> stopping_{false};
  ShardedCounters<1> submitted_;
  std::mutex error_mutex_;
  std::shared_ptr<const ErrorHandler> on_error_;
  std::mutex watchers_mutex_;
  std::vector<std::weak_ptr<ExecutorListener>> watchers_;  // told at shutdown
  TimerQueue timers_;
  // The worker parked until the earliest timer's deadline (-1: none): schedule_at wakes it when
  // an earlier timer arrives. Written by parking workers, read by schedule_at.
  CachePadded<std::atomic<std::int32_t>> keeper_{std::in_place, -1};
};

}  // namespace detail

/// A fixed pool of worker threads running move-only tasks.
///
/// ```
/// herald::WorkerPool pool{4, 1024};
/// pool.submit([] { work(); });                          // blocks while the queues are full
/// pool.submit_keyed(account_id, [] { apply(); });       // same key: one at a time, in order
/// std::future<int> f = pool.async([] { return 42; });
/// ```
/// Every worker owns a queue of `queue_capacity` plain tasks (idle workers steal from the
/// others) and one of `queue_capacity` keyed tasks. Tasks must be callable as `f()`; their
/// results are ignored (use async() to get one). A task that throws is counted as failed and its
/// exception goes to the error handler; the worker carries on.
/// Submitting with a blocking call from inside a task can deadlock when every queue is full
/// and every worker does the same; tasks should prefer try_submit().
class WorkerPool {
 public:
  using Stats = WorkerPoolStats;
  using Options = WorkerPoolOptions;

  /// The most worker threads a pool accepts.
  static constexpr std::size_t max_threads = 4096;

  /// Starts `threads` workers, each with two queues of `queue_capacity` tasks (plain and keyed),
  /// and two priority lanes of `queue_capacity` tasks shared by all of them.
  /// Throws: std::invalid_argument when `threads` is not in [1, max_threads], `queue_capacity`
  /// not in [1, herald::max_capacity] or options.max_bypass is 0; std::system_error when a thread
  /// cannot be started (the ones already started are stopped first).
  WorkerPool(std::size_t threads, std::size_t queue_capacity, Options options = {})
      : core_(make_core(threads, queue_capacity, std::move(options))) {
    threads_.reserve(threads);
    try {
      for (std::size_t i = 0; i < threads; ++i)
        threads_.emplace_back([core = core_, i] { core->run(i); });
    } catch (...) {
      shutdown();
      throw;
    }
  }

  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  /// Calls shutdown(). From inside one of this pool's tasks it joins every other worker and
  /// detaches the calling one, which runs the rest of its own queues and then exits; the shared
  /// state lives until that last worker is gone.
  ~WorkerPool() {
    core_->begin_shutdown();
    const std::lock_guard lock(join_mutex_);
    const std::thread::id self = std::this_thread::get_id();
    for (std::thread& t : threads_) {
      if (!t.joinable()) continue;
      if (t.get_id() == self) {
        t.detach();
      } else {
        t.join();
      }
    }
  }

  /// Queues `f` if some worker's plain queue has room; false when all are full or the pool is
  /// shut down (`f` has then been moved into a task that was destroyed).
  /// Thread-safety: any thread. Throws: what constructing the task from `f` throws.
  template <detail::PoolCallable F>
  bool try_submit(F&& f) {
    Task task(std::forward<F>(f));
    return core_->submit_plain(task, Wait::none, nullptr);
  }

  /// Queues `f`, waiting for room while the queues are full (back-pressure); false when the pool
  /// is shut down before or while waiting.
  /// Blocks: while every queue is full (then it waits on the queue chosen round-robin).
  /// Thread-safety: any thread. Throws: what constructing the task from `f` throws.
  template <detail::PoolCallable F>
  bool submit(F&& f) {
    Task task(std::forward<F>(f));
    return core_->submit_plain(task, Wait::block, nullptr);
  }

  /// As submit(f), but gives up (returns false) once `stop` is requested; an already requested
  /// stop rejects the task even when there is room.
  /// Blocks: while every queue is full, until a stop request.
  template <detail::PoolCallable F>
  bool submit(F&& f, std::stop_token stop) {
    if (stop.stop_requested()) return false;
    Task task(std::forward<F>(f));
    return core_->submit_plain(task, Wait::stop, &stop);
  }

  /// Queues `f` in the lane of `priority`: Priority::normal is submit(f); high and low go to
  /// the pool's lanes (each holds `queue_capacity` tasks), which every worker serves before /
  /// after its own work, with aging (WorkerPoolOptions::max_bypass). False when the pool is
  /// shut down.
  /// Blocks: while the lane is full (normal: as submit(f)).
  /// Throws: std::invalid_argument for a value that is not a Priority; what constructing the
  /// task from `f` throws.
  template <detail::PoolCallable F>
  bool submit(F&& f, Priority priority) {
    Task task(std::forward<F>(f));
    return core_->submit(task, priority, Wait::block, nullptr);
  }

  /// As submit(f, priority), but returns false at once when the lane is full (`f` has then been
  /// moved into a task that was destroyed).
  template <detail::PoolCallable F>
  bool try_submit(F&& f, Priority priority) {
    Task task(std::forward<F>(f));
    return core_->submit(task, priority, Wait::none, nullptr);
  }

  /// As submit(f, priority), but gives up (returns false) once `stop` is requested.
  template <detail::PoolCallable F>
  bool submit(F&& f, Priority priority, std::stop_token stop) {
    if (stop.stop_requested()) return false;
    Task task(std::forward<F>(f));
    return core_->submit(task, priority, Wait::stop, &stop);
  }

  /// Runs `f` on the pool and returns a future of its result. An exception thrown by `f` goes
  /// into the future (the task counts as completed; the error handler is not called). After
  /// shutdown the task is rejected and the future is broken: get() throws std::future_error
  /// (std::future_errc::broken_promise); async itself does not throw for that.
  /// ThreadSanitizer note: the worker drops its reference to a stored exception after get() may
  /// have rethrown it; libstdc++ orders that with a reference count TSan does not see, so reading
  /// the exception while the task is finishing can be reported as a race that is not one.
  /// Blocks: as submit(f). Throws: what constructing the task throws.
  template <detail::PoolCallable F, class R = std::invoke_result_t<std::decay_t<F>&>>
  std::future<R> async(F&& f) {
    std::promise<R> promise;
    std::future<R> future = promise.get_future();
    submit([fn = std::decay_t<F>(std::forward<F>(f)), p = std::move(promise)]() mutable {
      try {
        if constexpr (std::is_void_v<R>) {
          fn();
          p.set_value();
        } else {
          p.set_value(fn());
        }
      } catch (...) {
        p.set_exception(std::current_exception());
      }
    });
    return future;
  }

  /// Queues `f` behind every earlier task submitted with an equal key, so that tasks of one key
  /// run one at a time, in submission order (one worker, chosen by hashing the key, runs them);
  /// tasks of other keys run in parallel. `Key` is an integer, an enum or any std::hash-able
  /// type. False when the pool is shut down.
  /// Blocks: while that worker's keyed queue is full.
  /// Thread-safety: any thread; order is per submitting thread (or otherwise ordered submits).
  template <class Key, detail::PoolCallable F>
  bool submit_keyed(const Key& key, F&& f) {
    return core_->submit_keyed(core_->key_index(key), std::forward<F>(f), Wait::block, nullptr);
  }

  /// As submit_keyed(key, f), but returns false at once when that worker's keyed queue is full.
  template <class Key, detail::PoolCallable F>
  bool try_submit_keyed(const Key& key, F&& f) {
    return core_->submit_keyed(core_->key_index(key), std::forward<F>(f), Wait::none, nullptr);
  }

  /// As submit_keyed(key, f), but gives up (returns false) once `stop` is requested.
  /// Blocks: while that worker's keyed queue is full, until a stop request.
  template <class Key, detail::PoolCallable F>
  bool submit_keyed(const Key& key, F&& f, std::stop_token stop) {
    if (stop.stop_requested()) return false;
    return core_->submit_keyed(core_->key_index(key), std::forward<F>(f), Wait::stop, &stop);
  }

  /// Runs `f` on a worker once `delay` has passed (<= 0: as soon as a worker looks; a huge one:
  /// practically never), unless cancelled first through the returned handle or by a stop
  /// request on `stop`. No thread per timer: the timers live in one heap of the pool, and one
  /// idle worker parks until the earliest deadline (the others are not woken for timers).
  /// Fire time: the deadline plus a wake-up (~10-50 us), later while every worker is busy (a
  /// worker looks at the timers between tasks).
  /// Shutdown: pending timers are abandoned, not run early: `f` is destroyed unrun (its
  /// destructor runs), the handle's status() says TimerStatus::abandoned and stats() counts it
  /// in timers_abandoned. After shutdown the timer is refused (status() refused, `f` destroyed).
  /// Thread-safety: any thread, tasks included. Throws: std::bad_alloc, what constructing the
  /// task from `f` throws.
  template <class Rep, class Period, detail::PoolCallable F>
  TimerHandle schedule_after(std::chrono::duration<Rep, Period> delay, F&& f,
                             std::stop_token stop = {}) {
    return schedule_at(detail::timer_deadline(delay), std::forward<F>(f), std::move(stop));
  }

  /// As schedule_after, at the steady_clock time point `when` (in the past: as soon as a worker
  /// looks).
  template <detail::PoolCallable F>
  TimerHandle schedule_at(std::chrono::steady_clock::time_point when, F&& f,
                          std::stop_token stop = {}) {
    Task task(std::forward<F>(f));
    return core_->schedule_at(when, std::move(task), stop);
  }

  /// Stops accepting tasks, runs every task already accepted, and joins the workers.
  /// Idempotent. Called from inside one of this pool's tasks it only stops accepting and returns
  /// (a worker cannot wait for itself); the remaining tasks still run, and the destructor or a
  /// later shutdown() from another thread joins.
  /// Blocks: until the workers have drained the queues and exited (not from a worker).
  void shutdown() {
    core_->begin_shutdown();
    if (on_worker_thread()) return;
    const std::lock_guard lock(join_mutex_);
    for (std::thread& t : threads_)
      if (t.joinable()) t.join();
  }

  /// Executor concept (executor.hpp): as submit(task).
  bool execute(Task&& task) { return core_->submit_plain(task, Wait::block, nullptr); }
  /// Executor concept: as try_submit(task), but a refused `task` is left intact.
  bool try_execute(Task& task) { return core_->submit_plain(task, Wait::none, nullptr); }
  /// Executor concept, lanes: as submit(task, priority).
  bool execute(Task&& task, Priority priority) {
    return core_->submit(task, priority, Wait::block, nullptr);
  }
  /// Executor concept, lanes: as try_submit(task, priority), but a refused `task` is left intact.
  bool try_execute(Task& task, Priority priority) {
    return core_->submit(task, priority, Wait::none, nullptr);
  }
  /// Executor concept: as on_worker_thread().
  [[nodiscard]] bool running_in_this_thread() const noexcept { return on_worker_thread(); }
  /// Executor concept: the pool's shared state, which handler subscriptions hold on to. After
  /// the pool is shut down or destroyed it refuses every task, and those subscriptions close
  /// with CloseReason::executor_stopped instead of touching freed memory.
  [[nodiscard]] std::shared_ptr<detail::PoolCore> shared_executor() const noexcept { return core_; }

  /// True once shutdown() or the destructor has begun: every submission fails from then on.
  [[nodiscard]] bool is_shut_down() const noexcept { return core_->stopping(); }

  /// Replaces the handler that receives the exceptions of throwing tasks (empty: none).
  /// Thread-safety: any thread; a task failing concurrently sees the old or the new handler.
  void set_error_handler(std::function<void(std::exception_ptr)> handler) {
    core_->set_error_handler(std::move(handler));
  }

  /// The counters (see WorkerPoolStats for how exact they are).
  /// Complexity: O(threads).
  [[nodiscard]] Stats stats() const noexcept { return core_->stats(); }

  /// True when called from one of this pool's worker threads.
  [[nodiscard]] bool on_worker_thread() const noexcept {
    return detail::current_pool_worker().pool == core_.get();
  }

  [[nodiscard]] std::size_t thread_count() const noexcept { return core_->size(); }

 private:
  using Wait = detail::PoolCore::Wait;

  static std::shared_ptr<detail::PoolCore> make_core(std::size_t threads, std::size_t capacity,
                                                     Options options) {
    if (threads == 0 || threads > max_threads) {
      throw std::invalid_argument("herald::WorkerPool: threads is " + std::to_string(threads) +
                                  "; it must be in [1, " + std::to_string(max_threads) + "]");
    }
    if (capacity == 0 || capacity > max_capacity) {
      throw std::invalid_argument("herald::WorkerPool: queue_capacity is " +
                                  std::to_string(capacity) + "; it must be in [1, " +
                                  std::to_string(max_capacity) + "]");
    }
    if (options.max_bypass == 0) {
      throw std::invalid_argument(
          "herald::WorkerPool: max_bypass is 0; it must be at least 1 (how many higher-priority "
          "dispatches may pass a waiting task)");
    }
    return std::make_shared<detail::PoolCore>(threads, capacity, std::move(options.on_error),
                                              options.max_bypass);
  }

  std::shared_ptr<detail::PoolCore> core_;
  std::mutex join_mutex_;  // one joiner at a time; later shutdown() callers wait for it
  std::vector<std::thread> threads_;
};

}  // namespace herald
