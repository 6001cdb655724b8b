// RateLimiter: a token bucket (a rate of tokens per second, up to `burst` saved up), kept as one
// atomic "theoretical arrival time" (the generic cell rate algorithm): the bucket is full when
// that time is in the past, and each token pushes it one interval further. A take is a clock
// read, a load and a CAS; no lock, no background refill.
//
// A blocking acquire reserves its tokens first (it moves the arrival time even into the future)
// and then sleeps until its reservation is due, so waiters are served in the order they reserved
// and the rate holds however late the sleepers wake. A waiter that gives up (stop request) hands
// its reservation back.
#pragma once

#include <herald/detail/cache_line.hpp>
#include <herald/detail/parking.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <utility>

namespace herald {

/// Construction options of a RateLimiter.
struct RateLimiterOptions {
  using Clock = std::chrono::steady_clock;
  /// The time source (empty: steady_clock::now); tests inject a manual clock. Blocking waits
  /// sleep on steady_clock for the time this clock says is left, then read it again.
  std::function<Clock::time_point()> clock{};
};

/// A thread-safe token bucket: `rate` tokens per second, at most `burst` at once.
///
/// ```
/// herald::RateLimiter limiter{100.0, 10};          // 100 notifications/s, bursts of 10
/// if (limiter.try_acquire()) send(n);              // or drop / defer it
/// if (limiter.acquire(1, stop)) send(n);           // wait for a token (false: stopped)
/// ```
/// The bucket starts full. Blocking acquires are served in the order they reserve their tokens,
/// and do not let try_acquire() overtake them: tokens they reserved are no longer available.
/// Thread-safety: every member may be called concurrently.
class RateLimiter {
 public:
  using Options = RateLimiterOptions;
  using Clock = Options::Clock;

  /// Throws: std::invalid_argument when `rate_per_second` is not a positive finite number, is
  /// above 1e9, or so low that `burst` tokens span more than ~36 years; when `burst` <= 0.
  RateLimiter(double rate_per_second, std::int64_t burst, Options options = {})
      : clock_(std::move(options.clock)),
        origin_(read_clock()),
        rate_(checked_rate(rate_per_second)),
        burst_(checked_burst(burst)),
        interval_(interval_for(rate_per_second, burst)),
        burst_ticks_(interval_ * burst) {}

  RateLimiter(const RateLimiter&) = delete;
  RateLimiter& operator=(const RateLimiter&) = delete;

  /// Takes `n` tokens if the bucket holds them now.
  /// Throws: std::invalid_argument when `n` <= 0 or `n` > burst().
  /// Complexity: a clock read, a load and a CAS (lock-free).
  [[nodiscard]] bool try_acquire(std::int64_t n = 1) {
    const std::int64_t cost = cost_of(n, "try_acquire");
    const std::int64_t now = ticks();
    std::int64_t tat = tat_->load(std::memory_order_relaxed);
    for (;;) {
      const std::int64_t next = std::max(tat, now) + cost;
      if (next - now > burst_ticks_) return false;
      // relaxed: the limiter orders nothing but itself; the CAS makes each take exact.
      if (tat_->compare_exchange_weak(tat, next, std::memory_order_relaxed)) return true;
    }
  }

  /// Takes `n` tokens, sleeping until they are due.
  /// Blocks: until then. Throws: std::invalid_argument as try_acquire.
  void acquire(std::int64_t n = 1) { (void)acquire_until(n, detail::Deadline::forever(), {}); }

  /// Takes `n` tokens, sleeping until they are due or `stop` is requested (false: the
  /// reservation is handed back and nothing is taken). An already requested stop returns false
  /// at once, like BoundedQueue::push(v, stop).
  /// Blocks: until then. Throws: std::invalid_argument as try_acquire.
  [[nodiscard]] bool acquire(std::int64_t n, std::stop_token stop) {
    (void)cost_of(n, "acquire");
    if (stop.stop_requested()) return false;
    return acquire_until(n, detail::Deadline::forever(), stop);
  }

  /// Takes `n` tokens if they are due within `timeout`, sleeping until then; false (nothing
  /// taken, nothing reserved) when they would be due later. A timeout <= 0 is try_acquire; a
  /// huge one (duration::max()) waits as long as needed.
  /// Blocks: at most `timeout`. Throws: std::invalid_argument as try_acquire.
  template <class Rep, class Period>
  [[nodiscard]] bool acquire_for(std::int64_t n, std::chrono::duration<Rep, Period> timeout) {
    return acquire_until(n, detail::Deadline::after(timeout), {});
  }

  /// How long until `n` tokens could be taken (zero: now); what a caller that does not block
  /// waits on a timer for (HandlerOptions::rate). Throws: std::invalid_argument as try_acquire.
  [[nodiscard]] std::chrono::nanoseconds time_until_available(std::int64_t n = 1) const {
    const std::int64_t cost = cost_of(n, "time_until_available");
    const std::int64_t now = ticks();
    const std::int64_t due =
        std::max(tat_->load(std::memory_order_relaxed), now) + cost - burst_ticks_;
    return std::chrono::nanoseconds(due <= now ? 0 : (due - now + ticks_per_ns - 1) / ticks_per_ns);
  }

