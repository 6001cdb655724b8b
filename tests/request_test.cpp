// Service<Req, Rep> (herald/request.hpp): replies, errors and their texts, timeouts and late
// replies, no responders, queue groups, scatter-gather, cancellation, a responder leaving with
// requests queued, closing, async forms, deferred replies, headers -- and, under load, that
// every requester gets the reply to its own request and the counters add up.
#include <herald/request.hpp>
#include <herald/worker_pool.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using herald::ManyEnd;
using herald::Reply;
using herald::Request;
using herald::RequestError;
using herald::Service;
using herald_test::eventually;
using herald_test::Gate;

namespace {

using Clock = std::chrono::steady_clock;

auto plus_one() {
  return [](const Request<int>& r) { return *r + 1; };
}

// Every request accounted for exactly once by how it ended.
void check_ends_add_up(const herald::ServiceStats& s) {
  CHECK(s.requests == s.replied + s.failed + s.no_responders + s.timeouts + s.cancelled + s.closed);
}

}  // namespace

TEST_CASE("a request gets its responder's reply; a throwing responder's text comes back",
          "[request]") {
  herald::WorkerPool pool(2, 64);
  Service<int, int> svc;
  auto responder = svc.serve(
      "calc.*",
      [](const Request<int>& r) {
        if (*r < 0) throw std::domain_error("negative input " + std::to_string(*r));
        return r.topic() == "calc.double" ? *r * 2 : *r + 1;
      },
      pool);
  const Reply<int> a = svc.request("calc.double", 21, 5s);
  REQUIRE(a.ok());
  CHECK(*a == 42);
  CHECK(a.error() == RequestError::none);
  CHECK(svc.request("calc.inc", 1, 5s).value() == 2);

  const Reply<int> b = svc.request("calc.inc", -3, 5s);
  CHECK_FALSE(b);
  CHECK(b.error() == RequestError::failed);
  CHECK(b.error_text() == "negative input -3");
  CHECK_THROWS_AS(b.value(), herald::RequestFailed);
  const auto s = svc.stats();
  CHECK(s.requests == 3);
  CHECK(s.replied == 2);
  CHECK(s.failed == 1);
  check_ends_add_up(s);
}

TEST_CASE("no responders comes back at once, not at the timeout", "[request]") {
  herald::WorkerPool pool(1, 64);
  Service<int, int> svc;
  auto other = svc.serve("elsewhere", plus_one(), pool);
  const auto start = Clock::now();
  const Reply<int> r = svc.request("nobody.home", 1, 30s);
  CHECK(Clock::now() - start < 5s);
  CHECK(r.error() == RequestError::no_responders);
  CHECK(r.error_text().find("nobody.home") != std::string::npos);
  auto future = svc.request_async("nobody.home", 1, 30s);
  REQUIRE(future.wait_for(5s) == std::future_status::ready);
  CHECK(future.get().error() == RequestError::no_responders);
  CHECK(svc.stats().no_responders == 2);
}

TEST_CASE("a timed-out request ends at its timeout; the late reply is counted, never delivered",
          "[request]") {
  herald::WorkerPool pool(1, 64);
  Service<int, int> svc;
  Gate gate;
  std::atomic<int> started{0};
  auto responder = svc.serve(
      "slow",
      [&](const Request<int>& r) {
        if (started++ == 0) gate.wait();  // only the first request is held up
        return *r * 10;
      },
      pool);
  const auto start = Clock::now();
  const Reply<int> r = svc.request("slow", 1, 50ms);
  CHECK(Clock::now() - start >= 50ms);
  CHECK(r.error() == RequestError::timeout);
  gate.open();
  CHECK(eventually([&] { return svc.stats().late_replies == 1; }));
  // The next request gets its own reply, not the late one.
  const Reply<int> next = svc.request("slow", 2, 5s);
  REQUIRE(next.ok());
  CHECK(*next == 20);
  const auto s = svc.stats();
  CHECK(s.timeouts == 1);
  CHECK(s.replied == 1);
  check_ends_add_up(s);
}

TEST_CASE("a request whose requester gave up before it was handled is skipped", "[request]") {
  herald::WorkerPool pool(1, 64);
  Service<int, int> svc;
  Gate gate;
  std::atomic<int> handled{0};
  auto responder = svc.serve(
      "q",
      [&](const Request<int>& r) {
        if (*r == 0) gate.wait();
        ++handled;
        return *r;
      },
      pool);
  auto first = svc.request_async("q", 0, 10s);                        // holds the only worker
  CHECK(svc.request("q", 1, 20ms).error() == RequestError::timeout);  // queued behind it
  gate.open();
  CHECK(first.get().ok());
  CHECK(eventually([&] { return svc.stats().skipped == 1; }));
  CHECK(handled == 1);
}

