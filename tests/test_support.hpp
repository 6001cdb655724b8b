// What the tests share: a lifetime-counting element type, replayable seeds, a place where other
// threads record what they saw (Catch2 2's assertions are for the test's own thread only), and
// the ways a test waits for another thread without sleeping: for a condition (eventually), at a
// gate the test opens (Gate), or until the thread is parked in the kernel (BlockedProbe).
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <latch>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>

#include "catch.hpp"

namespace herald_test {

/// Counts constructions and destructions, so a test can prove that nothing leaked, nothing was
/// destroyed twice and nothing was copied or moved after its destruction. Optionally throws from
/// its copy constructor. The counters are global: a test using Counted declares a CountedGuard
/// before anything that holds one.
struct Counted {
  static inline std::atomic<long> live{0};                // constructed and not yet destroyed
  static inline std::atomic<long> copies{0};              // successful copy constructions
  static inline std::atomic<long> double_destroyed{0};    // destructor run on a dead object
  static inline std::atomic<long> used_after_destroy{0};  // a dead object copied or moved from
  static inline std::atomic<bool> throw_on_copy{false};

  std::uint64_t value = 0;
  bool alive = true;

  Counted() noexcept { ++live; }
  // Any integer: containers emplace from whatever the test passes, with no narrowing warning.
  template <std::integral I>
  explicit Counted(I v) noexcept : value(static_cast<std::uint64_t>(v)) {
    ++live;
  }
  Counted(const Counted& o) : value(o.value) {
    if (throw_on_copy.load()) throw std::runtime_error("Counted: copy refused");
    if (!o.alive) ++used_after_destroy;
    ++copies;
    ++live;
  }
  Counted(Counted&& o) noexcept : value(o.value) {
    if (!o.alive) ++used_after_destroy;
    ++live;
  }
  // Assignment copies the value only: whether an object is alive is its own business.
  Counted& operator=(const Counted& o) noexcept {
    if (!o.alive || !alive) ++used_after_destroy;
    value = o.value;
    return *this;
  }
  Counted& operator=(Counted&& o) noexcept {
    if (!o.alive || !alive) ++used_after_destroy;
    value = o.value;
    return *this;
  }
  ~Counted() {
    if (!alive) {
      ++double_destroyed;
      return;
    }
    alive = false;
    --live;
  }
};

/// Starts a test with Counted's counters at zero and, when it goes out of scope (after every
/// object declared after it), checks that each Counted made since was destroyed exactly once and
/// never used dead. Declare it first in a test that uses Counted.
class CountedGuard {
 public:
  CountedGuard() noexcept {
    Counted::live = 0;
    Counted::copies = 0;
    Counted::double_destroyed = 0;
    Counted::used_after_destroy = 0;
    Counted::throw_on_copy = false;
  }
  CountedGuard(const CountedGuard&) = delete;
  CountedGuard& operator=(const CountedGuard&) = delete;
  // noexcept(false): Catch may throw from a failed check when told to abort early.
  ~CountedGuard() noexcept(false) {
    Counted::throw_on_copy = false;
    if (std::uncaught_exceptions() != 0) return;  // the test is failing already (a REQUIRE)
    CHECK(Counted::live == 0);
    CHECK(Counted::double_destroyed == 0);
    CHECK(Counted::used_after_destroy == 0);
  }
};

/// A payload that says who published it and when: the ordering tests' oracle checks each
/// subscriber sees every publisher's sequence exactly once and in order.
struct Item {
  std::uint32_t publisher = 0;
  std::uint64_t seq = 0;  // 1-based per publisher
};

/// The seed of a randomized test: HERALD_SEED when set (to replay), else `fixed` when given (a
/// statistical test at a fixed level would otherwise fail by chance now and then), else random.
/// Printed.
inline std::uint64_t seed(const char* test, std::optional<std::uint64_t> fixed = std::nullopt) {
  std::uint64_t s = 0;
  if (const char* env = std::getenv("HERALD_SEED")) {
    s = std::stoull(env);
  } else {
    s = fixed ? *fixed : std::uint64_t{std::random_device{}()};
  }
  std::cout << test << ": seed " << s << " (replay with HERALD_SEED=" << s << ")\n";
  return s;
}

/// Scales stress sizes down under the sanitizers, which are 5-20x slower.
constexpr int scaled(int n) {
#if defined(HERALD_SANITIZED_BUILD)
  return n / 8 > 0 ? n / 8 : 1;
#else
  return n;
#endif
}

/// Where threads other than the test's record failed expectations; the test thread checks
/// `failures() == 0` once it has joined them.
class ThreadChecks {
 public:
  void expect(bool ok) noexcept {
    if (!ok) failures_.fetch_add(1);
  }
  [[nodiscard]] int failures() const noexcept { return failures_.load(); }

 private:
  std::atomic<int> failures_{0};
};

/// Waits until `pred()` holds, for at most `limit`; returns whether it did. For a condition that
/// no handshake announces (counters, another process, the network): it polls, so how long each
/// poll pauses changes how fast it notices, never what it returns.
template <class Pred>
bool eventually(Pred&& pred, std::chrono::milliseconds limit = std::chrono::seconds(15)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  std::chrono::microseconds pause(20);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(pause);  // a poll interval, not a hand-off
    pause = std::min(pause * 2, std::chrono::microseconds(1000));
  }
  return true;
}

