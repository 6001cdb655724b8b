// BoundedQueue<T>: construction, FIFO, element lifetimes, exception safety, close, stop_token,
// timeouts and batch pops. The concurrency soak is in bounded_queue_stress_test.cpp.
#include <herald/bounded_queue.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

using herald::BoundedQueue;
using namespace std::chrono_literals;
using herald_test::BlockedProbe;
using herald_test::Counted;
using herald_test::CountedGuard;

namespace {

// Constructible from (int, bool): throws when asked to, to exercise try_emplace's temporary path.
struct MaybeThrows {
  int value;
  MaybeThrows(int v, bool fail) : value(v) {
    if (fail) throw std::runtime_error("construction refused");
  }
};

}  // namespace

TEST_CASE("capacity is rounded up to a power of two", "[bounded_queue]") {
  const std::pair<std::size_t, std::size_t> cases[] = {
      {1, 1}, {2, 2}, {3, 4}, {5, 8}, {8, 8}, {17, 32}, {1000, 1024}, {1024, 1024}, {1025, 2048}};
  for (const auto& [requested, expected] : cases) {
    BoundedQueue<int> q(requested);
    CHECK(q.capacity() == expected);
    std::size_t pushed = 0;
    while (q.try_push(static_cast<int>(pushed)))
      ++pushed;
    CHECK(pushed == expected);
    CHECK(q.approx_size() == expected);
  }
}

TEST_CASE("capacity zero throws std::invalid_argument", "[bounded_queue]") {
  CHECK_THROWS_AS(BoundedQueue<int>(0), std::invalid_argument);
}

TEST_CASE("elements pop in FIFO order across many laps of the ring", "[bounded_queue]") {
  BoundedQueue<int> q(8);
  CHECK_FALSE(q.try_pop().has_value());
  int next_in = 0;
  int next_out = 0;
  for (int round = 0; round < 100; ++round) {
    const int burst = 1 + round % 8;  // varying fill levels, so head and tail wrap differently
    for (int i = 0; i < burst; ++i)
      REQUIRE(q.try_push(next_in++));
    CHECK(q.approx_size() == static_cast<std::size_t>(burst));
    for (int i = 0; i < burst; ++i) {
      auto v = q.try_pop();
      REQUIRE(v.has_value());
      CHECK(*v == next_out++);
    }
    CHECK_FALSE(q.try_pop().has_value());
  }
  for (int i = 0; i < 8; ++i)
    REQUIRE(q.try_push(i));
  CHECK_FALSE(q.try_push(99));  // full
  CHECK(q.approx_size() == 8);
  for (int i = 0; i < 8; ++i)
    CHECK(*q.pop() == i);
}

TEST_CASE("move-only elements can be pushed, emplaced and popped", "[bounded_queue]") {
  BoundedQueue<std::unique_ptr<int>> q(2);
  REQUIRE(q.try_push(std::make_unique<int>(1)));
  REQUIRE(q.try_emplace(new int(2)));
  SECTION("a push into a full queue does not consume the value") {
    auto p = std::make_unique<int>(3);
    CHECK_FALSE(q.try_push(std::move(p)));
    REQUIRE(p != nullptr);
    CHECK(*p == 3);
    CHECK_FALSE(q.push_for(std::move(p), 0ms));
    REQUIRE(p != nullptr);
    CHECK_FALSE(q.push_for(std::move(p), 1ms));
    REQUIRE(p != nullptr);
  }
  SECTION("a push into a closed queue does not consume the value") {
    CHECK(*q.pop().value() == 1);
    q.close();
    auto p = std::make_unique<int>(3);
    CHECK_FALSE(q.try_push(std::move(p)));
    CHECK_FALSE(q.push(std::move(p)));
    CHECK_FALSE(q.push(std::move(p), std::stop_token{}));
    REQUIRE(p != nullptr);
    CHECK(*p == 3);
  }
  SECTION("elements come out in order") {
    CHECK(*q.pop().value() == 1);
    CHECK(*q.try_pop().value() == 2);
  }
}

