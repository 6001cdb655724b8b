// CircuitBreaker: the trip conditions (consecutive failures, failure ratio over a rolling window
// with a minimum of calls), cooldown, half-open probes (bounded, abandoned, failed), outcomes of
// an older phase, call(), bad input, the state-change callback, and transitions under
// concurrency (every observed transition is legal and the chain of them is unbroken).
#include <herald/circuit_breaker.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <latch>
#include <limits>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "sync_test_support.hpp"
#include "test_support.hpp"

using herald::CircuitBreaker;
using herald::CircuitOpen;
using herald::CircuitState;
using herald_test::ManualClock;
using namespace std::chrono_literals;

namespace {

using Transition = std::pair<CircuitState, CircuitState>;

/// Options with a manual clock and a transition log. The callback runs under the breaker's lock,
/// never concurrently, so the log needs no lock of its own.
CircuitBreaker::Options options(ManualClock& clock, std::vector<Transition>* log = nullptr) {
  CircuitBreaker::Options o;
  o.clock = clock.fn();
  if (log != nullptr)
    o.on_state_change = [log](CircuitState from, CircuitState to) { log->emplace_back(from, to); };
  return o;
}

void succeed(CircuitBreaker& b) {
  auto p = b.allow();
  REQUIRE(p);
  b.record_success(p);
}

void fail(CircuitBreaker& b) {
  auto p = b.allow();
  REQUIRE(p);
  b.record_failure(p);
}

bool legal(const Transition& t) {
  using S = CircuitState;
  return (t.first == S::closed && t.second == S::open) ||
         (t.first == S::open && t.second == S::half_open) ||
         (t.first == S::half_open && (t.second == S::open || t.second == S::closed));
}

}  // namespace

TEST_CASE("inconsistent breaker options are std::invalid_argument", "[circuit_breaker]") {
  auto make = [](auto change) {
    CircuitBreaker::Options o;
    change(o);
    return CircuitBreaker(std::move(o));
  };
  using O = CircuitBreaker::Options;
  CHECK_NOTHROW(make([](O&) {}));
  CHECK_THROWS_AS(make([](O& o) { o.consecutive_failures = 0; }), std::invalid_argument);
  CHECK_THROWS_AS(make([](O& o) { o.failure_ratio = -0.1; }), std::invalid_argument);
  CHECK_THROWS_AS(make([](O& o) { o.failure_ratio = 1.5; }), std::invalid_argument);
  CHECK_THROWS_AS(make([](O& o) { o.failure_ratio = std::numeric_limits<double>::quiet_NaN(); }),
                  std::invalid_argument);
  CHECK_THROWS_AS(make([](O& o) {
                    o.failure_ratio = 0.5;
                    o.minimum_calls = 0;
                  }),
                  std::invalid_argument);
  CHECK_THROWS_AS(make([](O& o) {
                    o.failure_ratio = 0.5;
                    o.window_buckets = 0;
                  }),
                  std::invalid_argument);
  CHECK_THROWS_AS(make([](O& o) {
                    o.failure_ratio = 0.5;
                    o.window = 0s;
                  }),
                  std::invalid_argument);
  CHECK_THROWS_AS(make([](O& o) { o.cooldown = -1s; }), std::invalid_argument);
  CHECK_THROWS_AS(make([](O& o) { o.half_open_probes = 0; }), std::invalid_argument);
  CHECK_THROWS_AS(make([](O& o) { o.half_open_successes = 0; }), std::invalid_argument);
  CHECK_NOTHROW(make([](O& o) {
    o.consecutive_failures = 0;
    o.failure_ratio = 1.0;
  }));
}

TEST_CASE("a closed breaker trips after N consecutive failures; a success resets the run",
          "[circuit_breaker]") {
  ManualClock clock;
  std::vector<Transition> log;
  auto o = options(clock, &log);
  o.consecutive_failures = 3;
  CircuitBreaker b(std::move(o));
  CHECK(b.state() == CircuitState::closed);
  fail(b);
  fail(b);
  succeed(b);  // the run starts over
  fail(b);
  fail(b);
  CHECK(b.state() == CircuitState::closed);
  fail(b);
  CHECK(b.state() == CircuitState::open);
  CHECK_FALSE(b.allow());
  CHECK_FALSE(b.allow());
  const auto s = b.stats();
  CHECK(s.successes == 1);
  CHECK(s.failures == 5);
  CHECK(s.rejections == 2);
  CHECK(s.calls == 8);
  CHECK(s.state_changes == 1);
  CHECK(s.state == CircuitState::open);
  REQUIRE(log.size() == 1);
  CHECK(log[0] == Transition{CircuitState::closed, CircuitState::open});
}

