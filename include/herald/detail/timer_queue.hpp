// Timers: tasks that run at a steady_clock time point, cancellable by handle or by stop_token.
//
// TimerQueue is the structure (a binary heap of deadlines under one mutex) and knows nothing of
// threads: its owner asks it for due tasks and for the earliest deadline, which it publishes in
// one atomic word so that "are there timers at all?" is a load. WorkerPool owns one and its
// workers run what is due (one idle worker parks until the earliest deadline); TimerThread is one
// thread over a TimerQueue, the fallback for executors without timers of their own (one for the
// whole process, started on first use: never a thread per timer).
//
// Cancelling is lazy: a cancelled entry stays in the heap until its deadline or until cancelled
// entries are half the heap (then the heap is rebuilt without them), so cancel() is a CAS and
// never takes the heap's lock.
#pragma once

#include <herald/detail/parking.hpp>
#include <herald/detail/unique_function.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <thread>
#include <utility>
#include <vector>

namespace herald {

/// Where a timer is in its life (TimerHandle::status()).
enum class TimerStatus : std::uint8_t {
  pending,    ///< waiting for its time
  fired,      ///< its task has started (or finished)
  cancelled,  ///< cancel() or a stop request came first: the task was destroyed unrun
  abandoned,  ///< its owner shut down first: the task was destroyed unrun
  refused,    ///< never accepted (the owner was already shut down): the task was destroyed unrun
};

namespace detail {

/// Counters of a timer queue, shared with its entries so that a cancel through a handle that
/// outlives the queue still counts somewhere valid.
struct TimerCounts {
  std::atomic<std::uint64_t> scheduled{0};
  std::atomic<std::uint64_t> fired{0};
  std::atomic<std::uint64_t> cancelled{0};
  std::atomic<std::uint64_t> abandoned{0};
};

/// One timer: its task and its state. The task is touched only by whoever moves `state` out of
/// pending (one CAS decides between firing, cancelling and abandoning).
struct TimerSlot {
  struct CancelOnStop {
    TimerSlot* slot;
    void operator()() const noexcept { slot->finish(TimerStatus::cancelled); }
  };

  TimerSlot(UniqueFunction<void()>&& t, std::shared_ptr<TimerCounts> c) noexcept
      : task(std::move(t)), counts(std::move(c)) {}

  /// Moves a pending timer to `to` (cancelled or abandoned) and destroys its task; false when it
  /// was no longer pending.
  bool finish(TimerStatus to) noexcept {
    auto expected = TimerStatus::pending;
    if (!state.compare_exchange_strong(expected, to, std::memory_order_acq_rel)) return false;
    (to == TimerStatus::cancelled ? counts->cancelled : counts->abandoned)
        .fetch_add(1, std::memory_order_relaxed);
    UniqueFunction<void()> unrun(std::move(task));  // destroyed here, outside any lock
    return true;
  }

  /// Claims a pending timer for firing: its task, or empty when it was cancelled first.
  std::optional<UniqueFunction<void()>> claim() noexcept {
    auto expected = TimerStatus::pending;
    if (!state.compare_exchange_strong(expected, TimerStatus::fired, std::memory_order_acq_rel))
      return std::nullopt;
    counts->fired.fetch_add(1, std::memory_order_relaxed);
    return std::optional<UniqueFunction<void()>>(std::move(task));
  }

  std::atomic<TimerStatus> state{TimerStatus::pending};
  UniqueFunction<void()> task;
  std::shared_ptr<TimerCounts> counts;
  // Last, so that it is destroyed first: its destructor waits for a callback running on another
  // thread, which still uses the members above.
  std::optional<std::stop_callback<CancelOnStop>> on_stop;
};

}  // namespace detail

/// A scheduled timer (WorkerPool::schedule_after / schedule_at). Copyable; every copy refers to
/// the same timer. An empty handle (default-constructed) refers to none.
/// Thread-safety: every member may be called from any thread.
class TimerHandle {
 public:
  TimerHandle() = default;
  explicit TimerHandle(std::shared_ptr<detail::TimerSlot> slot) noexcept : slot_(std::move(slot)) {}

  /// Cancels the timer if it has not fired yet: its task is destroyed unrun. True when this call
  /// cancelled it; false when it had fired, was cancelled or abandoned already, or the handle is
  /// empty. A task already running is not waited for.
  bool cancel() noexcept { return slot_ && slot_->finish(TimerStatus::cancelled); }

  /// Where the timer is (refused for an empty handle).
  [[nodiscard]] TimerStatus status() const noexcept {
    return slot_ ? slot_->state.load(std::memory_order_acquire) : TimerStatus::refused;
  }

