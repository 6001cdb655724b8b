// TaskGroup: structured fan-out on a WorkerPool. Spawn tasks, wait for all of them, get the
// first error back; the first error also requests stop on a std::stop_source every task can see
// (Go's errgroup.WithContext, with an optional limit on tasks in flight like errgroup.SetLimit).
//
// One 64-bit word counts the group: tasks in flight in the low half, notifications owed in the
// high half. The spawn that takes the count off zero owes one (a second increment, only then);
// the task that brings it back to zero learns so from its decrement, notifies, then pays it.
// Every other task leaves with one decrement and touches nothing of the group afterwards: no
// CAS loop on the line every spawn and every finish write. Under a limit each finishing task
// notifies, so it enters the owed count as it leaves the in-flight one, in one addition. The
// destructor waits for both halves to reach zero, so no task touches a destroyed group. (The
// owed half is modular: a task may pay before its spawner has noted the debt.) Blocking (wait(),
// spawn() at the limit) uses the EventCount protocol of detail/parking.hpp; a notify costs a single
// load while nobody waits.
//
// Two modes, chosen when the group is made:
// - direct (made outside the pool): each task is one pool task; nothing else per task.
// - helping (made on one of the pool's workers, i.e. a nested group inside a task): tasks wait
//   in the group's own queue and the pool gets a token per task that runs whichever is next.
//   wait() runs queued tasks itself instead of blocking the worker. Without this, tasks that
//   each make a group and wait for it would block every worker while the nested tasks they wait
//   for sit in the pool's queues: a deadlock as soon as there are more of them than workers.
#pragma once

#include <herald/detail/cache_line.hpp>
#include <herald/detail/parking.hpp>
#include <herald/detail/unique_function.hpp>
#include <herald/worker_pool.hpp>

#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <thread>
#include <type_traits>
#include <utility>

namespace herald {

namespace detail {

/// What a TaskGroup accepts: callable once decayed as `f(std::stop_token)` or `f()`.
template <class F>
concept TaskGroupCallable = std::move_constructible<std::decay_t<F>> &&
    std::constructible_from<std::decay_t<F>, F> &&
    (std::invocable<std::decay_t<F>&, std::stop_token> || std::invocable<std::decay_t<F>&>);

/// The groups whose tasks the calling thread is running, innermost first (a task may run
/// another inline, so a thread can be inside several tasks of several groups at once).
struct TaskGroupFrame {
  const void* group;
  TaskGroupFrame* outer;
};

inline TaskGroupFrame*& current_task_group_frame() noexcept {
  static thread_local TaskGroupFrame* top = nullptr;
  return top;
}

/// Where a task refused by WorkerPool::try_submit is handed back (see TaskGroup::submit_direct).
inline void*& task_group_rescue_slot() noexcept {
  static thread_local void* slot = nullptr;
  return slot;
}

/// A TaskGroup's state: counts, limit, first error, stop source, and (helping mode) the queue.
/// Shared with the pool's tokens in helping mode, so it may outlive the TaskGroup object.
class TaskGroupCore {
 public:
  static constexpr std::size_t unlimited = std::numeric_limits<std::size_t>::max();
  enum class Reserve { wait, try_once };

  /// Counts one more task in flight, under the limit; false when it is reached and `how` says
  /// not to wait.
  bool reserve(Reserve how) {
    if (limit_.load(std::memory_order_relaxed) == unlimited) {
      count_one();
      return true;
    }
    auto attempt = [this] {
      std::uint64_t s = state_->load(std::memory_order_relaxed);
      while (in_flight(s) < limit_.load(std::memory_order_relaxed)) {
        if (state_->compare_exchange_weak(s, s + 1, std::memory_order_relaxed)) {
          if (in_flight(s) == 0) owe();
          return true;
        }
      }
      return false;
    };
    if (attempt()) return true;
    if (how == Reserve::try_once) return false;
    (void)wait_for_progress(
        slots_, attempt,
        [this] { return in_flight(load()) < limit_.load(std::memory_order_seq_cst); },
        Deadline::forever(), {});
    return true;
  }