TEST_CASE("the failure ratio trips only once the window holds the minimum number of calls",
          "[circuit_breaker]") {
  ManualClock clock;
  auto o = options(clock);
  o.consecutive_failures = 0;
  o.failure_ratio = 0.5;
  o.minimum_calls = 10;
  CircuitBreaker b(std::move(o));
  for (int i = 0; i < 4; ++i) {
    fail(b);
    succeed(b);
  }
  CHECK(b.state() == CircuitState::closed);  // 50% of 8 calls: below the minimum
  succeed(b);
  CHECK(b.state() == CircuitState::closed);  // 4 of 9
  fail(b);                                   // 5 of 10: 0.5 >= 0.5
  CHECK(b.state() == CircuitState::open);
}

TEST_CASE("outcomes older than the window drop out of the failure ratio", "[circuit_breaker]") {
  ManualClock clock;
  auto o = options(clock);
  o.consecutive_failures = 0;
  o.failure_ratio = 0.5;
  o.minimum_calls = 4;
  o.window = 10s;
  o.window_buckets = 10;
  CircuitBreaker b(std::move(o));
  fail(b);
  fail(b);
  succeed(b);  // 2 of 3
  clock.advance(6s);
  succeed(b);         // 2 of 4, but it is a success: no check
  clock.advance(5s);  // the first three are 11 s old: out of the window
  fail(b);            // 1 failure of 2 calls: below the minimum
  CHECK(b.state() == CircuitState::closed);
  clock.advance(100s);  // everything is old; a lap of the bucket ring later too
  fail(b);
  fail(b);
  fail(b);
  CHECK(b.state() == CircuitState::closed);  // 3 calls
  fail(b);
  CHECK(b.state() == CircuitState::open);  // 4 of 4
}

TEST_CASE("an open breaker rejects until the cooldown, then a probe success closes it",
          "[circuit_breaker]") {
  ManualClock clock;
  std::vector<Transition> log;
  auto o = options(clock, &log);
  o.consecutive_failures = 1;
  o.cooldown = 5s;
  CircuitBreaker b(std::move(o));
  fail(b);
  REQUIRE(b.state() == CircuitState::open);
  clock.advance(4999ms);
  CHECK_FALSE(b.allow());
  CHECK(b.state() == CircuitState::open);
  clock.advance(1ms);
  auto probe = b.allow();
  REQUIRE(probe);
  CHECK(b.state() == CircuitState::half_open);
  CHECK_FALSE(b.allow());  // one probe at a time
  b.record_success(probe);
  CHECK(b.state() == CircuitState::closed);
  succeed(b);
  const std::vector<Transition> expected{{CircuitState::closed, CircuitState::open},
                                         {CircuitState::open, CircuitState::half_open},
                                         {CircuitState::half_open, CircuitState::closed}};
  CHECK(log == expected);
  CHECK(b.stats().state_changes == 3);
}

TEST_CASE("a failed probe opens the breaker again for a full cooldown", "[circuit_breaker]") {
  ManualClock clock;
  auto o = options(clock);
  o.consecutive_failures = 1;
  o.cooldown = 1s;
  CircuitBreaker b(std::move(o));
  fail(b);
  clock.advance(1s);
  fail(b);  // the probe
  CHECK(b.state() == CircuitState::open);
  clock.advance(999ms);
  CHECK_FALSE(b.allow());
  clock.advance(1ms);
  succeed(b);
  CHECK(b.state() == CircuitState::closed);
}

TEST_CASE("half_open_successes probes must succeed before the breaker closes",
          "[circuit_breaker]") {
  ManualClock clock;
  auto o = options(clock);
  o.consecutive_failures = 1;
  o.cooldown = 1s;
  o.half_open_probes = 2;
  o.half_open_successes = 3;
  CircuitBreaker b(std::move(o));
  fail(b);
  clock.advance(1s);
  auto p1 = b.allow();
  auto p2 = b.allow();
  REQUIRE(p1);
  REQUIRE(p2);
  CHECK_FALSE(b.allow());  // both probe slots taken
  b.record_success(p1);
  CHECK(b.state() == CircuitState::half_open);
  auto p3 = b.allow();  // p1's slot is free again
  REQUIRE(p3);
  b.record_success(p2);
  CHECK(b.state() == CircuitState::half_open);
  b.record_success(p3);
  CHECK(b.state() == CircuitState::closed);
}

