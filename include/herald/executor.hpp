// Executors: what runs the handlers of handler subscriptions. The `Executor` concept names what
// herald needs of one, `ExecutorRef` erases its type, and two executors come with herald:
// `inline_executor` (the handler runs inside publish, like a signal/slot library) and
// `dedicated_thread` (each subscription gets a thread of its own). `WorkerPool` models the
// concept too, and so can a user's own executor (an asio strand, a GUI event loop):
//
//     struct GuiLoop {
//       bool execute(herald::Task&& task) { post_to_gui(std::move(task)); return true; }
//     };
//     GuiLoop gui;
//     auto h = broker.subscribe("ui.>", on_update, gui);   // handlers run on the GUI thread
//
// A handler subscription posts one task at a time (a "strand" that drains the subscription's
// queue, then posts itself again if more arrived), so an executor needs no ordering of its own.
#pragma once

#include <herald/bounded_queue.hpp>
#include <herald/detail/timer_queue.hpp>
#include <herald/detail/unique_function.hpp>
#include <herald/policy.hpp>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <memory>
#include <optional>
#include <stop_token>
#include <thread>
#include <type_traits>
#include <utility>

namespace herald {

/// A move-only callable with no arguments: what executors run.
using Task = detail::UniqueFunction<void()>;

/// An executor runs tasks: `e.execute(std::move(task))` takes ownership of `task` and runs it
/// later (or now), once. It returns void (always accepted) or bool (false: refused, e.g. shut
/// down; the task is destroyed unrun). It may block while the executor is full.
///
/// Optional members herald uses when present:
/// - `bool try_execute(Task& task)`: never blocks; on false `task` is left intact;
/// - `bool running_in_this_thread() const`: true on the executor's own threads, so that a task
///   posting to a full executor from inside it runs the work itself instead of waiting for room
///   only it could make;
/// - `bool execute(Task&& task, Priority)` and `bool try_execute(Task& task, Priority)`: lanes;
///   a handler subscription schedules its strand with SubscribeOptions::priority (WorkerPool
///   has them; without them the priority is ignored);
/// - `static constexpr bool runs_inline = true`: execute() runs the task before returning;
/// - `void watch(std::weak_ptr<ExecutorListener>)`: the executor calls `executor_stopped()` on
///   each live listener once it stops accepting work (at once if it already has); a handler
///   subscription then closes (CloseReason::executor_stopped) instead of accepting messages that
///   nothing would run;
/// - `std::shared_ptr<X> shared_executor()`, X an Executor: herald runs tasks on that X and keeps
///   it alive, so the user's handle may be destroyed while subscriptions still refer to it (then
///   X refuses work, and those subscriptions close with CloseReason::executor_stopped).
///   WorkerPool has it. An executor without it must outlive the subscriptions it runs.
/// - `TimerHandle schedule_at(std::chrono::steady_clock::time_point, Task&&, const
///   std::stop_token&)`: runs the task on the executor at that time (handler retries wait for
///   their backoff this way, without holding a thread). WorkerPool has it; for the others herald
///   uses one process-wide timer thread, which hands the task to `execute()` when it is due.
template <class E>
concept Executor = requires(E& e, Task&& task) {
  e.execute(std::move(task));
};

/// Told when an executor that it watches stops accepting work (see Executor, `watch`).
class ExecutorListener {
 public:
  virtual void executor_stopped() noexcept = 0;

 protected:
  ~ExecutorListener() = default;
};

/// Runs handlers inside `publish`, in the publisher's thread (like a signal/slot library), still
/// one invocation at a time per subscription, in publish order.
struct InlineExecutor {
  static constexpr bool runs_inline = true;
  bool execute(Task&& task) const {
    task();
    return true;
  }
};
inline constexpr InlineExecutor inline_executor{};

/// Gives each handler subscription a thread of its own (started at subscribe, ended by
/// unsubscribe). Not an executor itself: each subscription makes its own ThreadExecutor.
struct DedicatedThread {};
inline constexpr DedicatedThread dedicated_thread{};

/// One thread running the tasks posted to it, in order. The thread's state is shared with the
/// thread itself, so the handle may be destroyed from inside one of its tasks (the thread then
/// finishes what is queued and exits on its own).
/// Thread-safety: execute/try_execute from any thread; stop() and the destructor from one.
class ThreadExecutor {
 public:
  /// Starts the thread. `capacity`: tasks that may wait (a strand needs two: one running, one
  /// posted by it).
  /// Throws: std::system_error when no thread can be started; std::bad_alloc.
  explicit ThreadExecutor(std::size_t capacity = 4)
      : tasks_(std::make_shared<BoundedQueue<Task>>(capacity)), thread_([tasks = tasks_] {
          while (std::optional<Task> task = tasks->pop())
            (*task)();
        }) {}
  ThreadExecutor(const ThreadExecutor&) = delete;
  ThreadExecutor& operator=(const ThreadExecutor&) = delete;
  ~ThreadExecutor() { stop(); }