TEST_CASE("a queue group shares the requests; without a group every responder answers",
          "[request][group]") {
  herald::WorkerPool pool(2, 256);
  Service<int, int> svc;
  std::vector<herald::Responder<int, int>> group;
  for (int i = 0; i < 3; ++i) {
    group.push_back(svc.serve("work", [i](const Request<int>& r) { return *r * 10 + i; }, pool,
                              {.queue_group = "workers"}));
  }
  std::array<int, 3> answered_by{};
  for (int k = 0; k < 300; ++k) {
    const Reply<int> r = svc.request("work", k, 5s);
    REQUIRE(r.ok());
    CHECK(*r / 10 == k);
    ++answered_by[static_cast<std::size_t>(*r % 10)];
  }
  std::uint64_t received = 0;
  for (int i = 0; i < 3; ++i) {
    CHECK(answered_by[static_cast<std::size_t>(i)] >= 1);
    received += group[static_cast<std::size_t>(i)].stats().received;
  }
  CHECK(received == 300);  // each request went to exactly one member
  CHECK(svc.stats().extra_replies == 0);

  SECTION("scatter-gather: request_many collects one reply per responder") {
    std::vector<herald::Responder<int, int>> all;
    for (int i = 0; i < 3; ++i) {
      all.push_back(svc.serve(
          "census", [i](const Request<int>&) { return i; }, pool));
    }
    const auto start = Clock::now();
    const herald::Replies<int> replies = svc.request_many("census", 0, {.timeout = 30s});
    CHECK(Clock::now() - start < 10s);  // ended when every responder was done, not at 30 s
    CHECK(replies.ended == ManyEnd::all_answered);
    REQUIRE(replies.size() == 3);
    int sum = 0;
    for (const auto& r : replies)
      sum += r.value();
    CHECK(sum == 0 + 1 + 2);

    const auto before = svc.stats();
    const auto two = svc.request_many("census", 0, {.max_replies = 2, .timeout = 30s});
    CHECK(two.ended == ManyEnd::max_replies);
    CHECK(two.size() == 2);
    // The third answer came too late, or its responder saw the request had ended and skipped it.
    const auto third_done = [&](const herald::ServiceStats& s) {
      return s.late_replies + s.skipped == before.late_replies + before.skipped + 1;
    };
    CHECK(eventually([&] { return third_done(svc.stats()); }));
    const auto after_many = svc.stats();

    // A plain request to several responders takes the first reply; the others are extra, or
    // skipped when the first had come before they started.
    CHECK(svc.request("census", 0, 5s).ok());
    CHECK(eventually([&] {
      const auto s = svc.stats();
      return s.extra_replies + s.skipped == after_many.extra_replies + after_many.skipped + 2;
    }));
    CHECK(svc.request_many("nobody", 0, {.timeout = 30s}).ended == ManyEnd::no_responders);
  }
}

TEST_CASE("request_many stops at the stall limit and at the timeout", "[request]") {
  herald::WorkerPool pool(2, 64);
  Service<int, int> svc;
  std::vector<herald::Replier<int>> held;  // answered only at the end
  std::mutex mutex;
  auto quick = svc.serve("poll", plus_one(), pool);
  auto silent = svc.serve(
      "poll",
      [&](const Request<int>&, herald::Replier<int> replier) {
        std::lock_guard lock(mutex);
        held.push_back(std::move(replier));
      },
      pool);
  const auto stalled = svc.request_many("poll", 1, {.timeout = 30s, .stall = 100ms});
  CHECK(stalled.ended == ManyEnd::stall);
  CHECK(stalled.size() == 1);
  const auto timed = svc.request_many("poll", 1, {.timeout = 100ms});
  CHECK(timed.ended == ManyEnd::timeout);
  CHECK(timed.size() == 1);
  std::lock_guard lock(mutex);
  for (auto& r : held)
    r.reply(0);
  CHECK(svc.stats().late_replies == 2);
}