TEST_CASE("a probe permit dropped without an outcome frees its slot", "[circuit_breaker]") {
  ManualClock clock;
  auto o = options(clock);
  o.consecutive_failures = 1;
  o.cooldown = 1s;
  CircuitBreaker b(std::move(o));
  fail(b);
  clock.advance(1s);
  {
    auto probe = b.allow();
    REQUIRE(probe);
    CHECK_FALSE(b.allow());
  }  // abandoned
  CHECK(b.state() == CircuitState::half_open);
  auto again = b.allow();
  CHECK(again);
  // A moved-from permit does not free the slot a second time.
  CircuitBreaker::Permit moved = std::move(again);
  CHECK_FALSE(b.allow());
  b.record_success(moved);
  CHECK(b.state() == CircuitState::closed);
}

TEST_CASE("outcomes of calls admitted in an earlier phase do not move the new state",
          "[circuit_breaker]") {
  ManualClock clock;
  auto o = options(clock);
  o.consecutive_failures = 2;
  o.cooldown = 1s;
  CircuitBreaker b(std::move(o));
  auto old1 = b.allow();
  auto old2 = b.allow();
  auto old3 = b.allow();
  fail(b);
  fail(b);
  REQUIRE(b.state() == CircuitState::open);
  b.record_failure(old1);  // admitted while closed: statistics only
  CHECK(b.state() == CircuitState::open);
  clock.advance(1s);
  auto probe = b.allow();
  REQUIRE(probe);
  b.record_success(old2);  // not a probe: must not close the breaker or free the probe slot
  CHECK(b.state() == CircuitState::half_open);
  CHECK_FALSE(b.allow());
  b.record_success(probe);
  REQUIRE(b.state() == CircuitState::closed);
  fail(b);                 // 1 of 2 in this closed phase
  b.record_failure(old3);  // from the first closed phase: must not count as the second
  CHECK(b.state() == CircuitState::closed);
  const auto s = b.stats();
  CHECK(s.failures == 5);
  CHECK(s.successes == 2);
}

TEST_CASE("recording a rejected permit or recording twice is std::invalid_argument",
          "[circuit_breaker]") {
  ManualClock clock;
  auto o = options(clock);
  o.consecutive_failures = 1;
  CircuitBreaker b(std::move(o));
  auto p = b.allow();
  REQUIRE(p);
  b.record_success(p);
  CHECK_THROWS_AS(b.record_success(p), std::invalid_argument);
  CHECK_THROWS_AS(b.record_failure(p), std::invalid_argument);
  b.trip();
  auto rejected = b.allow();
  REQUIRE_FALSE(rejected);
  CHECK_THROWS_AS(b.record_failure(rejected), std::invalid_argument);
  CircuitBreaker other(options(clock));
  auto foreign = other.allow();
  CHECK_THROWS_AS(b.record_success(foreign), std::invalid_argument);
  CHECK(b.stats().successes == 1);
  CHECK(b.stats().failures == 0);
}

TEST_CASE("call runs the function, records its outcome and throws CircuitOpen when open",
          "[circuit_breaker]") {
  ManualClock clock;
  auto o = options(clock);
  o.consecutive_failures = 2;
  o.is_failure = [](const std::exception_ptr& e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::out_of_range&) {
      return false;  // "not found" is an answer, not an outage
    } catch (...) {
      return true;
    }
  };
  CircuitBreaker b(std::move(o));
  CHECK(b.call([] { return 42; }) == 42);
  int side = 0;
  b.call([&] { side = 1; });
  CHECK(side == 1);
  for (int i = 0; i < 3; ++i)
    CHECK_THROWS_AS(b.call([]() -> int { throw std::out_of_range("no such key"); }),
                    std::out_of_range);
  CHECK(b.state() == CircuitState::closed);
  CHECK_THROWS_AS(b.call([] { throw std::runtime_error("timeout"); }), std::runtime_error);
  CHECK_THROWS_AS(b.call([] { throw std::runtime_error("timeout"); }), std::runtime_error);
  CHECK(b.state() == CircuitState::open);
  bool called = false;
  try {
    b.call([&] { called = true; });
    FAIL("call went through an open breaker");
  } catch (const CircuitOpen& e) {
    CHECK(e.state() == CircuitState::open);
  }
  CHECK_FALSE(called);
  const auto s = b.stats();
  CHECK(s.successes == 5);
  CHECK(s.failures == 2);
  CHECK(s.rejections == 1);
}

