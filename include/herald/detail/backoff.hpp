// Backoff between retries: "decorrelated jitter". Each delay is drawn uniformly from
// [initial, 3 x the previous delay], capped at max: it grows about geometrically like exponential
// backoff, but retries of many clients spread out instead of arriving in synchronised waves.
// Used by handler retries and by the NATS bridge's reconnects.
#pragma once

#include <herald/detail/hashing.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>

namespace herald::detail {

/// Draws successive delays. Not thread-safe: one instance per retrying sequence (or guard it).
class DecorrelatedJitter {
 public:
  using duration = std::chrono::nanoseconds;

  /// `initial` and `max` are clamped to >= 0 and max to >= initial (validation belongs to the
  /// caller, which can name its own option in the error).
  DecorrelatedJitter(duration initial, duration max, std::uint64_t seed) noexcept
      : initial_(std::max(initial, duration::zero())),
        max_(std::max(max, initial_)),
        previous_(initial_),
        state_(seed) {}

  /// The next delay, in [initial, min(max, 3 x previous)].
  duration next() noexcept {
    const std::int64_t lo = initial_.count();
    const std::int64_t prev = previous_.count();
    const std::int64_t tripled =
        prev > std::numeric_limits<std::int64_t>::max() / 3 ? max_.count() : 3 * prev;
    const std::int64_t hi = std::max(lo, std::min(max_.count(), tripled));
    // 0 <= lo <= hi, so the span is in [1, 2^63]: no overflow in unsigned arithmetic.
    const auto span = static_cast<std::uint64_t>(hi - lo) + 1;
    state_ += 0x9E3779B97F4A7C15u;  // splitmix64: a Weyl sequence through the mixer
    previous_ = duration(lo + static_cast<std::int64_t>(mix64(state_) % span));
    return previous_;
  }

  /// The delay after `previous` (a sequence whose state is kept by the caller: one generator
  /// may serve many retrying messages).
  duration next_after(duration previous) noexcept {
    previous_ = previous;
    return next();
  }

  /// Starts over from `initial` (e.g. after a success).
  void reset() noexcept { previous_ = initial_; }

 private:
  duration initial_;
  duration max_;
  duration previous_;
  std::uint64_t state_;

 public:
  [[nodiscard]] duration initial() const noexcept { return initial_; }
};

}  // namespace herald::detail