  /// Queues `task`, waiting while the queue is full; false once stopped.
  bool execute(Task&& task) { return tasks_->push(std::move(task)); }
  /// Queues `task` if there is room; on false `task` is left intact.
  bool try_execute(Task& task) { return tasks_->try_push(std::move(task)); }
  [[nodiscard]] bool running_in_this_thread() const noexcept {
    return thread_.get_id() == std::this_thread::get_id();
  }

  /// Refuses new tasks; the thread runs what is queued, then exits. Joins it, unless called from
  /// it (then it detaches it). Idempotent.
  void stop() noexcept {
    tasks_->close();
    if (!thread_.joinable()) return;
    if (running_in_this_thread()) {
      thread_.detach();
    } else {
      thread_.join();
    }
  }

 private:
  std::shared_ptr<BoundedQueue<Task>> tasks_;
  std::thread thread_;
};

class ExecutorRef;

namespace detail {

/// The operations ExecutorRef erases, one table per executor type.
struct ExecutorOps {
  bool (*execute)(void* target, Task&& task, Priority priority);
  bool (*try_execute)(void* target, Task& task, Priority priority);
  bool (*running_here)(void* target);
  void (*watch)(void* target, std::weak_ptr<ExecutorListener> listener);
  TimerHandle (*schedule)(void* target, const ExecutorRef& self,
                          std::chrono::steady_clock::time_point when, Task&& task,
                          const std::stop_token& stop, std::shared_ptr<void> keep);
  bool runs_inline;
};

template <class E>
E& executor_from(void* target) noexcept {
  if constexpr (std::is_same_v<std::remove_const_t<E>, InlineExecutor>) {
    static E instance{};  // stateless, and the caller's object may be a temporary
    return instance;
  } else {
    return *static_cast<E*>(target);
  }
}

template <class E>
bool execute_on(void* target, Task&& task, Priority priority) {
  E& e = executor_from<E>(target);
  if constexpr (requires { e.execute(std::move(task), priority); }) {
    return static_cast<bool>(e.execute(std::move(task), priority));
  } else if constexpr (std::is_void_v<decltype(e.execute(std::move(task)))>) {
    e.execute(std::move(task));
    return true;
  } else {
    return static_cast<bool>(e.execute(std::move(task)));
  }
}

template <class E>
bool try_execute_on(void* target, Task& task, Priority priority) {
  E& e = executor_from<E>(target);
  if constexpr (requires {
                  { e.try_execute(task, priority) } -> std::convertible_to<bool>;
                }) {
    return e.try_execute(task, priority);
  } else if constexpr (requires {
                         { e.try_execute(task) } -> std::convertible_to<bool>;
                       }) {
    return e.try_execute(task);
  } else {
    return execute_on<E>(target, std::move(task), priority);  // may consume `task` when refused
  }
}

template <class E>
bool running_on(void* target) {
  if constexpr (requires(const E& e) {
                  { e.running_in_this_thread() } -> std::convertible_to<bool>;
                }) {
    return executor_from<E>(target).running_in_this_thread();
  } else {
    return false;
  }
}

template <class E>
void watch_on(void* target, std::weak_ptr<ExecutorListener> listener) {
  if constexpr (requires(E & e) { e.watch(std::move(listener)); }) {
    executor_from<E>(target).watch(std::move(listener));
  }
}

/// Runs `task` on `self` at `when`: through the executor's own timers if it has them, else
/// through the process's timer thread, which hands the task to the executor when it is due.
template <class E>
TimerHandle schedule_on(void* target, const ExecutorRef& self,
                        std::chrono::steady_clock::time_point when, Task&& task,
                        const std::stop_token& stop, std::shared_ptr<void> keep);

template <class E>
constexpr bool runs_inline() noexcept {
  if constexpr (requires { E::runs_inline; }) {
    return E::runs_inline;
  } else {
    return false;
  }
}

/// What ExecutorRef binds to by reference: a non-const Executor other than ExecutorRef itself.
template <class E, class Ref>
concept BindableExecutor = Executor<E> && !std::is_const_v<E> && !std::is_same_v<E, Ref>;

template <class E>
inline constexpr ExecutorOps executor_ops{&execute_on<E>, &try_execute_on<E>, &running_on<E>,
                                          &watch_on<E>,   &schedule_on<E>,    runs_inline<E>()};

}  // namespace detail

/// A type-erased reference to an Executor (the executor must outlive every use), built
/// implicitly from what a user passes to `Broker::subscribe`: a WorkerPool&, inline_executor,
/// dedicated_thread, or any Executor.
class ExecutorRef {
 public:
  template <detail::BindableExecutor<ExecutorRef> E>
  ExecutorRef(E& executor) noexcept  // NOLINT(google-explicit-constructor)
      : target_(std::addressof(executor)), ops_(&detail::executor_ops<E>) {
    if constexpr (requires { executor.shared_executor(); }) {
      auto shared = executor.shared_executor();
      using X = typename decltype(shared)::element_type;
      static_assert(Executor<X>, "shared_executor() must return a std::shared_ptr to an Executor");
      target_ = shared.get();
      ops_ = &detail::executor_ops<X>;
      keep_ = std::move(shared);
    }
  }
  ExecutorRef(const InlineExecutor&) noexcept  // NOLINT(google-explicit-constructor)
      : target_(nullptr), ops_(&detail::executor_ops<const InlineExecutor>) {}
  ExecutorRef(const DedicatedThread&) noexcept  // NOLINT(google-explicit-constructor)
      : target_(nullptr), ops_(nullptr) {}