  /// True when the timer was accepted (whatever happened to it since).
  explicit operator bool() const noexcept {
    return slot_ && slot_->state.load(std::memory_order_acquire) != TimerStatus::refused;
  }

 private:
  std::shared_ptr<detail::TimerSlot> slot_;
};

namespace detail {

/// A heap of timers under one mutex, with the earliest deadline published in an atomic word.
/// Thread-safety: every member may be called concurrently.
class TimerQueue {
 public:
  using clock = std::chrono::steady_clock;

  /// Ticks of `next_due()` when no timer is queued.
  static constexpr clock::rep none = INT64_MAX;

  TimerQueue() : counts_(std::make_shared<TimerCounts>()) {}
  TimerQueue(const TimerQueue&) = delete;
  TimerQueue& operator=(const TimerQueue&) = delete;
  ~TimerQueue() { close(); }

  /// Queues `task` to be handed out by pop_due() once `when` has come; a stop request on `stop`
  /// cancels it. Refused (the task destroyed, the handle's status refused) once closed.
  /// `became_first` says whether it is now the earliest deadline (the owner may need to wake
  /// the thread that waits for the earliest one).
  /// Throws: std::bad_alloc (then `task` is untouched).
  TimerHandle schedule(clock::time_point when, UniqueFunction<void()>&& task,
                       const std::stop_token& stop, bool& became_first) {
    auto slot = std::make_shared<TimerSlot>(std::move(task), counts_);
    became_first = false;
    {
      const std::lock_guard lock(mutex_);
      if (closed_) {
        slot->state.store(TimerStatus::refused, std::memory_order_relaxed);
        UniqueFunction<void()> unrun(std::move(slot->task));
        return TimerHandle(std::move(slot));
      }
      maybe_compact();
      heap_.push_back(Entry{when.time_since_epoch().count(), next_seq_++, slot});
      std::push_heap(heap_.begin(), heap_.end(), later);
      became_first = heap_.front().slot == slot;
      publish_next_due();
    }
    counts_->scheduled.fetch_add(1, std::memory_order_relaxed);
    // After the push: a stop requested already runs the callback here and cancels at once.
    if (stop.stop_possible()) slot->on_stop.emplace(stop, TimerSlot::CancelOnStop{slot.get()});
    return TimerHandle(std::move(slot));
  }

  /// The earliest queued deadline in clock ticks (`none` when empty); cancelled entries count
  /// until they are dropped, so it may be early, never late. One seq_cst load.
  [[nodiscard]] clock::rep next_due() const noexcept {
    return next_due_.load(std::memory_order_seq_cst);
  }

  /// Takes one timer whose deadline is at or before `now` and returns its task (the timer is
  /// then fired), skipping cancelled ones; empty when none is due.
  std::optional<UniqueFunction<void()>> pop_due(clock::time_point now) {
    const clock::rep t = now.time_since_epoch().count();
    for (;;) {
      std::shared_ptr<TimerSlot> slot;
      {
        const std::lock_guard lock(mutex_);
        if (heap_.empty() || heap_.front().when > t) return std::nullopt;
        std::pop_heap(heap_.begin(), heap_.end(), later);
        slot = std::move(heap_.back().slot);
        heap_.pop_back();
        publish_next_due();
      }
      if (auto task = slot->claim()) return task;
    }
  }

  /// Refuses timers from now on and abandons the pending ones (their tasks are destroyed
  /// unrun, here, outside the lock). Idempotent. Returns how many were abandoned.
  std::size_t close() noexcept {
    std::vector<Entry> left;
    {
      const std::lock_guard lock(mutex_);
      closed_ = true;
      left.swap(heap_);
      publish_next_due();
    }
    std::size_t n = 0;
    for (Entry& e : left)
      n += e.slot->finish(TimerStatus::abandoned) ? 1 : 0;
    return n;
  }

  [[nodiscard]] const TimerCounts& counts() const noexcept { return *counts_; }

  /// Timers accepted and neither fired, cancelled nor abandoned (approximate while they move).
  [[nodiscard]] std::uint64_t pending() const noexcept {
    const std::uint64_t done = counts_->fired.load(std::memory_order_relaxed) +
                               counts_->cancelled.load(std::memory_order_relaxed) +
                               counts_->abandoned.load(std::memory_order_relaxed);
    const std::uint64_t all = counts_->scheduled.load(std::memory_order_relaxed);
    return all > done ? all - done : 0;
  }

 private:
  struct Entry {
    clock::rep when;
    std::uint64_t seq;  // equal deadlines fire in scheduling order
    std::shared_ptr<TimerSlot> slot;
  };
  static bool later(const Entry& a, const Entry& b) noexcept {
    return a.when != b.when ? a.when > b.when : a.seq > b.seq;
  }