  /// Counts a task regardless of the limit (inline runs; see TaskGroup).
  void count_one() noexcept {
    // relaxed: the pool's queue (or running it on this thread) orders it before the task.
    if (in_flight(state_->fetch_add(1, std::memory_order_relaxed)) == 0) owe();
  }

  /// Runs a task's callable as a task of this group: errors recorded, stop requested.
  template <class F>
  void run(F& f) noexcept {
    TaskGroupFrame frame{this, current_task_group_frame()};
    current_task_group_frame() = &frame;
    try {
      if constexpr (std::invocable<F&, std::stop_token>) {
        f(stop_.get_token());
      } else {
        f();
      }
    } catch (...) {
      if (!claimed_error_.exchange(true, std::memory_order_relaxed)) {
        error_ = std::current_exception();
        failed_.store(true, std::memory_order_release);
      }
      stop_.request_stop();
    }
    current_task_group_frame() = frame.outer;
  }

  /// One task (or an unused reservation) is done.
  void finish() noexcept {
    // seq_cst: the event-count protocol (detail/parking.hpp) between this change and a waiter's
    // check of it before parking.
    if (limit_.load(std::memory_order_relaxed) == unlimited) {
      // Most tasks are not the last: one decrement, and the group may be gone right after it.
      const std::uint64_t s = state_->fetch_sub(1, std::memory_order_seq_cst);
      if (in_flight(s) != 1) return;
      idle_.notify_all();  // the last: the destructor waits for the debt paid below
      state_->fetch_sub(owed, std::memory_order_release);
      return;
    }
    // Under a limit every finishing task wakes a spawner: it joins the owed count as it leaves
    // the in-flight one, so that the destructor waits until it has left idle_ and slots_.
    const std::uint64_t s = state_->fetch_add(owed - 1, std::memory_order_seq_cst);
    const bool last = in_flight(s) == 1;
    if (last) idle_.notify_all();
    slots_.notify_one();
    state_->fetch_sub(last ? 2 * owed : owed, std::memory_order_release);
  }

  bool inside_own_task() const noexcept {
    for (auto* f = current_task_group_frame(); f != nullptr; f = f->outer)
      if (f->group == this) return true;
    return false;
  }

  /// Blocks until no task is in flight (direct mode).
  void wait_idle() {
    (void)wait_until(idle_, [this] { return in_flight(load()) == 0; });
  }

  /// Until no task is in flight, runs queued tasks on this thread, and blocks only while every
  /// remaining task is running elsewhere (helping mode).
  void help_until_idle() {
    for (;;) {
      if (run_one()) continue;
      if (in_flight(load()) == 0) return;
      (void)wait_until(idle_, [this] {
        return in_flight(load()) == 0 || queued_.load(std::memory_order_seq_cst) != 0;
      });
    }
  }

  /// Waits until finishing tasks have left notify (nanoseconds: no allocation, no syscall unless
  /// a thread is parked) and every debt is paid, so that the memory can go.
  void wait_notifiers_gone() const noexcept {
    while ((load() >> owed_shift) != 0)
      std::this_thread::yield();
  }

  /// Helping mode: queues a counted task, then wakes a helper that may be waiting for one.
  void push(UniqueFunction<void()> job) {
    {
      const std::lock_guard lock(queue_mutex_);
      queue_.push_back(std::move(job));
      queued_.store(queue_.size(), std::memory_order_seq_cst);
    }
    idle_.notify_all();
  }

  /// Helping mode: runs the next queued task, if any.
  bool run_one() noexcept {
    UniqueFunction<void()> job;
    {
      const std::lock_guard lock(queue_mutex_);
      if (queue_.empty()) return false;
      job = std::move(queue_.front());
      queue_.pop_front();
      queued_.store(queue_.size(), std::memory_order_seq_cst);
    }
    job();  // a GroupTask: noexcept
    return true;
  }

  void rethrow_if_failed() const {
    if (failed_.load(std::memory_order_acquire)) std::rethrow_exception(error_);
  }