TEST_CASE("element lifetimes balance: no leak, no double destroy", "[bounded_queue]") {
  CountedGuard guard;
  SECTION("push, pop and a queue destroyed with elements left, after wrapping") {
    {
      BoundedQueue<Counted> q(4);
      for (std::uint64_t i = 0; i < 3; ++i)
        REQUIRE(q.try_emplace(i));
      for (std::uint64_t i = 0; i < 3; ++i)
        CHECK(q.try_pop()->value == i);
      const Counted c(7);
      REQUIRE(q.try_push(c));       // copy
      REQUIRE(q.push(Counted(8)));  // move
      REQUIRE(q.try_emplace(9));    // in place
      REQUIRE(q.push_for(c, 1s));   // copy, timed
      CHECK_FALSE(q.try_push(c));   // full: nothing constructed
      CHECK(Counted::live == 5);    // c plus four queued
      CHECK(q.pop()->value == 7);
      CHECK(Counted::live == 4);
    }  // destroyed holding three elements whose cells straddle the end of the ring
    CHECK(Counted::live == 0);
    CHECK(Counted::double_destroyed == 0);
  }
  SECTION("batch pops") {
    {
      BoundedQueue<Counted> q(8);
      for (std::uint64_t i = 0; i < 6; ++i)
        REQUIRE(q.try_emplace(i));
      std::vector<Counted> out;
      CHECK(q.try_pop_many(std::back_inserter(out), 4) == 4);
      CHECK(Counted::live == 6);
    }
    CHECK(Counted::live == 0);
    CHECK(Counted::double_destroyed == 0);
  }
}

TEST_CASE("a throwing copy leaves the queue consistent and loses nothing", "[bounded_queue]") {
  CountedGuard guard;
  {
    BoundedQueue<Counted> q(4);
    for (std::uint64_t i = 0; i < 3; ++i)
      REQUIRE(q.try_emplace(i));
    const Counted extra(10);
    Counted::throw_on_copy = true;
    CHECK_THROWS_AS(q.try_push(extra), std::runtime_error);
    CHECK_THROWS_AS(q.push(extra), std::runtime_error);
    CHECK_THROWS_AS(q.push_for(extra, 1s), std::runtime_error);
    CHECK_THROWS_AS(q.push(extra, std::stop_token{}), std::runtime_error);
    CHECK(q.approx_size() == 3);
    CHECK(Counted::live == 4);
    Counted::throw_on_copy = false;
    // Every slot still works: fill the last one, drain in order, go round again.
    REQUIRE(q.try_push(extra));
    for (std::uint64_t i = 0; i < 3; ++i)
      CHECK(q.try_pop()->value == i);
    CHECK(q.try_pop()->value == 10);
    CHECK_FALSE(q.try_pop().has_value());
    for (std::uint64_t i = 0; i < 4; ++i)
      REQUIRE(q.try_emplace(20 + i));
    for (std::uint64_t i = 0; i < 4; ++i)
      CHECK(q.pop()->value == 20 + i);
  }
  CHECK(Counted::live == 0);
  CHECK(Counted::double_destroyed == 0);
}

TEST_CASE("a throwing emplace leaves the queue consistent", "[bounded_queue]") {
  BoundedQueue<MaybeThrows> q(2);
  REQUIRE(q.try_emplace(1, false));
  CHECK_THROWS_AS(q.try_emplace(2, true), std::runtime_error);
  REQUIRE(q.try_emplace(3, false));
  CHECK_FALSE(q.try_emplace(4, true));  // full: nothing is constructed, so nothing throws
  CHECK(q.try_pop()->value == 1);
  CHECK(q.try_pop()->value == 3);
  CHECK_FALSE(q.try_pop().has_value());
}

TEST_CASE("after close pushes fail and pops drain what is left, then report empty",
          "[bounded_queue]") {
  BoundedQueue<int> q(4);
  REQUIRE(q.try_push(1));
  REQUIRE(q.push(2));
  CHECK_FALSE(q.is_closed());
  q.close();
  q.close();  // idempotent
  CHECK(q.is_closed());
  CHECK_FALSE(q.try_push(3));
  CHECK_FALSE(q.push(3));
  CHECK_FALSE(q.push_for(3, 1s));
  CHECK_FALSE(q.try_emplace(3));
  CHECK(q.approx_size() == 2);
  CHECK(q.pop() == 1);
  CHECK(q.pop_for(1s) == 2);
  CHECK_FALSE(q.pop().has_value());
  CHECK_FALSE(q.pop_for(std::chrono::nanoseconds::max()).has_value());
  CHECK_FALSE(q.pop(std::stop_token{}).has_value());
  CHECK_FALSE(q.try_pop().has_value());
}

