// A flaky downstream behind a CircuitBreaker. A price service answers in ~1 ms, then has an
// outage during which every call times out after 5 ms. The breaker opens after 3 failures in a
// row; while it is open, calls fail fast (CircuitOpen) and the caller serves its cached price
// instead of waiting on a dead service; after the cooldown a probe call goes through, and once
// the service is back the breaker closes again. The state-change callback logs each transition.
#include <herald/circuit_breaker.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

/// The downstream: healthy, except between outage_begin and outage_end.
class PriceService {
 public:
  PriceService(Clock::time_point outage_begin, Clock::time_point outage_end)
      : begin_(outage_begin), end_(outage_end) {}

  double quote(int symbol) {
    ++calls_;
    const auto now = Clock::now();
    if (now >= begin_ && now < end_) {
      std::this_thread::sleep_for(5ms);  // a slow failure: what a breaker saves callers from
      throw std::runtime_error("price service: timeout");
    }
    std::this_thread::sleep_for(1ms);
    return 100.0 + symbol;
  }

  int calls() const { return calls_.load(); }

 private:
  Clock::time_point begin_, end_;
  std::atomic<int> calls_{0};
};

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

}  // namespace

int main() {
  const auto t0 = Clock::now();
  PriceService service(t0 + 100ms, t0 + 400ms);

  std::mutex log_mutex;  // the callback runs on the thread that caused the change
  std::vector<std::string> transitions;
  herald::CircuitBreaker breaker({
      .consecutive_failures = 3,
      .cooldown = 50ms,
      .half_open_probes = 1,
      .half_open_successes = 2,
      .on_state_change =
          [&](herald::CircuitState from, herald::CircuitState to) {
            const std::lock_guard lock(log_mutex);
            transitions.push_back(fmt::format("{}->{}", to_string(from), to_string(to)));
            fmt::print("  [{:6.1f} ms] breaker {} -> {}\n", ms_since(t0), to_string(from),
                       to_string(to));
          },
  });

  // The caller: one quote every ~2 ms for 700 ms, a cached price when the call fails.
  double cached = 0;
  int served_fresh = 0, served_cached_after_error = 0, served_cached_fast = 0;
  int calls_during_outage_window = 0;
  double slowest_fast_fail_ms = 0;
  while (Clock::now() - t0 < 700ms) {
    const auto start = Clock::now();
    const bool in_outage = start - t0 >= 100ms && start - t0 < 400ms;
    try {
      cached = breaker.call([&] { return service.quote(42); });
      ++served_fresh;
    } catch (const herald::CircuitOpen&) {
      ++served_cached_fast;  // rejected without touching the service
      slowest_fast_fail_ms = std::max(slowest_fast_fail_ms, ms_since(start));
    } catch (const std::runtime_error&) {
      ++served_cached_after_error;  // the service failed (slowly)
    }
    if (in_outage) ++calls_during_outage_window;
    std::this_thread::sleep_for(2ms);
  }

  const auto s = breaker.stats();
  fmt::print(
      "served {} fresh quotes, {} cached after a failed call, {} cached at once by the open "
      "breaker (slowest {:.2f} ms); last price {}\n",
      served_fresh, served_cached_after_error, served_cached_fast, slowest_fast_fail_ms, cached);
  fmt::print(
      "breaker stats: {} calls, {} successes, {} failures, {} rejections, {} state changes\n",
      s.calls, s.successes, s.failures, s.rejections, s.state_changes);
  fmt::print("the service saw {} calls; the caller made {} during the 300 ms outage window\n",
             service.calls(), calls_during_outage_window);

  // What must have happened: the breaker opened, shed load while open, probed, and closed once
  // the service was back; it ends closed.
  auto seen = [&](const char* t) {
    return std::find(transitions.begin(), transitions.end(), t) != transitions.end();
  };
  const bool ok = seen("closed->open") && seen("open->half_open") && seen("half_open->closed") &&
                  s.state == herald::CircuitState::closed && served_cached_fast > 0 &&
                  s.rejections == static_cast<std::uint64_t>(served_cached_fast) &&
                  static_cast<int>(s.failures) == served_cached_after_error &&
                  service.calls() == served_fresh + served_cached_after_error;
  return ok ? 0 : 1;
}