  void set_limit(std::size_t n) {
    limit_.store(n, std::memory_order_seq_cst);
    slots_.notify_all();  // a raised limit may let waiting spawners through
  }
  std::size_t limit() const noexcept { return limit_.load(std::memory_order_relaxed); }
  std::stop_source& stop() noexcept { return stop_; }
  std::size_t approx_in_flight() const noexcept { return in_flight(load()); }

 private:
  // state_: tasks in flight in the low 32 bits, notifications owed above (modulo 2^32).
  static constexpr unsigned owed_shift = 32;
  static constexpr std::uint64_t in_flight_mask = (std::uint64_t{1} << owed_shift) - 1;
  static constexpr std::uint64_t owed = std::uint64_t{1} << owed_shift;

  void owe() noexcept { state_->fetch_add(owed, std::memory_order_relaxed); }

  std::uint64_t load() const noexcept { return state_->load(std::memory_order_seq_cst); }
  static std::size_t in_flight(std::uint64_t s) noexcept {
    return static_cast<std::size_t>(s & in_flight_mask);
  }

  // Written by every spawn and every finish: alone on its line.
  CachePadded<std::atomic<std::uint64_t>> state_{std::in_place, std::uint64_t{0}};
  std::atomic<std::size_t> limit_{unlimited};
  EventCount idle_;   // waiters and helpers: in flight == 0 (or, helping, a task queued)
  EventCount slots_;  // spawn() at the limit: in flight < limit
  std::stop_source stop_;
  std::atomic<bool> claimed_error_{false};  // one task wins the right to write error_
  std::atomic<bool> failed_{false};         // error_ is written (release) and readable
  std::exception_ptr error_;
  // Helping mode only. A mutex around a deque: the queue is touched once per task on each side
  // and nested groups are not the hot path (direct mode has no queue at all).
  std::mutex queue_mutex_;
  std::deque<UniqueFunction<void()>> queue_;
  std::atomic<std::size_t> queued_{0};
};

/// What runs a task: the core, the callable, and the rescue key that lets a task refused by the
/// pool hand its callable back (see TaskGroup::submit_direct).
template <class F>
class GroupTask {
 public:
  template <class G>
  GroupTask(TaskGroupCore* core, G&& f, std::optional<F>* rescue = nullptr)
      : core_(core), fn_(std::in_place, std::forward<G>(f)), rescue_(rescue) {}
  GroupTask(GroupTask&& o) noexcept(std::is_nothrow_move_constructible_v<F>)
      : core_(std::exchange(o.core_, nullptr)),
        fn_(std::move(o.fn_)),
        rescue_(std::exchange(o.rescue_, nullptr)) {}
  GroupTask& operator=(GroupTask&&) = delete;
  ~GroupTask() {
    // Destroyed without having run. The pool runs every task it accepted, so this is the
    // refused one, destroyed inside try_submit on the spawning thread, which has pointed the
    // thread-local rescue slot at our storage for the duration of the call. The comparison
    // makes any other case a plain destruction.
    if (core_ != nullptr && rescue_ != nullptr && task_group_rescue_slot() == rescue_ && fn_) {
      try {
        rescue_->emplace(std::move(*fn_));
      } catch (...) {  // a throwing move: the spawner finds the slot empty and gives up
      }
    }
  }
  void operator()() noexcept {
    TaskGroupCore* core = std::exchange(core_, nullptr);
    core->run(*fn_);
    fn_.reset();  // the captures die before the group counts the task finished
    core->finish();
  }