TEST_CASE("reset and trip force the state; the callback may call the breaker back",
          "[circuit_breaker]") {
  ManualClock clock;
  std::vector<Transition> log;
  CircuitBreaker::Options o = options(clock);
  o.consecutive_failures = 1;
  o.cooldown = 1s;
  CircuitBreaker* self = nullptr;
  int reentered = 0;
  o.on_state_change = [&](CircuitState from, CircuitState to) {
    log.emplace_back(from, to);
    if (to == CircuitState::half_open && reentered++ == 0) self->reset();  // re-entrant
  };
  CircuitBreaker b(std::move(o));
  self = &b;
  b.trip();
  CHECK(b.state() == CircuitState::open);
  b.trip();  // already open: restarts the cooldown, not a state change
  clock.advance(1s);
  auto p = b.allow();  // open -> half_open, whose callback resets to closed
  CHECK(p);
  CHECK(b.state() == CircuitState::closed);
  b.record_success(p);  // stale: admitted in the half-open phase that the reset ended
  b.reset();            // already closed: not a state change
  const std::vector<Transition> expected{{CircuitState::closed, CircuitState::open},
                                         {CircuitState::open, CircuitState::half_open},
                                         {CircuitState::half_open, CircuitState::closed}};
  CHECK(log == expected);
  CHECK(b.stats().state_changes == 3);
}

TEST_CASE("a zero cooldown lets the next allow probe at once", "[circuit_breaker]") {
  ManualClock clock;
  auto o = options(clock);
  o.consecutive_failures = 1;
  o.cooldown = 0s;
  CircuitBreaker b(std::move(o));
  fail(b);
  CHECK(b.state() == CircuitState::open);
  succeed(b);
  CHECK(b.state() == CircuitState::closed);
}

TEST_CASE("concurrent allows in half-open get exactly half_open_probes permits",
          "[circuit_breaker]") {
  ManualClock clock;
  auto o = options(clock);
  o.consecutive_failures = 1;
  o.cooldown = 1s;
  o.half_open_probes = 3;
  CircuitBreaker b(std::move(o));
  fail(b);
  clock.advance(1s);
  constexpr int threads_n = 8;
  std::atomic<int> granted{0};
  std::latch all_asked{threads_n};
  std::latch release{1};
  {
    std::vector<std::jthread> threads;
    for (int t = 0; t < threads_n; ++t) {
      threads.emplace_back([&] {
        auto p = b.allow();
        if (p) ++granted;
        all_asked.count_down();
        release.wait();  // hold the permit until everyone has asked
        if (p) b.record_success(p);
      });
    }
    all_asked.wait();
    release.count_down();
  }
  CHECK(granted == 3);
  CHECK(b.stats().rejections == threads_n - 3);
  CHECK(b.state() == CircuitState::closed);
}

TEST_CASE("under concurrent calls every transition is legal and the chain is unbroken",
          "[circuit_breaker]") {
  const std::uint64_t seed = herald_test::seed("circuit_breaker concurrent transitions");
  std::vector<Transition> log;  // appended under the breaker's lock only
  CircuitBreaker::Options o;
  o.consecutive_failures = 3;
  o.failure_ratio = 0.6;
  o.minimum_calls = 20;
  o.window = 50ms;
  o.window_buckets = 5;
  o.cooldown = 200us;
  o.half_open_probes = 2;
  o.half_open_successes = 2;
  o.on_state_change = [&log](CircuitState from, CircuitState to) { log.emplace_back(from, to); };
  CircuitBreaker b(std::move(o));
  constexpr int threads_n = 4;
  const int calls = herald_test::scaled(20000);
  std::atomic<std::uint64_t> admitted{0}, rejected{0}, ok{0}, bad{0};
  {
    std::vector<std::jthread> threads;
    for (int t = 0; t < threads_n; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937_64 rng(seed + static_cast<std::uint64_t>(t));
        for (int i = 0; i < calls; ++i) {
          // Phases of mostly failing and mostly healthy downstream, so the breaker cycles.
          const bool healthy = (i / 500) % 2 == 0;
          auto p = b.allow();
          if (!p) {
            ++rejected;
            continue;
          }
          ++admitted;
          if (rng() % 16 == 0) continue;  // abandoned permit
          if (rng() % 100 < (healthy ? 5u : 80u)) {
            ++bad;
            b.record_failure(p);
          } else {
            ++ok;
            b.record_success(p);
          }
        }
      });
    }
  }
  const auto s = b.stats();
  CHECK(s.successes == ok);
  CHECK(s.failures == bad);
  CHECK(s.rejections == rejected);
  CHECK(admitted + rejected == static_cast<std::uint64_t>(threads_n * calls));
  CHECK(s.state_changes == log.size());
  CHECK(log.size() > 2);  // the breaker did cycle
  bool all_legal = true;
  bool chained = true;
  CircuitState at = CircuitState::closed;
  for (const Transition& t : log) {
    all_legal = all_legal && legal(t);
    chained = chained && t.first == at;
    at = t.second;
  }
  CHECK(all_legal);
  CHECK(chained);
  CHECK(at == b.state());
}
