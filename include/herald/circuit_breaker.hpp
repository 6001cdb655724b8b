// CircuitBreaker: stop calling a downstream that keeps failing, try it again after a cooldown.
//
//   closed --(N consecutive failures, or failure ratio over a rolling window)--> open
//   open --(cooldown elapsed, on the next allow())--> half_open
//   half_open --(enough probe successes)--> closed      half_open --(a probe fails)--> open
//
// One 64-bit word holds the state, the half-open probes in flight and a generation that every
// transition bumps. allow() on the closed path is that word's load and nothing else; the permit
// it returns carries the word, so an outcome recorded after the breaker has moved on (a call
// admitted while closed that fails after the breaker opened) is counted in the statistics but
// cannot move the new state: the generation no longer matches. Transitions are rare and are made
// under a mutex, which also serialises the state-change callback.
#pragma once

#include <herald/detail/cache_line.hpp>
#include <herald/detail/counters.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace herald {

/// The three states of a CircuitBreaker.
enum class CircuitState : std::uint8_t {
  closed,     ///< calls go through; failures are counted
  open,       ///< calls are rejected until the cooldown has elapsed
  half_open,  ///< a bounded number of probe calls go through; their outcome decides
};

[[nodiscard]] constexpr std::string_view to_string(CircuitState s) noexcept {
  switch (s) {
    case CircuitState::closed:
      return "closed";
    case CircuitState::open:
      return "open";
    case CircuitState::half_open:
      return "half_open";
  }
  return "?";
}

/// Thrown by CircuitBreaker::call when the breaker rejects the call.
class CircuitOpen : public std::runtime_error {
 public:
  explicit CircuitOpen(CircuitState state)
      : std::runtime_error(state == CircuitState::open
                               ? "herald::CircuitBreaker: circuit open, call rejected"
                               : "herald::CircuitBreaker: half-open probes busy, call rejected"),
        state_(state) {}
  /// The state that rejected the call (open, or half_open with every probe slot taken).
  [[nodiscard]] CircuitState state() const noexcept { return state_; }

 private:
  CircuitState state_;
};

/// When a CircuitBreaker trips and how it recovers. At least one trip condition must be on.
struct CircuitBreakerOptions {
  using Clock = std::chrono::steady_clock;
  /// Trip after this many failures in a row while closed; 0 turns the condition off.
  std::uint32_t consecutive_failures = 5;
  /// Trip when failures / calls over the rolling window reaches this ratio, in (0, 1]; 0 turns
  /// the condition off.
  double failure_ratio = 0.0;
  /// ... but only once the window holds at least this many calls (>= 1).
  std::uint32_t minimum_calls = 10;
  /// The rolling window: `window_buckets` buckets of `window / window_buckets` each; the oldest
  /// bucket drops out as time moves on. Each bucket counts up to 65535 outcomes of each kind;
  /// beyond that both counts are halved, which keeps the ratio.
  std::chrono::nanoseconds window = std::chrono::seconds(10);
  std::uint32_t window_buckets = 10;
  /// How long the breaker stays open before letting probes through (>= 0).
  std::chrono::nanoseconds cooldown = std::chrono::seconds(5);
  /// Probe calls allowed at the same time while half-open (>= 1).
  std::uint32_t half_open_probes = 1;
  /// Probe successes that close the breaker (>= 1); they may come one after the other.
  std::uint32_t half_open_successes = 1;
  /// Called on every state change, in order, never concurrently (under the breaker's lock, on
  /// the thread that caused it). It may call the breaker back. Exceptions from it are ignored.
  std::function<void(CircuitState from, CircuitState to)> on_state_change{};
  /// Which exceptions thrown through call() count as failures (empty: all of them). The others
  /// are rethrown and count as successes: the downstream answered.
  std::function<bool(const std::exception_ptr&)> is_failure{};
  /// The time source (empty: steady_clock::now); tests inject a manual clock. Read by allow()
  /// only when open, and by record_*() only when the failure ratio is on.
  std::function<Clock::time_point()> clock{};
};

/// Counters of a CircuitBreaker; each is read on its own, so a snapshot under load need not add
/// up exactly.
struct CircuitBreakerStats {
  std::uint64_t calls = 0;          ///< successes + failures + rejections
  std::uint64_t successes = 0;      ///< outcomes recorded as successes
  std::uint64_t failures = 0;       ///< outcomes recorded as failures
  std::uint64_t rejections = 0;     ///< allow() refused (open, or every probe slot busy)
  std::uint64_t state_changes = 0;  ///< transitions made (reset() and trip() included)
  CircuitState state = CircuitState::closed;
};