 private:
  TaskGroupCore* core_;
  std::optional<F> fn_;
  std::optional<F>* rescue_;
};

}  // namespace detail

/// A set of tasks run on a WorkerPool and joined together.
///
/// ```
/// herald::TaskGroup group(pool);
/// for (const Url& url : urls)
///   group.spawn([&, url](std::stop_token stop) { fetch(url, stop); });
/// group.wait();  // joins every task; rethrows the first exception one of them threw
/// ```
/// A task is `f()` or `f(std::stop_token)`; the token is the group's stop_token(). The first task
/// that throws records its exception and requests stop; every spawned task still runs (tasks
/// observe the token to give up early). wait() joins and rethrows that first exception (on every
/// call: a failed group stays failed). The destructor joins too (nothing is left detached) but
/// drops the error.
///
/// Inside the pool, nothing blocks a worker:
/// - Spawning from one of the pool's workers never waits: when the limit is reached or the
///   pool's queues are full, the new task runs inline, inside spawn(). (The slots and queue room
///   it would wait for are freed only by workers, which may all be waiting the same way.) Inline
///   runs add no concurrency (the spawning task is itself in flight), so the limit still bounds
///   parallelism.
/// - A group made on one of the pool's workers (a nested group, inside a task) is a helping
///   group: its wait() and destructor run its queued tasks on the waiting worker.
/// - Calling wait() from one of the group's own tasks would wait for itself: std::logic_error.
/// What remains the caller's business: a group made outside the pool and waited for inside one
/// of its tasks of another group blocks that worker (make the group inside the task instead).
/// Thread-safety: every member may be called concurrently; a group must outlive its tasks,
/// which its destructor guarantees.
class TaskGroup {
 public:
  /// set_limit() value meaning "no limit" (the default).
  static constexpr std::size_t unlimited = detail::TaskGroupCore::unlimited;

  /// A group whose tasks run on `pool`, which must outlive the group (and, for a helping group,
  /// the pool's tokens: a pool outlives what it queued). Made on one of `pool`'s workers, it is
  /// a helping group (see above).
  /// Throws: std::bad_alloc.
  explicit TaskGroup(WorkerPool& pool)
      : pool_(pool),
        core_(std::make_shared<detail::TaskGroupCore>()),
        helping_(pool.on_worker_thread()) {}

  TaskGroup(const TaskGroup&) = delete;
  TaskGroup& operator=(const TaskGroup&) = delete;

  /// Joins every task (the first error, if any, is dropped: call wait() to see it).
  /// Destroying a group from one of its own tasks would wait for itself: std::terminate.
  ~TaskGroup() {
    if (core_->inside_own_task()) std::terminate();
    if (helping_) {
      core_->help_until_idle();
    } else {
      core_->wait_idle();
    }
    core_->wait_notifiers_gone();
  }

  /// Runs `f` on the pool. Waits while the limit is reached and while the pool's queues are
  /// full, except on a worker thread of the pool, where it runs `f` inline instead (see above).
  /// Blocks: as above. Throws: std::runtime_error when the pool is shut down (off the pool's
  /// workers; on a worker the task runs inline); what copying/moving `f` throws.
  template <detail::TaskGroupCallable F>
  void spawn(F&& f) {
    const bool on_worker = pool_.on_worker_thread();
    using Reserve = detail::TaskGroupCore::Reserve;
    if (!core_->reserve(on_worker ? Reserve::try_once : Reserve::wait)) {
      run_inline(std::forward<F>(f));  // at the limit, on a worker
      return;
    }
    if (helping_) {
      submit_helping(std::forward<F>(f));
    } else {
      submit_direct(std::forward<F>(f), on_worker);
    }
  }

  /// Runs `f` on the pool if a slot under the limit is free and the pool's queues have room;
  /// false otherwise (`f` was not run; if passed as an rvalue it may have been moved from).
  /// A helping group queues the task itself, so only the limit can refuse.
  /// Blocks: never. Throws: what copying/moving `f` throws.
  template <detail::TaskGroupCallable F>
  [[nodiscard]] bool try_spawn(F&& f) {
    if (!core_->reserve(detail::TaskGroupCore::Reserve::try_once)) return false;
    if (helping_) {
      submit_helping(std::forward<F>(f));
      return true;
    }
    Reservation r{core_.get()};
    if (!pool_.try_submit(detail::GroupTask<std::decay_t<F>>(core_.get(), std::forward<F>(f))))
      return false;
    r.core = nullptr;  // the task owns the reservation now
    return true;
  }

  /// Waits until every spawned task has finished, then rethrows the first exception a task
  /// threw (if any). Tasks spawned while waiting are waited for too. A helping group runs its
  /// queued tasks on the calling thread meanwhile.
  /// Blocks: until the group is idle.
  /// Throws: the first task's exception; std::logic_error when called from one of the group's
  /// own tasks (it would wait for itself).
  void wait() {
    if (core_->inside_own_task())
      throw std::logic_error(
          "herald::TaskGroup::wait: called from one of the group's own tasks, which would wait "
          "for itself");
    if (helping_) {
      core_->help_until_idle();
    } else {
      core_->wait_idle();
    }
    core_->rethrow_if_failed();
  }