  /// True for dedicated_thread: the subscription must make its own ThreadExecutor and rebind.
  [[nodiscard]] bool wants_own_thread() const noexcept { return ops_ == nullptr; }
  /// True when execute() runs the task before returning.
  [[nodiscard]] bool runs_inline() const noexcept { return ops_->runs_inline; }

  /// See the Executor concept; `priority` picks the lane of an executor that has lanes (a
  /// WorkerPool) and is ignored by the others. Throws: what the executor throws.
  bool execute(Task&& task, Priority priority = Priority::normal) const {
    return ops_->execute(target_, std::move(task), priority);
  }
  /// Never blocks when the executor has try_execute; false: refused, and `task` is intact unless
  /// the executor has no try_execute (then it may have been consumed).
  bool try_execute(Task& task, Priority priority = Priority::normal) const {
    return ops_->try_execute(target_, task, priority);
  }
  [[nodiscard]] bool running_in_this_thread() const { return ops_->running_here(target_); }
  /// Asks the executor to tell `listener` when it stops accepting work (if it can tell).
  /// Throws: std::bad_alloc.
  void watch(std::weak_ptr<ExecutorListener> listener) const {
    ops_->watch(target_, std::move(listener));
  }
  /// Runs `task` on the executor at `when` (see the Executor concept, `schedule_at`), unless
  /// cancelled through the handle or `stop` first. If the executor refuses the task when it is
  /// due, the task is destroyed unrun. `keep` is held until the task has been handed over: the
  /// owner of an executor that does not keep itself alive (a subscription's ThreadExecutor),
  /// which the task may release once it runs. Throws: std::bad_alloc.
  TimerHandle schedule_at(std::chrono::steady_clock::time_point when, Task&& task,
                          const std::stop_token& stop = {}, std::shared_ptr<void> keep = {}) const {
    return ops_->schedule(target_, *this, when, std::move(task), stop, std::move(keep));
  }

 private:
  void* target_;
  const detail::ExecutorOps* ops_;
  std::shared_ptr<void> keep_;  // the shared executor, for those that hand one out
};

namespace detail {

template <class E>
TimerHandle schedule_on(void* target, const ExecutorRef& self,
                        std::chrono::steady_clock::time_point when, Task&& task,
                        const std::stop_token& stop, std::shared_ptr<void> keep) {
  if constexpr (requires(E & e) { e.schedule_at(when, std::move(task), stop); }) {
    return executor_from<E>(target).schedule_at(when, std::move(task), stop);
  } else {
    // The copy of `self` keeps a shared executor alive until the timer is done with; `keep`
    // keeps the owner of one that is not shared (the task, once handed over, may run and let
    // that owner go while execute() is still returning).
    return shared_timer_thread().schedule(
        when,
        [ref = self, t = std::move(task), keep = std::move(keep)]() mutable {
          if (ref.try_execute(t)) return;
          if (t) ref.execute(std::move(t));
        },
        stop);
  }
}

}  // namespace detail

}  // namespace herald
