// Parking: block a thread on a 32-bit word, with an optional deadline and std::stop_token, and an
// "event count" that makes the blocking free when nobody waits. The one waiting protocol of herald:
// BoundedQueue, WorkerPool, handler subscriptions (wait_idle, quiescent unsubscribe, backoff) and
// the NATS bridge all wait through it. Standard library only (plus the futex syscall on Linux).
//
// Interface (namespace herald::detail):
//
//   cpu_relax()                  one spin-wait hint (x86 `pause`, ARM `yield`).
//   Deadline                     when a wait gives up: Deadline::forever(), Deadline::at(tp) on
//                                std::chrono::steady_clock, Deadline::after(timeout), which maps a
//                                timeout <= 0 (or NaN) to "already passed" (try once), a huge one
//                                (duration::max(), anything over ~95 years) to forever, never
//                                overflowing. d.passed() reads the clock only for real deadlines.
//   futex_wait(word, v, d)       sleeps while `word == v`, until woken, the deadline passes, or a
//                                spurious wake-up; the caller re-checks its condition.
//   futex_wake(word, n)          wakes up to n threads sleeping in futex_wait on `word`.
//   EventCount                   who waits (parked, or awake after a wait) + a futex epoch:
//                                notify_one() is a single load unless a thread is parked and no
//                                waiter is awake to see the change.
//   SpinPolicy{pauses, yields}   how long a waiter tries before parking; one default for herald.
//   spin(attempt, deadline, stop, policy)
//                                the spinning phase alone: pause, then yield, retrying attempt().
//   wait_for_progress(ec, attempt, may_proceed, deadline, stop_token, spin_policy)
//                                the whole blocking loop: try, spin, park on `ec`, re-check;
//                                returns WaitStatus::done / timeout / stopped. Use this (or
//                                wait_until) rather than EventCount's members directly.
//   wait_until(ec, pred, deadline = forever, stop_token = {}, spin_policy = {})
//                                the same for a condition that is only observed (pred() reads
//                                with seq_cst loads; the notifier writes seq_cst, then notifies).
//
// The protocol (what wait_for_progress does; it cannot lose a wake-up):
//   notifier: change the state with a seq_cst store or RMW, then ec.notify_one(): a seq_cst load
//             of ec's counters; it wakes a parked thread only if one is parked and none is awake.
//   waiter:   try, spin (unannounced), then loop { key = ec.prepare_wait(awake); re-check with
//             may_proceed(); ec.cancel_wait() or ec.commit_wait(key, deadline); try }; finally, if
//             it ever parked: ec.stop_waiting(); if (may_proceed()) ec.notify_one();
//   may_proceed() re-reads the state with seq_cst loads. All the counter updates are seq_cst RMWs
//   on one word, so whatever the notifier's load saw, its change reaches some thread:
//   - nobody parked: a later prepare_wait is ordered after the load, so its re-check sees it;
//   - somebody awake: that thread's next prepare_wait or stop_waiting is ordered after the load,
//     so it either sees the change before parking or, leaving, sees it unused and notifies;
//   - otherwise it bumps the epoch (every parked thread read its key before announcing itself, so
//     it cannot sleep through the bump) and wakes one, counting it awake at once.
//   One condition per event count: notify may leave the wake-up to an awake waiter, which only
//   passes it on if the change satisfies its own re-check. So every waiter of one event count
//   must wait for a condition that any notifier's change satisfies -- the same condition, or
//   "the counter moved since I read it" -- or the notifier must use wake_all().
//   State changes that cannot take part (a stop request, a close) call ec.wake_all(), which bumps
//   the epoch unconditionally: a waiter whose key predates the bump does not sleep, and one whose
//   key includes it observes the change through the epoch's release/acquire pairing.
//
// Why not std::atomic<uint32_t>::wait/notify: libstdc++ 12 has no timed wait, and its notify skips
// the syscall unless its own hashed waiter table counts a waiter, so raw futex waiters (needed for
// timeouts) could miss wake-ups. Here one mechanism serves both timed and untimed waits.
#pragma once

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <optional>
#include <stop_token>
#include <thread>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#endif

namespace herald::detail {

/// Tells the CPU we are spin-waiting: saves power and lets a sibling hyper-thread run.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  asm volatile("yield" ::: "memory");
#endif
}