namespace detail {

/// Successes and failures over a rolling time window of equal buckets. Each bucket is one word:
/// [epoch:32 | failures:16 | successes:16], updated by CAS, so a bucket that is reused for a new
/// epoch is reset and counted into in one step.
class RollingCounts {
 public:
  explicit RollingCounts(std::uint32_t buckets) : buckets_(buckets) {}

  void add(std::uint32_t epoch, bool failure) noexcept {
    std::atomic<std::uint64_t>& b = buckets_[epoch % buckets_.size()];
    std::uint64_t v = b.load(std::memory_order_relaxed);
    std::uint64_t next = 0;
    do {
      std::uint64_t s = 0;
      std::uint64_t f = 0;
      std::uint32_t e = epoch;
      // Same epoch, or a newer one written by a thread whose clock read was later than ours:
      // count into it. An older epoch is a bucket from a past lap of the ring: start afresh.
      if (static_cast<std::int32_t>(epoch_of(v) - epoch) >= 0) {
        e = epoch_of(v);
        s = v & 0xFFFF;
        f = (v >> 16) & 0xFFFF;
      }
      (failure ? f : s) += 1;
      if (s > 0xFFFF || f > 0xFFFF) {  // halve both: the ratio survives, the total saturates
        s = (s + 1) / 2;
        f = (f + 1) / 2;
      }
      next = (std::uint64_t{e} << 32) | (f << 16) | s;
    } while (!b.compare_exchange_weak(v, next, std::memory_order_relaxed));
  }

  struct Totals {
    std::uint64_t successes = 0;
    std::uint64_t failures = 0;
  };

  /// The counts of the buckets within the window ending at `epoch`.
  Totals totals(std::uint32_t epoch) const noexcept {
    Totals t;
    for (const auto& b : buckets_) {
      const std::uint64_t v = b.load(std::memory_order_relaxed);
      if (static_cast<std::uint32_t>(epoch - epoch_of(v)) >= buckets_.size()) continue;
      t.successes += v & 0xFFFF;
      t.failures += (v >> 16) & 0xFFFF;
    }
    return t;
  }

  void clear() noexcept {
    for (auto& b : buckets_)
      b.store(0, std::memory_order_relaxed);
  }

 private:
  static std::uint32_t epoch_of(std::uint64_t v) noexcept {
    return static_cast<std::uint32_t>(v >> 32);
  }
  std::vector<std::atomic<std::uint64_t>> buckets_;
};

}  // namespace detail

/// A thread-safe circuit breaker around calls to one downstream.
///
/// ```
/// herald::CircuitBreaker breaker({.consecutive_failures = 3, .cooldown = 2s});
/// try {
///   auto price = breaker.call([&] { return quotes.fetch(symbol); });
/// } catch (const herald::CircuitOpen&) { /* fail fast: serve a cached price */ }
/// ```
/// The lower-level form: `auto permit = breaker.allow(); if (!permit) ...; try { f();
/// breaker.record_success(permit); } catch (...) { breaker.record_failure(permit); throw; }`.
/// A half-open probe permit destroyed without an outcome frees its probe slot.
/// Thread-safety: every member may be called concurrently.
class CircuitBreaker {
 public:
  using Options = CircuitBreakerOptions;
  using Stats = CircuitBreakerStats;
  using Clock = Options::Clock;

  /// What allow() returns: true when the call may go ahead; then record its outcome with
  /// record_success / record_failure (once). Move-only.
  class Permit {
   public:
    Permit(Permit&& o) noexcept : breaker_(std::exchange(o.breaker_, nullptr)), word_(o.word_) {}
    Permit& operator=(Permit&&) = delete;
    Permit(const Permit&) = delete;
    ~Permit() {
      if (breaker_ != nullptr && state_of(word_) == CircuitState::half_open)
        breaker_->abandon_probe(word_);
    }
    explicit operator bool() const noexcept { return word_ != rejected; }

   private:
    friend class CircuitBreaker;
    Permit(CircuitBreaker* b, std::uint64_t word) noexcept : breaker_(b), word_(word) {}
    CircuitBreaker* breaker_;  // null once recorded (or for a rejection)
    std::uint64_t word_;       // the breaker's word when admitted (generation and state)
  };