TEST_CASE("a stop request cancels a waiting request at once", "[request][stop]") {
  herald::WorkerPool pool(1, 64);
  Service<int, int> svc;
  Gate gate;
  Gate entered;
  auto responder = svc.serve(
      "hold",
      [&](const Request<int>& r) {
        entered.open();
        gate.wait();
        return *r;
      },
      pool);
  std::stop_source stop;
  std::jthread canceller([&] {
    entered.wait();
    stop.request_stop();
  });
  const auto start = Clock::now();
  const Reply<int> r = svc.request("hold", 1, 30s, stop.get_token());
  CHECK(Clock::now() - start < 10s);
  CHECK(r.error() == RequestError::cancelled);
  gate.open();
  CHECK(eventually([&] { return svc.stats().late_replies == 1; }));

  std::stop_source already;
  already.request_stop();
  CHECK(svc.request("hold", 1, 30s, already.get_token()).error() == RequestError::cancelled);
  const auto s = svc.stats();
  CHECK(s.cancelled == 2);
  check_ends_add_up(s);
}

TEST_CASE("a responder unsubscribed with requests queued: they end at once, unanswered",
          "[request][lifetime]") {
  herald::WorkerPool pool(1, 64);
  Service<int, int> svc;
  Gate gate;
  Gate entered;
  auto responder = svc.serve(
      "one",
      [&](const Request<int>& r) {
        entered.open();
        gate.wait();
        return *r;
      },
      pool);
  auto running = svc.request_async("one", 1, 30s);
  entered.wait();
  auto queued = svc.request_async("one", 2, 30s);
  std::jthread leaver([&] { responder.unsubscribe(); });    // quiescent: waits for the handler
  CHECK(eventually([&] { return !responder.is_open(); }));  // closed, now waiting for it
  gate.open();
  leaver.join();
  CHECK_FALSE(responder.is_open());
  REQUIRE(running.wait_for(10s) == std::future_status::ready);
  CHECK(running.get().value() == 1);
  REQUIRE(queued.wait_for(10s) == std::future_status::ready);  // not at its 30 s timeout
  const Reply<int> r = queued.get();
  CHECK(r.error() == RequestError::no_responders);
  CHECK(r.error_text().find("went away") != std::string::npos);
}

TEST_CASE("a closed service ends requests with closed; pending async ones too", "[request]") {
  herald::WorkerPool pool(1, 64);
  Gate gate;
  Gate entered;
  auto svc = std::make_unique<Service<int, int>>();
  auto responder = svc->serve(
      "x",
      [&](const Request<int>& r) {
        entered.open();
        gate.wait();
        return *r;
      },
      pool);
  auto pending = svc->request_async("x", 1, 30s);
  entered.wait();
  svc->close();
  CHECK(svc->is_closed());
  REQUIRE(pending.wait_for(10s) == std::future_status::ready);
  CHECK(pending.get().error() == RequestError::closed);
  CHECK(svc->request("x", 2, 5s).error() == RequestError::closed);
  CHECK(svc->request_many("x", 2, {}).ended == ManyEnd::closed);
  gate.open();
  CHECK(responder.wait_idle(10s));
  CHECK(svc->stats().late_replies == 1);
  svc.reset();  // the responder handle outlives the service
  responder.unsubscribe();
}

TEST_CASE("async requests: a future, or a callback run once on an executor", "[request][async]") {
  herald::WorkerPool pool(2, 64);
  Service<int, int> svc;
  auto responder = svc.serve("inc", plus_one(), pool);
  CHECK(svc.request_async("inc", 1, 5s).get().value() == 2);

  std::promise<std::pair<int, bool>> done;
  svc.request_async("inc", 41, 5s, pool, [&](Reply<int> r) {
    done.set_value({r.value(), pool.running_in_this_thread()});
  });
  const auto [value, on_pool] = done.get_future().get();
  CHECK(value == 42);
  CHECK(on_pool);

  std::atomic<int> calls{0};
  std::promise<RequestError> timed;
  auto silent = svc.serve(
      "void", [](const Request<int>&, herald::Replier<int>) {}, pool);
  // The Replier is dropped unanswered at once, so this ends with no_responders, not a timeout.
  svc.request_async("void", 1, 30s, herald::inline_executor, [&](Reply<int> r) {
    ++calls;
    timed.set_value(r.error());
  });
  CHECK(timed.get_future().get() == RequestError::no_responders);
  CHECK(calls == 1);

  Gate gate;
  auto slow = svc.serve(
      "slow",
      [&](const Request<int>& r) {
        gate.wait();
        return *r;
      },
      pool);
  auto late = svc.request_async("slow", 1, 30ms);
  REQUIRE(late.wait_for(10s) == std::future_status::ready);
  CHECK(late.get().error() == RequestError::timeout);
  gate.open();
  CHECK(eventually([&] { return svc.stats().late_replies == 1; }));
  CHECK_THROWS_AS(svc.request_async("inc", 1, 1s, herald::dedicated_thread, [](Reply<int>) {}),
                  std::invalid_argument);
}