/// When a wait gives up: never, at a steady_clock time point, or already (try once).
class Deadline {
 public:
  using clock = std::chrono::steady_clock;

  static constexpr Deadline forever() noexcept { return Deadline(Kind::forever, {}); }
  static constexpr Deadline at(clock::time_point when) noexcept { return Deadline(Kind::at, when); }
  static constexpr Deadline already_passed() noexcept { return Deadline(Kind::passed, {}); }

  /// The deadline `timeout` from now; <= 0 means already passed, > ~95 years means forever. A
  /// floating-point NaN counts as "already passed" (try once): it must not reach the integer
  /// conversion below, whose result would be undefined.
  template <class Rep, class Period>
  static Deadline after(std::chrono::duration<Rep, Period> timeout) noexcept {
    if (!(timeout > timeout.zero())) return already_passed();
    // Compare in floating seconds: converting duration::max() to nanoseconds, or adding it to
    // now(), would overflow. 3e9 s keeps now() + timeout far inside the int64 nanosecond range.
    if (std::chrono::duration<double>(timeout).count() >= 3.0e9) return forever();
    return at(clock::now() + std::chrono::ceil<clock::duration>(timeout));
  }

  constexpr bool is_forever() const noexcept { return kind_ == Kind::forever; }
  /// The time point to hand to clock-based waits: time_point::max() for forever; for a deadline
  /// that had passed when made, the present (one clock read); else when().
  clock::time_point point() const noexcept {
    if (kind_ == Kind::forever) return clock::time_point::max();
    return kind_ == Kind::passed ? clock::now() : when_;
  }
  /// True once the deadline is behind us; reads the clock only for a real time point.
  bool passed() const noexcept {
    switch (kind_) {
      case Kind::forever:
        return false;
      case Kind::passed:
        return true;
      case Kind::at:
        break;
    }
    return clock::now() >= when_;
  }
  /// The time point; meaningful only when neither forever nor already passed.
  constexpr clock::time_point when() const noexcept { return when_; }

 private:
  enum class Kind : std::uint8_t { forever, at, passed };
  constexpr Deadline(Kind kind, clock::time_point when) noexcept : when_(when), kind_(kind) {}

  clock::time_point when_;
  Kind kind_;
};

/// Sleeps while `word == expected`, until futex_wake, the deadline, or a spurious wake-up.
///
/// Blocks: yes, unless `word != expected` on entry.
inline void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                       const Deadline& deadline) noexcept {
  if (deadline.passed()) return;
#if defined(__linux__)
  static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t),
                "the futex word must be a plain 32-bit integer in memory");
  // The kernel only needs the address; it compares the value atomically with the sleep.
  auto* addr = reinterpret_cast<std::uint32_t*>(&word);
  if (deadline.is_forever()) {
    ::syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
  } else {
    // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time, which is what libstdc++'s and
    // libc++'s steady_clock read on Linux: no relative-time recomputation after EINTR.
    const auto since_epoch = deadline.when().time_since_epoch();
    const auto secs = std::chrono::floor<std::chrono::seconds>(since_epoch);
    timespec ts{};
    ts.tv_sec = static_cast<time_t>(secs.count());
    ts.tv_nsec = static_cast<long>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(since_epoch - secs).count());
    ::syscall(SYS_futex, addr, FUTEX_WAIT_BITSET_PRIVATE, expected, &ts, nullptr,
              FUTEX_BITSET_MATCH_ANY);
  }
#else
  if (deadline.is_forever()) {
    word.wait(expected, std::memory_order_acquire);
  } else if (word.load(std::memory_order_acquire) == expected) {
    // No portable timed wait on an atomic: sleep in short slices; the caller re-checks.
    const auto slice = std::chrono::milliseconds(1);
    const auto left = deadline.when() - Deadline::clock::now();
    std::this_thread::sleep_for(left < slice ? left : slice);
  }
#endif
}

/// Wakes up to `n` threads sleeping in futex_wait on `word` (INT_MAX: all of them).
inline void futex_wake(std::atomic<std::uint32_t>& word, int n) noexcept {
#if defined(__linux__)
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE_PRIVATE, n, nullptr,
            nullptr, 0);
#else
  if (n == 1) {
    word.notify_one();
  } else {
    word.notify_all();
  }
#endif
}