/// A gate that threads wait at until the test opens it. Opening is idempotent; a thread at the
/// gate blocks (std::latch) rather than spinning.
class Gate {
 public:
  void open() {
    if (!opened_.exchange(true)) latch_.count_down();
  }
  void wait() const { latch_.wait(); }
  [[nodiscard]] bool is_open() const noexcept { return opened_.load(); }

 private:
  mutable std::latch latch_{1};
  std::atomic<bool> opened_{false};
};

/// Occupies `n` workers of `pool` (anything with `bool submit(f)`) with a task each that waits
/// at `gate`, and returns once all of them run: what the test queues next waits behind them.
/// Each task must land on a different worker (plain submissions go round-robin, and a held
/// worker cannot take a second).
template <class Pool>
void hold_workers(Pool& pool, const Gate& gate, std::ptrdiff_t n = 1) {
  // Shared: a task may still be inside count_down() when the wait below returns.
  auto held = std::make_shared<std::latch>(n);
  for (std::ptrdiff_t i = 0; i < n; ++i) {
    REQUIRE(pool.submit([held, &gate] {
      held->count_down();
      gate.wait();
    }));
  }
  held->wait();
}

/// Opens a gate when the scope ends, also when a failed REQUIRE leaves it early: whatever waits
/// at the gate (a task a pool's destructor joins, a handler an unsubscribe waits for) can then
/// finish. Declare it after the objects whose destruction waits for the gate.
struct OpenOnExit {
  Gate& gate;
  ~OpenOnExit() { gate.open(); }
};

/// The calling thread's kernel id: what /proc/self/task/<tid> is named after.
inline pid_t current_tid() noexcept {
  return ::gettid();
}

/// The scheduler state of thread `tid` of this process, from /proc/self/task/<tid>/stat: 'R'
/// (running or runnable: also a thread that spins or yields), 'S' (asleep in the kernel: a futex
/// wait, a sleep), ...; '\0' when there is no such thread (it has exited, or is exiting).
inline char thread_state(pid_t tid) {
  std::ifstream stat("/proc/self/task/" + std::to_string(tid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return '\0';
  // "tid (name) S ...": the name may hold spaces and parentheses, so look after the last ')'.
  const auto close = line.rfind(')');
  if (close == std::string::npos || close + 2 >= line.size()) return '\0';
  const char state = line[close + 2];
  return state == 'Z' || state == 'X' ? '\0' : state;  // dead, not yet reaped
}

/// Waits until thread `tid` is asleep in the kernel -- where a thread parked in pop(), push(),
/// receive(), publish() or a latch is, while one still spinning or yielding before it parks shows
/// 'R' -- seen on two polls in a row, so that a brief sleep on the way (a lock inside malloc)
/// rarely passes for it. Gives up after `limit`, or at once if the thread has exited; returns
/// whether it saw the thread asleep. The caller's assertions must hold either way: the wait only
/// makes the path under test (acting on a parked thread) the likely one, without a sleep.
inline bool wait_until_blocked(pid_t tid,
                               std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  int asleep = 0;
  for (;;) {
    const char state = thread_state(tid);
    if (state == '\0') return false;  // exited: it will never block now
    asleep = state == 'S' ? asleep + 1 : 0;
    if (asleep == 2) return true;
    if (std::chrono::steady_clock::now() > end) {
      std::cerr << "wait_until_blocked: thread " << tid << " still in state '" << state
                << "' after " << limit.count() << " ms; going on\n";
      return false;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));  // a poll interval
  }
}

/// A handshake with a thread that is about to block: it calls arrive() just before the blocking
/// call; the test thread calls wait_until_blocked(), which waits for the arrival and then for the
/// kernel to show the thread asleep (see herald_test::wait_until_blocked).
class BlockedProbe {
 public:
  /// Called by the watched thread, just before it blocks.
  void arrive() noexcept { tid_.store(current_tid()); }
  /// The watched thread's kernel id; 0 until it arrived.
  [[nodiscard]] pid_t tid() const noexcept { return tid_.load(); }

  bool wait_until_blocked(std::chrono::milliseconds limit = std::chrono::seconds(10)) const {
    const auto start = std::chrono::steady_clock::now();
    if (!eventually([&] { return tid() != 0; }, limit)) return false;
    const auto spent = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - start);
    return herald_test::wait_until_blocked(tid(), std::max(limit - spent, limit.zero()));
  }

 private:
  std::atomic<pid_t> tid_{0};
};

/// Waits until thread `tid` has exited (its /proc entry is gone), for at most `limit`; returns
/// whether it did. For threads a test has no handle to join, such as a handler subscription's
/// dedicated thread.
inline bool wait_until_exited(pid_t tid,
                              std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  return eventually([&] { return thread_state(tid) == '\0'; }, limit);
}

}  // namespace herald_test