TEST_CASE("deferred replies from another thread, and headers both ways", "[request][headers]") {
  herald::WorkerPool pool(1, 64);
  Service<std::string, std::string> svc;
  std::vector<std::jthread> workers;
  std::mutex mutex;
  auto responder = svc.serve(
      "echo",
      [&](const Request<std::string>& r, herald::Replier<std::string> replier) {
        const std::string trace(r.headers().get("trace-id").value_or("none"));
        std::lock_guard lock(mutex);
        workers.emplace_back([replier = std::move(replier), value = *r, trace]() mutable {
          replier.reply(value + "!", {{"trace-id", trace}});
        });
      },
      pool);
  const auto r = svc.request("echo", "hi", 5s, herald::Headers{{"trace-id", "t-77"}});
  REQUIRE(r.ok());
  CHECK(*r == "hi!");
  CHECK(r.headers().get("trace-id") == std::optional<std::string_view>("t-77"));
  std::lock_guard lock(mutex);
  workers.clear();
}

TEST_CASE("bad input: a bad topic or timeout throws and counts nothing", "[request]") {
  herald::WorkerPool pool(1, 64);
  Service<int, int> svc;
  auto responder = svc.serve("ok", plus_one(), pool);
  CHECK_THROWS_AS(svc.request("bad..topic", 1, 1s), herald::InvalidTopic);
  CHECK_THROWS_AS(svc.request("ok", 1, -1ms), std::invalid_argument);
  CHECK_THROWS_AS(svc.request_async("a.*", 1, 1s), herald::InvalidTopic);
  CHECK_THROWS_AS(svc.request_many("ok", 1, {.timeout = 0ms}), std::invalid_argument);
  CHECK_THROWS_AS(svc.serve("bad..", plus_one(), pool), herald::InvalidTopic);
  CHECK_THROWS_AS(svc.serve("ok", plus_one(), pool, {.capacity = 0}), std::invalid_argument);
  CHECK(svc.stats().requests == 0);
  CHECK(svc.request("ok", 1, 5s).value() == 2);
}

TEST_CASE("under load every requester gets the reply to its own request; nothing leaks",
          "[request][stress]") {
  herald_test::CountedGuard guard;
  {
    herald::WorkerPool pool(2, 1024);
    Service<herald_test::Counted, std::uint64_t> svc;
    std::vector<herald::Responder<herald_test::Counted, std::uint64_t>> responders;
    for (int i = 0; i < 3; ++i) {
      responders.push_back(svc.serve("svc.id",
                                     [](const Request<herald_test::Counted>& r) {
                                       if (r->value % 97 == 0)
                                         std::this_thread::sleep_for(2ms);  // some time out
                                       if (r->value % 89 == 0) throw std::runtime_error("refused");
                                       return r->value * 2 + 1;
                                     },
                                     pool, {.queue_group = "g", .capacity = 4096}));
    }
    constexpr int kThreads = 4;
    constexpr std::uint64_t kEach = 1500;
    std::atomic<std::uint64_t> wrong{0}, ok{0}, failed{0}, timeouts{0}, other{0};
    {
      std::vector<std::jthread> requesters;
      for (int t = 0; t < kThreads; ++t) {
        requesters.emplace_back([&, t] {
          for (std::uint64_t i = 1; i <= kEach; ++i) {
            const std::uint64_t id = (static_cast<std::uint64_t>(t) << 32) | i;
            const auto r =
                svc.request("svc.id", herald_test::Counted(id), (i % 97 == 0) ? 100us : 5s);
            if (r.ok()) {
              ++ok;
              if (*r != id * 2 + 1) ++wrong;
            } else if (r.error() == RequestError::failed) {
              ++failed;
              if (r.error_text() != "refused") ++wrong;
            } else if (r.error() == RequestError::timeout) {
              ++timeouts;
            } else {
              ++other;
            }
          }
        });
      }
    }
    CHECK(wrong == 0);
    CHECK(other == 0);
    CHECK(ok + failed + timeouts == kThreads * kEach);
    for (auto& r : responders)
      CHECK(r.wait_idle(10s));
    const auto s = svc.stats();
    CHECK(s.requests == kThreads * kEach);
    CHECK(s.replied == ok);
    CHECK(s.failed == failed);
    CHECK(s.timeouts == timeouts);
    check_ends_add_up(s);
  }
  CHECK(herald_test::Counted::live == 0);
}