/// Who waits for one condition, plus a futex epoch: lets threads sleep until "something changed"
/// without the changing side paying anything while nobody sleeps, and without a second syscall
/// while a thread already woken has not yet run. See the protocol at the top of this file.
///
/// Thread-safety: every member may be called concurrently.
class EventCount {
 public:
  using Key = std::uint32_t;

  /// Announces the caller as about to park; `awake` says whether it is currently counted awake
  /// (it returned from an earlier wait). The caller must then re-check and call cancel_wait or
  /// commit_wait exactly once; after either it is counted awake.
  Key prepare_wait(bool awake) noexcept {
    // The epoch is read before the announcement, so a notifier that sees the announcement bumps
    // the epoch after this read, and commit_wait returns at once.
    const Key key = epoch_.load(std::memory_order_acquire);
    state_.fetch_add(awake ? parked - woke : parked, std::memory_order_seq_cst);
    return key;
  }

  /// Withdraws prepare_wait without sleeping.
  void cancel_wait() noexcept { leave_parked(); }

  /// Sleeps until a notify after prepare_wait (or a spurious wake-up, or the deadline).
  ///
  /// Blocks: yes.
  void commit_wait(Key key, const Deadline& deadline) noexcept {
    futex_wait(epoch_, key, deadline);
    leave_parked();
  }

  /// Ends an awake thread's interest. It must then re-check the condition (seq_cst loads) and
  /// call notify_one() if it still holds: a notifier may have skipped waking a parked thread
  /// because this one was awake.
  void stop_waiting() noexcept { state_.fetch_sub(woke, std::memory_order_seq_cst); }

  /// Wakes up to `n` parked threads unless none is parked or one is already awake (it will see
  /// the change). In both of those cases, a single load and nothing else.
  /// Returns whether it woke anyone.
  bool notify(std::uint64_t n) noexcept {
    std::uint64_t s = state_.load(std::memory_order_seq_cst);
    std::uint64_t k = 0;
    do {
      const std::uint64_t parked_now = s & field;
      if (parked_now == 0 || ((s >> woke_shift) & field) != 0) return false;
      k = parked_now < n ? parked_now : n;
      // Count the k threads we wake as awake from now on (k tokens for the threads that will
      // return), so notifiers arriving before they run do not wake more.
    } while (!state_.compare_exchange_weak(s, s - k * parked + k * woke + k * token,
                                           std::memory_order_seq_cst));
    epoch_.fetch_add(1, std::memory_order_release);
    futex_wake(epoch_, k > INT_MAX ? INT_MAX : static_cast<int>(k));
    return true;
  }
  bool notify_one() noexcept { return notify(1); }
  bool notify_all() noexcept { return notify(field); }

  /// Wakes every parked thread unconditionally (stop requests, close).
  void wake_all() noexcept {
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    futex_wake(epoch_, INT_MAX);
  }

 private:
  // Three counters in one word, so each transition is a single atomic step:
  //   parked: announced and not yet woken by a notifier;
  //   woke:   awake threads that returned from a wait and have not stopped waiting, including
  //           those a notifier woke that have not yet run (represented by tokens);
  //   token:  wake-ups issued by notifiers and not yet claimed by a returning thread.
  // Invariant: threads between prepare_wait and its cancel/commit == parked + token. A returning
  // thread claims a token if one is left (a notifier already counted it awake), else counts
  // itself awake; which thread claims which token does not matter.
  static constexpr unsigned woke_shift = 21;
  static constexpr std::uint64_t field = (std::uint64_t{1} << woke_shift) - 1;
  static constexpr std::uint64_t parked = 1;
  static constexpr std::uint64_t woke = std::uint64_t{1} << woke_shift;
  static constexpr std::uint64_t token = std::uint64_t{1} << (2 * woke_shift);

  void leave_parked() noexcept {
    std::uint64_t s = state_.load(std::memory_order_relaxed);
    while (!state_.compare_exchange_weak(
        s, (s >> (2 * woke_shift)) != 0 ? s - token : s - parked + woke,
        std::memory_order_seq_cst)) {
    }
  }

  std::atomic<std::uint64_t> state_{0};
  std::atomic<std::uint32_t> epoch_{0};  // the futex word
};

/// Why wait_for_progress returned.
enum class WaitStatus : std::uint8_t { done, timeout, stopped };

