// Helpers shared by the tests of the sync tools (task_group, weighted_semaphore, circuit_breaker,
// dedup_window, rate_limiter): a manual clock to inject; the rest comes from test_support.hpp.
#pragma once

#include "test_support.hpp"

#include <atomic>
#include <chrono>
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

/// Lets other threads run for a while: gives a bug (a barging waiter, a second transition) a
/// chance to show before the test checks it did not happen. Never used as synchronisation.
inline void let_others_run() {
  for (int i = 0; i < 2000; ++i)
    std::this_thread::yield();
}

}  // namespace herald_test