  /// Throws: std::invalid_argument for inconsistent options (no trip condition, a ratio outside
  /// [0, 1], a zero bucket count, window or probe count, a negative cooldown).
  explicit CircuitBreaker(Options options = {})
      : options_(validated(std::move(options))),
        window_(options_.window_buckets),
        origin_(now()),
        bucket_ns_(std::max<std::int64_t>(1, options_.window.count() / options_.window_buckets)) {}

  CircuitBreaker(const CircuitBreaker&) = delete;
  CircuitBreaker& operator=(const CircuitBreaker&) = delete;

  /// May a call go ahead? Closed: yes, for the cost of one atomic load. Open: no, until the
  /// cooldown has elapsed; then the breaker turns half-open and admits up to half_open_probes
  /// calls at a time. A refusal is counted as a rejection.
  /// Complexity: one load while closed.
  [[nodiscard]] Permit allow() {
    const std::uint64_t w = word_->load(std::memory_order_acquire);
    if (state_of(w) == CircuitState::closed) [[likely]]
      return Permit(this, w);
    return allow_slow(w);
  }

  /// Records that the call admitted by `permit` succeeded.
  /// Throws: std::invalid_argument when the permit is a rejection or was already recorded.
  void record_success(Permit& permit) { record(permit, false); }

  /// Records that the call admitted by `permit` failed; may trip the breaker (or, for a
  /// half-open probe, open it again).
  /// Throws: std::invalid_argument as record_success.
  void record_failure(Permit& permit) { record(permit, true); }

  /// Runs `f()` if allowed and records its outcome: a return is a success, an exception is a
  /// failure (unless options.is_failure says otherwise) and is rethrown.
  /// Throws: CircuitOpen when the call is rejected (f is not called); whatever f throws.
  template <class F>
  requires(std::invocable<F&>) std::invoke_result_t<F&> call(F&& f) {
    Permit p = allow();
    if (!p) throw CircuitOpen(state_of(word_->load(std::memory_order_relaxed)));
    try {
      if constexpr (std::is_void_v<std::invoke_result_t<F&>>) {
        f();
        record_success(p);
      } else {
        auto result = f();
        record_success(p);
        return result;
      }
    } catch (...) {
      if (p.breaker_ != nullptr) {  // not when record_success itself threw
        if (!options_.is_failure || options_.is_failure(std::current_exception())) {
          record_failure(p);
        } else {
          record_success(p);
        }
      }
      throw;
    }
  }

  /// The current state. While open it says open even after the cooldown, until the next
  /// allow() turns the breaker half-open.
  [[nodiscard]] CircuitState state() const noexcept {
    return state_of(word_->load(std::memory_order_acquire));
  }

  /// How long the breaker will still refuse calls: the rest of the cooldown while open (zero
  /// once it has elapsed: the next allow() admits a probe), zero while closed or half-open.
  /// Handler subscriptions waiting on the breaker (HandlerOptions::breaker) sleep this long.
  [[nodiscard]] std::chrono::nanoseconds retry_after() const {
    if (state() != CircuitState::open) return std::chrono::nanoseconds::zero();
    const std::int64_t left = open_until_ns_.load(std::memory_order_acquire) - now_ns();
    return std::chrono::nanoseconds(left > 0 ? left : 0);
  }

  /// Closes the breaker now (clears the failure counts), whatever its state.
  void reset() { transition_from_any(CircuitState::closed); }

  /// Opens the breaker now, for a full cooldown, whatever its state.
  void trip() { transition_from_any(CircuitState::open); }

  [[nodiscard]] Stats stats() const noexcept {
    Stats s;
    s.successes = counters_.sum(successes_field);
    s.failures = counters_.sum(failures_field);
    s.rejections = counters_.sum(rejections_field);
    s.calls = s.successes + s.failures + s.rejections;
    s.state_changes = state_changes_.load(std::memory_order_relaxed);
    s.state = state();
    return s;
  }

 private:
  // word_: [generation:32 | probes in flight:30 | state:2].
  static constexpr std::uint64_t state_mask = 3;
  static constexpr std::uint64_t probe_unit = 4;
  static constexpr std::uint64_t probe_mask = ((std::uint64_t{1} << 30) - 1) << 2;
  static constexpr unsigned generation_shift = 32;
  static constexpr std::uint64_t rejected = ~std::uint64_t{0};  // no real word has state 3

  static constexpr std::size_t successes_field = 0;
  static constexpr std::size_t failures_field = 1;
  static constexpr std::size_t rejections_field = 2;