  // Drops cancelled entries once the cancels since the last compaction reach half the heap:
  // a scan of n entries at most once per n/2 cancels, so amortised O(1) per cancel, and a wave
  // of cancelled far-future timers cannot pin memory until their deadlines.
  void maybe_compact() {
    const std::uint64_t cancelled = counts_->cancelled.load(std::memory_order_relaxed);
    if (heap_.size() < 64 || (cancelled - cancelled_seen_) * 2 < heap_.size()) return;
    cancelled_seen_ = cancelled;
    std::erase_if(heap_, [](const Entry& e) {
      return e.slot->state.load(std::memory_order_acquire) != TimerStatus::pending;
    });
    std::make_heap(heap_.begin(), heap_.end(), later);
  }

  void publish_next_due() noexcept {
    next_due_.store(heap_.empty() ? none : heap_.front().when, std::memory_order_seq_cst);
  }

  std::mutex mutex_;
  std::vector<Entry> heap_;
  std::uint64_t next_seq_ = 0;
  std::uint64_t cancelled_seen_ = 0;
  bool closed_ = false;
  std::atomic<clock::rep> next_due_{none};
  std::shared_ptr<TimerCounts> counts_;
};

/// One thread running the tasks of a TimerQueue at their time: the timers of executors that have
/// none of their own. It parks on an event count until the earliest deadline, woken early only
/// when a timer earlier than that is scheduled.
class TimerThread {
 public:
  TimerThread() : thread_([this] { run(); }) {}
  TimerThread(const TimerThread&) = delete;
  TimerThread& operator=(const TimerThread&) = delete;
  /// Abandons the pending timers and joins the thread.
  ~TimerThread() {
    stop_.store(true, std::memory_order_seq_cst);
    queue_.close();
    changed_.fetch_add(1, std::memory_order_seq_cst);
    wakeup_.wake_all();
    thread_.join();
  }

  /// Runs `task` on this thread at `when` (see TimerQueue::schedule).
  TimerHandle schedule(std::chrono::steady_clock::time_point when, UniqueFunction<void()>&& task,
                       const std::stop_token& stop) {
    bool first = false;
    TimerHandle h = queue_.schedule(when, std::move(task), stop, first);
    if (first) {
      changed_.fetch_add(1, std::memory_order_seq_cst);
      wakeup_.notify_one();
    }
    return h;
  }

  [[nodiscard]] const TimerQueue& queue() const noexcept { return queue_; }

 private:
  void run() noexcept {
    while (!stop_.load(std::memory_order_seq_cst)) {
      const std::uint64_t seen = changed_.load(std::memory_order_seq_cst);
      while (auto task = queue_.pop_due(std::chrono::steady_clock::now())) {
        try {
          (*task)();
        } catch (...) {  // a throwing timer task must not end the thread
        }
      }
      const TimerQueue::clock::rep due = queue_.next_due();
      const Deadline deadline = due == TimerQueue::none
                                    ? Deadline::forever()
                                    : Deadline::at(std::chrono::steady_clock::time_point(
                                          std::chrono::steady_clock::duration(due)));
      wait_until(
          wakeup_,
          [&] {
            return changed_.load(std::memory_order_seq_cst) != seen ||
                   stop_.load(std::memory_order_seq_cst);
          },
          deadline, {}, SpinPolicy{.pauses = 0, .yields = 0});
    }
  }

  TimerQueue queue_;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> changed_{0};  // bumped when an earlier deadline arrives
  EventCount wakeup_;
  std::thread thread_;
};

/// The steady_clock time point `delay` from now: <= 0 (or NaN) is now, and a delay too large to
/// add without overflow (over ~95 years) is the last representable time point before `none`.
template <class Rep, class Period>
std::chrono::steady_clock::time_point timer_deadline(std::chrono::duration<Rep, Period> delay) {
  using clock = std::chrono::steady_clock;
  const auto now = clock::now();
  if (!(delay > delay.zero())) return now;
  if (std::chrono::duration<double>(delay).count() >= 3.0e9)
    return clock::time_point(clock::duration(TimerQueue::none - 1));
  return now + std::chrono::ceil<clock::duration>(delay);
}

/// The process's fallback timer thread, started on first use and never destroyed (timers may be
/// scheduled from static destructors; its pending tasks are simply never run at exit).
inline TimerThread& shared_timer_thread() {
  static TimerThread* const timers = new TimerThread();
  return *timers;
}

}  // namespace detail
}  // namespace herald
