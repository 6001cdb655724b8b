// detail/parking.hpp: Deadline, the event count and wait_until -- the one waiting protocol that
// BoundedQueue, WorkerPool, handler subscriptions and the NATS bridge build on.
#include <herald/detail/parking.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <stop_token>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using herald_test::BlockedProbe;

TEST_CASE("Deadline::after maps zero to passed, huge to forever, and never overflows",
          "[parking]") {
  using herald::detail::Deadline;
  CHECK(Deadline::after(0s).passed());
  CHECK(Deadline::after(-1ms).passed());
  CHECK_FALSE(Deadline::after(1h).passed());
  CHECK_FALSE(Deadline::after(1h).is_forever());
  CHECK(Deadline::after(std::chrono::nanoseconds::max()).is_forever());
  CHECK(Deadline::after(std::chrono::hours::max()).is_forever());
  CHECK(Deadline::after(std::chrono::duration<double>::max()).is_forever());
  CHECK(Deadline::after(std::chrono::duration<std::uint64_t, std::milli>::max()).is_forever());
  const auto d = Deadline::after(std::chrono::duration<double, std::milli>(2.5));
  CHECK(d.when() > std::chrono::steady_clock::now() - 1s);
  CHECK_FALSE(Deadline::forever().passed());
}

TEST_CASE("wait_until wakes on notify, times out, and honours a stop request", "[parking]") {
  using herald::detail::Deadline;
  using herald::detail::EventCount;
  using herald::detail::wait_until;
  using herald::detail::WaitStatus;
  EventCount ec;
  std::atomic<int> state{0};
  const auto ready = [&] { return state.load(std::memory_order_seq_cst) != 0; };

  CHECK(wait_until(ec, ready, Deadline::after(0s)) == WaitStatus::timeout);
  CHECK(wait_until(ec, ready, Deadline::after(5ms)) == WaitStatus::timeout);

  std::array<BlockedProbe, 3> parked;
  std::vector<std::jthread> waiters;
  std::atomic<int> done{0};
  for (auto& probe : parked) {
    waiters.emplace_back([&, p = &probe] {
      p->arrive();
      if (wait_until(ec, ready) == WaitStatus::done) ++done;
    });
  }
  for (auto& probe : parked)
    probe.wait_until_blocked();
  state.store(1, std::memory_order_seq_cst);
  ec.notify_one();  // one wake-up; the woken waiter hands it on until all have seen the change
  waiters.clear();
  CHECK(done == 3);

  state.store(0, std::memory_order_seq_cst);
  std::stop_source stop;
  WaitStatus status = WaitStatus::done;
  BlockedProbe waiting;
  std::jthread stopped([&] {
    waiting.arrive();
    status = wait_until(ec, ready, Deadline::forever(), stop.get_token());
  });
  waiting.wait_until_blocked();
  stop.request_stop();
  stopped.join();
  CHECK(status == WaitStatus::stopped);
}