TEST_CASE("close wakes blocked poppers and pushers", "[bounded_queue]") {
  SECTION("poppers on an empty queue") {
    BoundedQueue<int> q(4);
    std::atomic<int> woke{0};
    std::array<BlockedProbe, 3> popping;
    std::vector<std::jthread> threads;
    threads.emplace_back([&] {
      popping[0].arrive();
      if (!q.pop()) ++woke;
    });
    threads.emplace_back([&] {
      popping[1].arrive();
      if (!q.pop_for(std::chrono::hours::max())) ++woke;
    });
    threads.emplace_back([&] {
      popping[2].arrive();
      if (!q.pop(std::stop_source{}.get_token())) ++woke;
    });
    for (auto& p : popping)
      p.wait_until_blocked();
    q.close();
    threads.clear();  // joins
    CHECK(woke == 3);
  }
  SECTION("pushers on a full queue") {
    BoundedQueue<int> q(1);
    REQUIRE(q.try_push(0));
    std::atomic<int> failed{0};
    std::array<BlockedProbe, 3> pushing;
    std::vector<std::jthread> threads;
    threads.emplace_back([&] {
      pushing[0].arrive();
      if (!q.push(1)) ++failed;
    });
    threads.emplace_back([&] {
      pushing[1].arrive();
      if (!q.push_for(2, std::chrono::seconds::max())) ++failed;
    });
    threads.emplace_back([&] {
      pushing[2].arrive();
      if (!q.push(3, std::stop_source{}.get_token())) ++failed;
    });
    for (auto& p : pushing)
      p.wait_until_blocked();
    q.close();
    threads.clear();
    CHECK(failed == 3);
    CHECK(q.pop() == 0);  // what was queued before close is still there
    CHECK_FALSE(q.pop().has_value());
  }
}

TEST_CASE("a stop request wakes a blocked pop and a blocked push", "[bounded_queue]") {
  SECTION("pop") {
    BoundedQueue<int> q(4);
    std::stop_source stop;
    BlockedProbe popping;
    std::optional<int> got{42};
    std::jthread t([&] {
      popping.arrive();
      got = q.pop(stop.get_token());
    });
    popping.wait_until_blocked();
    stop.request_stop();
    t.join();
    CHECK_FALSE(got.has_value());
    CHECK_FALSE(q.is_closed());
    REQUIRE(q.try_push(5));  // the queue is unaffected
    CHECK(q.try_pop() == 5);
  }
  SECTION("push") {
    BoundedQueue<int> q(1);
    REQUIRE(q.try_push(0));
    std::stop_source stop;
    BlockedProbe pushing;
    bool pushed = true;
    std::jthread t([&] {
      pushing.arrive();
      pushed = q.push(1, stop.get_token());
    });
    pushing.wait_until_blocked();
    stop.request_stop();
    t.join();
    CHECK_FALSE(pushed);
    CHECK(q.try_pop() == 0);
    CHECK_FALSE(q.try_pop().has_value());
  }
  SECTION("a stop requested beforehand makes both return at once") {
    BoundedQueue<int> q(4);
    std::stop_source stop;
    stop.request_stop();
    CHECK_FALSE(q.push(1, stop.get_token()));
    REQUIRE(q.try_push(2));
    CHECK_FALSE(q.pop(stop.get_token()).has_value());
    CHECK(q.approx_size() == 1);
  }
  SECTION("a stop on an unrelated token does not disturb a waiter") {
    BoundedQueue<int> q(4);
    std::stop_source mine;
    std::stop_source other;
    BlockedProbe popping;
    std::optional<int> got;
    std::jthread t([&] {
      popping.arrive();
      got = q.pop(mine.get_token());
    });
    popping.wait_until_blocked();
    other.request_stop();
    REQUIRE(q.push(7));
    t.join();
    CHECK(got == 7);
  }
}

TEST_CASE("a zero timeout tries once and a huge one waits for the other thread",
          "[bounded_queue]") {
  SECTION("zero and negative timeouts try once") {
    BoundedQueue<int> q(1);
    CHECK_FALSE(q.pop_for(0ms).has_value());
    CHECK_FALSE(q.pop_for(-5s).has_value());
    CHECK(q.push_for(1, 0ns));
    CHECK_FALSE(q.push_for(2, 0ns));
    CHECK_FALSE(q.push_for(2, -1h));
    CHECK(q.pop_for(0s) == 1);
  }
  SECTION("a short timeout gives up after at least that long") {
    BoundedQueue<int> q(1);
    auto start = std::chrono::steady_clock::now();
    CHECK_FALSE(q.pop_for(20ms).has_value());
    CHECK(std::chrono::steady_clock::now() - start >= 20ms);
    REQUIRE(q.try_push(1));
    start = std::chrono::steady_clock::now();
    CHECK_FALSE(q.push_for(2, 20ms));
    CHECK(std::chrono::steady_clock::now() - start >= 20ms);
  }
  SECTION("huge timeouts in any unit mean forever, not 'at once'") {
    BoundedQueue<int> q(1);
    BlockedProbe popping;  // this thread, in the first pop_for
    herald_test::ThreadChecks producer_checks;
    std::jthread producer([&] {
      popping.wait_until_blocked();
      for (int i = 1; i <= 4; ++i)
        producer_checks.expect(q.push(i));
    });
    popping.arrive();
    CHECK(q.pop_for(std::chrono::nanoseconds::max()) == 1);
    CHECK(q.pop_for(std::chrono::hours::max()) == 2);
    CHECK(q.pop_for(std::chrono::duration<double>::max()) == 3);
    CHECK(q.pop_for(std::chrono::duration<std::int64_t, std::pico>::max()) == 4);
    producer.join();
    CHECK(producer_checks.failures() == 0);
  }
  SECTION("a timed push waits for room made by another thread") {
    BoundedQueue<int> q(1);
    REQUIRE(q.try_push(1));
    BlockedProbe pushing;  // this thread, in push_for
    std::optional<int> popped;
    std::jthread consumer([&] {
      pushing.wait_until_blocked();
      popped = q.pop();
    });
    pushing.arrive();
    CHECK(q.push_for(2, std::chrono::seconds::max()));
    consumer.join();
    CHECK(popped == 1);
    CHECK(q.try_pop() == 2);
  }
}