/// How a waiter spends the time before it parks: `pauses` attempts each followed by cpu_relax(),
/// then `yields` attempts each followed by std::this_thread::yield(). Every waiter in herald uses
/// the default.
///
/// Measured on a 2-vCPU KVM guest: a pause costs ~75 ns and a futex wake-up ~12 us until the
/// woken thread runs (plus ~1 us for the waking syscall). Pauses catch a partner running on
/// another core within a few microseconds; yields hand the core to a partner that shares ours
/// (common with more threads than cores), which parking would delay by a whole wake-up. Both
/// together last about one wake-up latency, so a thread parks only when its partner really is
/// not running, and an idle waiter burns ~15 us once per wait, then nothing.
struct SpinPolicy {
  int pauses = 64;
  int yields = 16;
};

/// The spinning phase of a wait: retries `attempt()` after each pause, then after each yield,
/// until it returns true (then true), or the policy, the deadline or a stop request ends it.
/// Spinning is not announced anywhere: an uncontended hand-over touches nothing but the state
/// `attempt` reads.
template <class Attempt>
bool spin(Attempt&& attempt, const Deadline& deadline, const std::stop_token& stop,
          SpinPolicy policy = {}) {
  for (int i = 0; i < policy.pauses; ++i) {
    cpu_relax();
    if (attempt()) return true;
  }
  for (int i = 0; i < policy.yields; ++i) {
    // A yield can last a whole time slice when other threads are runnable.
    if (deadline.passed() || stop.stop_requested()) return false;
    std::this_thread::yield();
    if (attempt()) return true;
  }
  return false;
}

/// Runs `attempt()` until it returns true, spinning briefly and then parking on `ec`.
///
/// `attempt()` performs the operation (returns true when done, including "done: closed").
/// `may_proceed()` is the seq_cst re-check of the event-count protocol: true when an attempt might
/// now succeed (or is about to, e.g. an element is being written); it must read, with seq_cst
/// loads, the variables whose seq_cst updates precede the notifier's `ec.notify*()`.
/// A stop request on `stop` wakes the waiter (through a std::stop_callback registered only once
/// the caller is about to park) and returns WaitStatus::stopped.
/// Blocks: until done, the deadline, or a stop request.
template <class Attempt, class MayProceed>
WaitStatus wait_for_progress(EventCount& ec, Attempt&& attempt, MayProceed&& may_proceed,
                             const Deadline& deadline, const std::stop_token& stop,
                             SpinPolicy policy = {}) {
  struct WakeAll {
    EventCount* ec;
    void operator()() const noexcept { ec->wake_all(); }
  };
  std::optional<std::stop_callback<WakeAll>> on_stop;
  bool awake = false;  // counted awake in ec: must stop_waiting() and hand on the baton
  WaitStatus status = WaitStatus::done;
  for (;;) {
    if (attempt()) break;
    if (stop.stop_requested()) {
      status = WaitStatus::stopped;
      break;
    }
    if (deadline.passed()) {
      status = WaitStatus::timeout;
      break;
    }
    if (spin(attempt, deadline, stop, policy)) break;
    if (!on_stop && stop.stop_possible()) on_stop.emplace(stop, WakeAll{&ec});
    const EventCount::Key key = ec.prepare_wait(awake);
    awake = true;
    if (may_proceed() || stop.stop_requested()) {
      ec.cancel_wait();
      // Progress is imminent but not ours yet (typically another thread is between claiming a
      // slot and publishing it): let that thread run rather than burn its core.
      std::this_thread::yield();
    } else {
      ec.commit_wait(key, deadline);
    }
  }
  if (awake) {
    ec.stop_waiting();
    if (may_proceed()) ec.notify_one();  // hand on a wake-up skipped because we were awake
  }
  return status;
}

/// Blocks until `pred()` holds: the simple form of wait_for_progress for conditions that are
/// only observed, not acted on. `pred` must read the state with seq_cst loads, and whoever makes
/// it true must do so with a seq_cst store or RMW and then call ec.notify_one() / notify_all().
///
/// Blocks: until pred(), the deadline (WaitStatus::timeout) or a stop request (stopped).
template <class Pred>
WaitStatus wait_until(EventCount& ec, Pred&& pred, const Deadline& deadline = Deadline::forever(),
                      const std::stop_token& stop = {}, SpinPolicy policy = {}) {
  return wait_for_progress(ec, pred, pred, deadline, stop, policy);
}

}  // namespace herald::detail