  /// Limits the tasks in flight (queued or running) to `n`; `unlimited` lifts the limit.
  /// Lowering it below the tasks already in flight stops new spawns until enough finish.
  /// Throws: std::invalid_argument when `n` is 0 (nothing could ever run).
  void set_limit(std::size_t n) {
    if (n == 0) throw std::invalid_argument("herald::TaskGroup::set_limit: limit must be >= 1");
    core_->set_limit(n);
  }

  [[nodiscard]] std::size_t limit() const noexcept { return core_->limit(); }

  /// The token every task sees; stop is requested by the first failure or by request_stop().
  [[nodiscard]] std::stop_token stop_token() const noexcept { return core_->stop().get_token(); }

  /// Requests stop (tasks observing the token give up early); true if this call made the
  /// request. Does not cancel anything by itself: spawned tasks still run.
  bool request_stop() noexcept { return core_->stop().request_stop(); }

  /// Tasks spawned and not yet finished (changes as soon as it is read).
  [[nodiscard]] std::size_t approx_in_flight() const noexcept { return core_->approx_in_flight(); }

  /// Whether this is a helping group (made on one of the pool's workers).
  [[nodiscard]] bool is_helping() const noexcept { return helping_; }

 private:
  /// Gives back a reservation that no task took over (an exception, a refused submission).
  struct Reservation {
    detail::TaskGroupCore* core;
    ~Reservation() {
      if (core != nullptr) core->finish();
    }
  };

  /// Direct mode: one pool task per task; on a worker, runs it inline when the pool refuses it.
  template <class G>
  void submit_direct(G&& f, bool on_worker) {
    using F = std::decay_t<G>;
    Reservation r{core_.get()};
    if (!on_worker) {
      if (!pool_.submit(detail::GroupTask<F>(core_.get(), std::forward<G>(f))))
        throw std::runtime_error("herald::TaskGroup::spawn: the WorkerPool is shut down");
      r.core = nullptr;
      return;
    }
    // try_submit destroys a task it refuses. To run it inline instead, the task's destructor
    // moves the callable into `rescued` while the thread-local slot points there; no copy, no
    // allocation on the accepted path.
    std::optional<F> rescued;
    void*& slot = detail::task_group_rescue_slot();
    void* const outer_slot = std::exchange(slot, &rescued);
    bool accepted = false;
    try {
      accepted = pool_.try_submit(detail::GroupTask<F>(core_.get(), std::forward<G>(f), &rescued));
    } catch (...) {
      slot = outer_slot;
      throw;
    }
    slot = outer_slot;
    if (accepted) {
      r.core = nullptr;  // the task owns the reservation now
      return;
    }
    if (!rescued) return;  // the callable's move threw inside the rescue: nothing left to run
    detail::GroupTask<F> task(core_.get(), std::move(*rescued));  // may throw: r undoes
    r.core = nullptr;
    task();  // already counted: runs and finishes
  }

  /// Helping mode: the task waits in the group's queue; a token tells the pool to run one.
  template <class G>
  void submit_helping(G&& f) {
    Reservation r{core_.get()};
    core_->push(detail::GroupTask<std::decay_t<G>>(core_.get(), std::forward<G>(f)));
    r.core = nullptr;
    // The token co-owns the core: it may run after this group is gone (its task was run by a
    // helper meanwhile) and then finds the queue empty. A refused token (full or shut-down
    // pool) costs nothing: helpers run the task.
    (void)pool_.try_submit([core = core_] { (void)core->run_one(); });
  }

  template <class G>
  void run_inline(G&& f) {
    detail::GroupTask<std::decay_t<G>> task(core_.get(), std::forward<G>(f));
    core_->count_one();  // beyond the limit: see the class comment
    task();
  }

  WorkerPool& pool_;
  const std::shared_ptr<detail::TaskGroupCore> core_;
  const bool helping_;
};

}  // namespace herald