  static CircuitState state_of(std::uint64_t w) noexcept {
    return static_cast<CircuitState>(w & state_mask);
  }
  static std::uint32_t generation_of(std::uint64_t w) noexcept {
    return static_cast<std::uint32_t>(w >> generation_shift);
  }
  static std::uint32_t probes_of(std::uint64_t w) noexcept {
    return static_cast<std::uint32_t>((w & probe_mask) >> 2);
  }
  static bool same_phase(std::uint64_t a, std::uint64_t b) noexcept {
    return ((a ^ b) & ~probe_mask) == 0;  // same generation and state
  }

  static Options validated(Options o) {
    auto bad = [](const char* why) {
      return std::invalid_argument(std::string("herald::CircuitBreaker: ") + why);
    };
    if (!(o.failure_ratio >= 0.0 && o.failure_ratio <= 1.0))
      throw bad("failure_ratio must be in [0, 1] (0: off)");
    if (o.consecutive_failures == 0 && o.failure_ratio == 0.0)
      throw bad("no trip condition: set consecutive_failures or failure_ratio");
    if (o.failure_ratio > 0.0) {
      if (o.minimum_calls == 0) throw bad("minimum_calls must be >= 1");
      if (o.window_buckets == 0) throw bad("window_buckets must be >= 1");
      if (o.window.count() < o.window_buckets)
        throw bad("window must be at least one nanosecond per bucket");
    }
    if (o.window_buckets == 0) o.window_buckets = 1;  // unused without a ratio
    if (o.cooldown.count() < 0) throw bad("cooldown must be >= 0");
    if (o.half_open_probes == 0 || o.half_open_probes > (probe_mask >> 2))
      throw bad("half_open_probes must be in [1, 2^30)");
    if (o.half_open_successes == 0) throw bad("half_open_successes must be >= 1");
    return o;
  }

  Clock::time_point now() const { return options_.clock ? options_.clock() : Clock::now(); }