TEST_CASE("blocking pop and push hand over between threads", "[bounded_queue]") {
  BoundedQueue<int> q(2);
  constexpr int n = 2000;
  herald_test::ThreadChecks producer_checks;
  std::jthread producer([&] {
    for (int i = 0; i < n; ++i)
      producer_checks.expect(q.push(i));
    q.close();
  });
  int expected = 0;
  while (auto v = q.pop())
    CHECK(*v == expected++);
  producer.join();
  CHECK(expected == n);
  CHECK(producer_checks.failures() == 0);
}

TEST_CASE("try_pop_many moves up to max ready elements, oldest first", "[bounded_queue]") {
  BoundedQueue<int> q(8);
  std::array<int, 16> out{};
  CHECK(q.try_pop_many(out.begin(), 4) == 0);
  for (int round = 0; round < 5; ++round) {  // several laps, so batches straddle the ring's end
    for (int i = 0; i < 6; ++i)
      REQUIRE(q.try_push(round * 10 + i));
    CHECK(q.try_pop_many(out.begin(), 0) == 0);
    CHECK(q.try_pop_many(out.begin(), 4) == 4);
    for (int i = 0; i < 4; ++i)
      CHECK(out[static_cast<std::size_t>(i)] == round * 10 + i);
    CHECK(q.try_pop_many(out.begin(), 16) == 2);
    CHECK(out[0] == round * 10 + 4);
    CHECK(out[1] == round * 10 + 5);
  }
  SECTION("into a growing container, move-only elements") {
    BoundedQueue<std::unique_ptr<int>> mq(4);
    for (int i = 0; i < 3; ++i)
      REQUIRE(mq.try_push(std::make_unique<int>(i)));
    std::vector<std::unique_ptr<int>> v;
    CHECK(mq.try_pop_many(std::back_inserter(v), 10) == 3);
    REQUIRE(v.size() == 3);
    for (int i = 0; i < 3; ++i)
      CHECK(*v[static_cast<std::size_t>(i)] == i);
  }
  SECTION("a full batch frees room for producers") {
    for (int i = 0; i < 8; ++i)
      REQUIRE(q.try_push(i));
    CHECK_FALSE(q.try_push(8));
    CHECK(q.try_pop_many(out.begin(), 8) == 8);
    for (int i = 0; i < 8; ++i)
      REQUIRE(q.try_push(i));
  }
}

TEST_CASE("a throwing write in try_pop_many loses only the element being written",
          "[bounded_queue]") {
  CountedGuard guard;
  struct ThrowingSink {  // an output iterator whose third write throws
    std::vector<std::uint64_t>* got;
    int* writes;
    ThrowingSink& operator*() { return *this; }
    ThrowingSink& operator=(Counted&& c) {
      if (++*writes == 3) throw std::runtime_error("sink full");
      got->push_back(c.value);
      return *this;
    }
    ThrowingSink& operator++() { return *this; }
    ThrowingSink operator++(int) { return *this; }
  };
  {
    BoundedQueue<Counted> q(8);
    for (std::uint64_t i = 0; i < 6; ++i)
      REQUIRE(q.try_emplace(i));
    std::vector<std::uint64_t> got;
    int writes = 0;
    CHECK_THROWS_AS(q.try_pop_many(ThrowingSink{&got, &writes}, 5), std::runtime_error);
    CHECK(got == std::vector<std::uint64_t>{0, 1});
    CHECK(q.approx_size() == 3);
    for (std::uint64_t i = 3; i < 6; ++i)
      CHECK(q.try_pop()->value == i);
    CHECK(Counted::live == 0);
  }
  CHECK(Counted::double_destroyed == 0);
}
