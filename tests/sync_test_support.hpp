// Helpers shared by the tests of the sync tools (task_group, weighted_semaphore, circuit_breaker,
// dedup_window, rate_limiter): a manual clock to inject, a gate, and a bounded handshake on
// state that another thread changes.
#pragma once

#include <atomic>
#include <chrono>
#include <latch>
#include <thread>

namespace herald_test {

/// A steady_clock time point that moves only when the test says so. Safe to read from any
/// thread; `fn()` gives the std::function the tools take as their clock.
class ManualClock {
 public:
  using Clock = std::chrono::steady_clock;

  Clock::time_point now() const noexcept {
    return Clock::time_point(Clock::duration(ticks_.load(std::memory_order_acquire)));
  }
  template <class Rep, class Period>
  void advance(std::chrono::duration<Rep, Period> d) noexcept {
    ticks_.fetch_add(std::chrono::duration_cast<Clock::duration>(d).count(),
                     std::memory_order_acq_rel);
  }
  auto fn() const {
    return [this] { return now(); };
  }

 private:
  // Far from zero, so that "now minus an age" never goes below the epoch.
  std::atomic<Clock::rep> ticks_{
      std::chrono::duration_cast<Clock::duration>(std::chrono::hours(24)).count()};
};

/// Waits (yielding) until `pred()` holds or `timeout` passes; returns pred(). A handshake on
/// state that another thread changes, bounded so that a bug fails the test instead of hanging
/// it; never a substitute for the synchronisation being tested.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return pred();
    std::this_thread::yield();
  }
  return true;
}

/// Lets other threads run for a while: gives a bug (a barging waiter, a second transition) a
/// chance to show before the test checks it did not happen. Never used as synchronisation.
inline void let_others_run() {
  for (int i = 0; i < 2000; ++i)
    std::this_thread::yield();
}

/// A one-shot gate that threads wait on until the test opens it (idempotent).
struct Gate {
  std::latch opened{1};
  std::atomic<bool> done{false};
  void open() {
    if (!done.exchange(true)) opened.count_down();
  }
  void wait() { opened.wait(); }
};

/// Opens a gate when the scope ends, also when a failed REQUIRE leaves it early, so that
/// threads blocked on it can be joined. Declare it after the threads' owner.
struct OpenOnExit {
  Gate& gate;
  ~OpenOnExit() { gate.open(); }
};

}  // namespace herald_test