  std::int64_t now_ns() const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(now() - origin_).count();
  }

  std::uint32_t epoch_at(std::int64_t ns) const noexcept {
    // Wraps after 2^32 buckets; a bucket untouched for exactly a multiple of that would count
    // again (at the default 1 s buckets: every 136 years).
    return static_cast<std::uint32_t>(static_cast<std::uint64_t>(ns < 0 ? 0 : ns) /
                                      static_cast<std::uint64_t>(bucket_ns_));
  }

  Permit reject() {
    counters_.add(rejections_field, 1);
    return Permit(nullptr, rejected);
  }

  Permit allow_slow(std::uint64_t w) {
    for (;;) {
      switch (state_of(w)) {
        case CircuitState::closed:
          return Permit(this, w);
        case CircuitState::open:
          if (now_ns() < open_until_ns_.load(std::memory_order_acquire)) return reject();
          transition(w, CircuitState::half_open);  // or another thread already did
          w = word_->load(std::memory_order_acquire);
          break;
        case CircuitState::half_open:
          if (probes_of(w) >= options_.half_open_probes) return reject();
          if (word_->compare_exchange_weak(w, w + probe_unit, std::memory_order_acq_rel))
            return Permit(this, w);
          break;  // w was reloaded by the failed CAS
      }
    }
  }

  void record(Permit& p, bool failure) {
    if (!p) throw std::invalid_argument("herald::CircuitBreaker: recording a rejected call");
    if (p.breaker_ == nullptr)
      throw std::invalid_argument("herald::CircuitBreaker: outcome recorded twice");
    if (p.breaker_ != this)
      throw std::invalid_argument("herald::CircuitBreaker: permit of another breaker");
    p.breaker_ = nullptr;
    counters_.add(failure ? failures_field : successes_field, 1);
    const std::uint64_t w = p.word_;
    const std::uint64_t current = word_->load(std::memory_order_acquire);
    if (!same_phase(w, current)) return;  // the breaker moved on: statistics only
    if (state_of(w) == CircuitState::half_open) {
      probe_finished(w, failure);
    } else {
      record_closed(w, failure);
    }
  }

  void record_closed(std::uint64_t w, bool failure) {
    const std::uint64_t gen = generation_of(w);
    bool trip = false;
    if (options_.consecutive_failures != 0) {
      // [generation:32 | count:32]: a count from an earlier closed period never leaks in.
      std::uint64_t c = consecutive_.load(std::memory_order_relaxed);
      if (failure) {
        while ((c >> 32) == gen &&
               !consecutive_.compare_exchange_weak(c, c + 1, std::memory_order_relaxed)) {
        }
        trip = (c >> 32) == gen && (c & 0xFFFFFFFF) + 1 >= options_.consecutive_failures;
      } else if ((c >> 32) == gen && (c & 0xFFFFFFFF) != 0) {
        // Only a success after failures writes: a healthy stream of successes reads only.
        consecutive_.compare_exchange_strong(c, gen << 32, std::memory_order_relaxed);
      }
    }
    if (options_.failure_ratio > 0.0) {
      const std::uint32_t epoch = epoch_at(now_ns());
      window_.add(epoch, failure);
      if (failure && !trip) {
        const auto t = window_.totals(epoch);
        const std::uint64_t calls = t.successes + t.failures;
        trip =
            calls >= options_.minimum_calls &&
            static_cast<double>(t.failures) >= options_.failure_ratio * static_cast<double>(calls);
      }
    }
    if (trip) transition(w, CircuitState::open);
  }

  void probe_finished(std::uint64_t w, bool failure) {
    const std::lock_guard lock(mutex_);
    const std::uint64_t current = word_->load(std::memory_order_acquire);
    if (!same_phase(w, current)) return;
    if (failure) {
      change_locked(current, CircuitState::open);
      return;
    }
    word_->fetch_sub(probe_unit, std::memory_order_acq_rel);  // allow() may CAS concurrently
    if (++probe_successes_ >= options_.half_open_successes)
      change_locked(word_->load(std::memory_order_acquire), CircuitState::closed);
  }

  /// A probe permit destroyed without an outcome: give its slot back.
  void abandon_probe(std::uint64_t w) noexcept {
    const std::lock_guard lock(mutex_);
    if (same_phase(w, word_->load(std::memory_order_acquire)))
      word_->fetch_sub(probe_unit, std::memory_order_acq_rel);
  }

  /// Moves from the phase of `seen` to `to`, unless another thread already left that phase.
  void transition(std::uint64_t seen, CircuitState to) {
    const std::lock_guard lock(mutex_);
    const std::uint64_t current = word_->load(std::memory_order_acquire);
    if (same_phase(seen, current)) change_locked(current, to);
  }

  void transition_from_any(CircuitState to) {
    const std::lock_guard lock(mutex_);
    change_locked(word_->load(std::memory_order_acquire), to);
  }

  /// Makes the change; mutex_ held. Everything the new state reads is set up before the word
  /// is published (release), so a thread that sees the new state sees its setup.
  void change_locked(std::uint64_t current, CircuitState to) {
    const std::uint64_t gen = generation_of(current) + std::uint64_t{1};
    const std::uint64_t next = ((gen & 0xFFFFFFFF) << generation_shift) | std::uint64_t(to);
    switch (to) {
      case CircuitState::closed:
        consecutive_.store((gen & 0xFFFFFFFF) << 32, std::memory_order_relaxed);
        window_.clear();
        break;
      case CircuitState::open:
        open_until_ns_.store(now_ns() + options_.cooldown.count(), std::memory_order_release);
        break;
      case CircuitState::half_open:
        probe_successes_ = 0;
        break;
    }
    // A plain store: a concurrent allow() CAS on the old word fails and rereads; one that
    // succeeded just before holds a permit of the old phase, which this store makes stale.
    word_->store(next, std::memory_order_release);
    // reset() while closed or trip() while open starts the phase afresh but changes nothing
    // an observer would call a state change.
    if (state_of(current) == to) return;
    state_changes_.fetch_add(1, std::memory_order_relaxed);
    if (options_.on_state_change) {
      try {
        options_.on_state_change(state_of(current), to);
      } catch (...) {  // a throwing observer must not break the breaker
      }
    }
  }

  const Options options_;
  // Read by every allow(); written only by transitions and half-open probe accounting.
  detail::CachePadded<std::atomic<std::uint64_t>> word_{std::in_place, std::uint64_t{0}};
  std::atomic<std::uint64_t> consecutive_{0};  // [generation | consecutive failures]
  std::atomic<std::int64_t> open_until_ns_{0};
  detail::RollingCounts window_;
  const Clock::time_point origin_;
  const std::int64_t bucket_ns_;
  detail::ShardedCounters<3> counters_;
  std::atomic<std::uint64_t> state_changes_{0};
  // Recursive: the state-change callback runs under it and may call the breaker back (a probe
  // from inside on_state_change, or reset()).
  std::recursive_mutex mutex_;
  std::uint32_t probe_successes_ = 0;  // under mutex_
};

}  // namespace herald