  [[nodiscard]] double rate() const noexcept { return rate_; }
  [[nodiscard]] std::int64_t burst() const noexcept { return burst_; }

  /// Tokens in the bucket right now (negative while blocking acquirers hold reservations).
  [[nodiscard]] double approx_available() const {
    const std::int64_t now = ticks();
    const std::int64_t debt =
        std::max<std::int64_t>(0, tat_->load(std::memory_order_relaxed) - now);
    return static_cast<double>(burst_ticks_ - debt) / static_cast<double>(interval_);
  }

 private:
  // Time in ticks of 1/16 ns since construction: sub-nanosecond intervals keep high rates
  // exact (3e6/s is 5333.3 ticks, 333.3 ns), and int64 still spans 18 years.
  static constexpr std::int64_t ticks_per_ns = 16;
  static constexpr double ticks_per_second = 1e9 * ticks_per_ns;
  static constexpr std::int64_t max_span = std::int64_t{1} << 60;  // ~36 years of ticks

  static double checked_rate(double r) {
    if (!(r > 0.0) || !std::isfinite(r) || r > 1e9)
      throw std::invalid_argument(
          "herald::RateLimiter: rate must be a positive number of tokens per second up to 1e9, "
          "got " +
          std::to_string(r));
    return r;
  }

  static std::int64_t checked_burst(std::int64_t b) {
    if (b <= 0)
      throw std::invalid_argument("herald::RateLimiter: burst must be >= 1, got " +
                                  std::to_string(b));
    return b;
  }

  static std::int64_t interval_for(double rate, std::int64_t burst) {
    const double interval = std::round(ticks_per_second / rate);
    if (interval * static_cast<double>(burst) >= static_cast<double>(max_span))
      throw std::invalid_argument("herald::RateLimiter: rate " + std::to_string(rate) +
                                  "/s is too low for a burst of " + std::to_string(burst));
    return static_cast<std::int64_t>(interval);
  }

  std::int64_t cost_of(std::int64_t n, const char* what) const {
    if (n <= 0 || n > burst_)
      throw std::invalid_argument(std::string("herald::RateLimiter::") + what +
                                  ": n must be in [1, burst = " + std::to_string(burst_) +
                                  "], got " + std::to_string(n));
    return n * interval_;
  }

  Clock::time_point read_clock() const { return clock_ ? clock_() : Clock::now(); }

  std::int64_t ticks() const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(read_clock() - origin_).count() *
           ticks_per_ns;
  }

  bool acquire_until(std::int64_t n, const detail::Deadline& deadline,
                     const std::stop_token& stop) {
    const std::int64_t cost = cost_of(n, "acquire");
    // Reserve: move the arrival time on by our cost, unless the tokens would be due only after
    // the deadline (then take nothing).
    const std::int64_t now = ticks();
    std::int64_t tat = tat_->load(std::memory_order_relaxed);
    std::int64_t due = 0;
    for (;;) {
      const std::int64_t next = std::max(tat, now) + cost;
      due = next - burst_ticks_;
      if (due > now && !deadline.is_forever()) {
        if (deadline.passed()) return false;
        const auto left = deadline.when() - Clock::now();
        if (std::chrono::duration_cast<std::chrono::nanoseconds>(left).count() * ticks_per_ns <
            due - now)
          return false;
      }
      if (tat_->compare_exchange_weak(tat, next, std::memory_order_relaxed)) break;
    }
    if (due <= now) return true;
    if (sleep_until_due(due, stop)) return true;
    // Stopped: hand the tokens back. Later reservations keep their (now conservative) due times;
    // new takers may use what we returned.
    tat_->fetch_sub(cost, std::memory_order_relaxed);
    return false;
  }

  /// Sleeps until ticks() >= due; false if `stop` is requested first.
  bool sleep_until_due(std::int64_t due, const std::stop_token& stop) const {
    // Each sleeper parks alone, so a stop request wakes only its own thread. No spinning: the
    // wake-up time is known, and being late does not change the rate (the due times are fixed).
    detail::EventCount ec;
    const detail::SpinPolicy no_spin{0, 0};
    auto never = [] { return false; };
    for (;;) {
      const std::int64_t left = due - ticks();
      if (left <= 0) return true;
      if (stop.stop_requested()) return false;
      const auto wait = std::chrono::nanoseconds((left + ticks_per_ns - 1) / ticks_per_ns);
      const auto status =
          detail::wait_for_progress(ec, never, never, detail::Deadline::after(wait), stop, no_spin);
      if (status == detail::WaitStatus::stopped) return false;
    }
  }

  const std::function<Clock::time_point()> clock_;
  const Clock::time_point origin_;
  const double rate_;
  const std::int64_t burst_;
  const std::int64_t interval_;     // ticks per token
  const std::int64_t burst_ticks_;  // interval_ * burst_: how far ahead the arrival time may run
  // The theoretical arrival time, in ticks since origin_: the bucket is full when it is <= now.
  detail::CachePadded<std::atomic<std::int64_t>> tat_{std::in_place, std::int64_t{0}};
};

}  // namespace herald
