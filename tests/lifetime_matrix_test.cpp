// Issue 12, the lifetime matrix: a broker, a WorkerPool, a pull subscription, a handler
// subscription on the pool, a Publisher and a consumer thread are torn down in every one of the
// 720 orders, while the consumer is parked in receive() and another thread is blocked in
// publish (Overflow::block, full queue). Every order must be clean under ASan and TSan, never
// hang, and leak nothing. Each order runs in a forked child (a crash or hang of one order is
// reported, and the others still run); HERALD_MATRIX_ORDER=2,0,5,1,4,3 (optionally with
// HERALD_MATRIX_PROBE=1) replays one order in this process, under a watchdog, for a debugger.
// Public API only.
#include <herald/broker.hpp>
#include <herald/subscription.hpp>
#include <herald/worker_pool.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <latch>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "process_support.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using herald::Broker;
using herald::CloseReason;
using herald::HandlerSubscription;
using herald::Message;
using herald::Overflow;
using herald::Subscription;
using herald_process::ChildLog;
using herald_test::Counted;

namespace {

enum Step : int { broker_step, pool_step, pull_step, handler_step, publisher_step, consumer_step };
constexpr std::array<const char*, 6> kStepNames = {
    "broker", "pool", "pull subscription", "handler subscription", "Publisher", "consumer thread"};

using Order = std::array<int, 6>;

std::string describe(const Order& order) {
  std::string s;
  for (const int step : order) {
    if (!s.empty()) s += " -> ";
    s += kStepNames[static_cast<std::size_t>(step)];
  }
  return s;
}

std::string digits(const Order& order) {
  std::string s;
  for (const int step : order) {
    if (!s.empty()) s += ',';
    s += std::to_string(step);
  }
  return s;
}

/// Tears the six objects down in `order`. With `probe`, the Publisher (while it exists) publishes
/// after every step: the survivors must keep working. Checks go to `log`.
void run_order(const Order& order, bool probe, ChildLog& log) {
  Counted::live = 0;
  {
    auto pool = std::make_unique<herald::WorkerPool>(2, 16);
    auto broker = std::make_unique<Broker<Counted>>();
    Broker<Counted>* const b = broker.get();

    // What the blocked publisher waits on: not one of the six. It closes with the broker, or is
    // destroyed after the six.
    std::optional<Subscription<Counted>> full;
    full.emplace(broker->subscribe("blk", {.capacity = 1, .overflow = Overflow::block}));
    broker->publish("blk", Counted{0});

    std::optional<Subscription<Counted>> pull;
    pull.emplace(broker->subscribe("t", {.capacity = 8}));
    std::atomic<int> handled{0};
    std::optional<HandlerSubscription<Counted>> handler;
    handler.emplace(broker->subscribe("t", [&handled](const Message<Counted>&) { ++handled; },
                                      *pool, {.capacity = 8}));
    std::optional<herald::Publisher<Counted>> pub;
    pub.emplace(broker->publisher("t"));
    pub->publish(Counted{1});  // the route is cached in the Publisher now

    // The consumer parks in receive(); its stop_token is how its step ends it.
    std::atomic<int> consumed{0};
    std::latch consumer_started(1);
    std::atomic<pid_t> consumer_tid{0};
    std::optional<std::jthread> consumer;
    consumer.emplace([&](std::stop_token st) {
      consumer_tid = herald_test::current_tid();
      consumer_started.count_down();
      while (auto m = pull->receive(st))
        ++consumed;
    });

    // Blocked in publish on `full`, through a Publisher of its own (which keeps what it needs
    // of the broker alive, so destroying the broker under it is allowed).
    std::latch publisher_started(1);
    herald::PublishResult blocked_result;
    std::atomic<pid_t> blocked_tid{0};
    std::thread blocked([&] {
      auto own = b->publisher("blk");
      blocked_tid = herald_test::current_tid();
      publisher_started.count_down();
      blocked_result = own.publish(Counted{2});
    });
    consumer_started.wait();
    publisher_started.wait();
    // Parked for real: the consumer in receive(), the publisher in its blocking offer.
    log.check(herald_test::wait_until_blocked(consumer_tid, 10s),
              "the consumer did not park in receive()");
    log.check(herald_test::wait_until_blocked(blocked_tid, 10s),
              "the publisher did not park in publish()");

    bool pull_closed_awaiting_consumer = false;
    std::uint64_t next = 10;
    for (const int step : order) {
      log.note(std::string("step: ") + kStepNames[static_cast<std::size_t>(step)]);
      switch (step) {
        case broker_step:
          broker.reset();
          break;
        case pool_step:
          pool.reset();
          break;
        case pull_step:
          // A handle must outlive the calls made on it: while the consumer may be inside
          // receive(), unsubscribe (which wakes it) and destroy the handle after the consumer.
          if (consumer) {
            pull->unsubscribe();
            pull_closed_awaiting_consumer = true;
          } else {
            pull.reset();
          }
          break;
        case handler_step:
          handler.reset();
          break;
        case publisher_step:
          pub.reset();
          break;
        case consumer_step:
          consumer->request_stop();
          consumer.reset();  // joins
          if (pull_closed_awaiting_consumer) pull.reset();
          break;
        default:
          break;
      }
      if (probe && pub) {
        const auto r = pub->publish(Counted{next++});
        log.check(r.delivered <= r.matched, "a probe publish delivered more than it matched");
        if (!broker) log.check(r.closed, "a probe publish after the broker died is not closed");
      }
    }
    log.note("step: destroy the full subscription and join the blocked publisher");
    full.reset();
    blocked.join();
    log.check(blocked_result.delivered == 0,
              "the blocked publish reports a delivery into a queue nobody drained");
    log.check(blocked_result.dropped == 0,
              "the blocked publish was counted as dropped (no timeout was set)");
  }
  const auto until = std::chrono::steady_clock::now() + 2s;
  while (Counted::live.load() != 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::yield();
  log.check(Counted::live.load() == 0,
            "leak: " + std::to_string(Counted::live.load()) + " payload(s) alive at the end");
}

std::optional<Order> replay_order() {
  const char* env = std::getenv("HERALD_MATRIX_ORDER");
  if (env == nullptr) return std::nullopt;
  Order o{};
  std::istringstream in(env);
  std::string item;
  std::size_t i = 0;
  while (std::getline(in, item, ',') && i < o.size())
    o[i++] = std::stoi(item);
  return o;
}

/// Runs every order (or the replayed one) and returns a report of those that did not end
/// cleanly, grouped by how they failed.
std::pair<int, std::string> run_matrix(bool probe) {
  if (const auto order = replay_order()) {
    std::cout << "replaying " << describe(*order) << (probe ? " with probes" : "") << "\n";
    herald_process::Watchdog watchdog(30s);
    watchdog.arm("order " + describe(*order));
    ChildLog log(STDERR_FILENO);
    run_order(*order, probe, log);
    watchdog.disarm();
    return {log.failures(), log.failures() ? "see the FAILED lines above" : ""};
  }
  std::vector<Order> orders;
  Order order = {0, 1, 2, 3, 4, 5};
  do {
    orders.push_back(order);
  } while (std::next_permutation(order.begin(), order.end()));
  // Orders run in batches, one child per batch (a fork is slow under TSan); a child that fails
  // blames the order after the last one it reported done, and the rest of its batch runs in a
  // new child.
  constexpr std::size_t kBatch = 24;
  const int total = static_cast<int>(orders.size());
  int bad = 0;
  std::map<std::string, std::vector<std::string>> by_verdict;  // verdict -> orders
  std::map<std::string, std::string> example;                  // verdict -> one output
  std::size_t next = 0;
  while (next < orders.size()) {
    const std::size_t first = next;
    const std::size_t end = std::min(first + kBatch, orders.size());
    const auto r = herald_process::run_isolated(
        [&](ChildLog& log) {
          for (std::size_t i = first; i < end; ++i) {
            run_order(orders[i], probe, log);
            if (log.failures() != 0) return;
            log.note("order done " + std::to_string(i));
          }
        },
        120s);
    // The last order the child finished.
    std::size_t done = first;
    std::size_t tail = 0;  // where the failing order's output starts
    for (std::size_t at = r.output.find("note: order done "); at != std::string::npos;
         at = r.output.find("note: order done ", at + 1)) {
      done = std::stoul(r.output.substr(at + 17)) + 1;
      tail = r.output.find('\n', at) + 1;
    }
    if (r.ok()) {
      next = end;
      continue;
    }
    ++bad;
    herald_process::ChildResult failed = r;
    failed.output = r.output.substr(tail);
    std::string key = failed.verdict();
    if (failed.exited && failed.code == 1) {  // checks failed: the first one is the signature
      const auto at = failed.output.find("FAILED: ");
      if (at != std::string::npos) {
        key += ": " + failed.output.substr(at, failed.output.find('\n', at) - at);
      }
    }
    by_verdict[key].push_back(digits(orders[done]));
    if (!example.count(key)) example[key] = describe(orders[done]) + "\n" + failed.head(30);
    next = done + 1;
  }
  std::ostringstream o;
  o << bad << " of " << total << " orders" << (probe ? " (with probes)" : "")
    << " did not end cleanly\n";
  for (const auto& [verdict, names] : by_verdict) {
    o << "- " << names.size() << " x " << verdict << "\n  orders (HERALD_MATRIX_ORDER=...):";
    for (std::size_t i = 0; i < names.size() && i < 6; ++i)
      o << " " << names[i];
    if (names.size() > 6) o << " ...";
    o << "\n  e.g. " << example[verdict] << "\n";
  }
  return {bad, o.str()};
}

}  // namespace

TEST_CASE("every teardown order of broker, pool, subscriptions, Publisher and consumer is clean",
          "[lifetime][matrix]") {
  const auto [bad, report] = run_matrix(false);
  std::cout << report;
  INFO(report);
  CHECK(bad == 0);
}

TEST_CASE("every teardown order is clean while a Publisher keeps publishing between the steps",
          "[lifetime][matrix][probe]") {
  // The same 720 orders; after each step the Publisher (while it exists) publishes to the
  // subscriptions that remain. A handler subscription that outlives its pool is item 1.
  const bool replaying = std::getenv("HERALD_MATRIX_ORDER") != nullptr;
  if (replaying && std::getenv("HERALD_MATRIX_PROBE") == nullptr) return;
  const auto [bad, report] = run_matrix(true);
  std::cout << report;
  INFO(report);
  CHECK(bad == 0);
}

TEST_CASE(
    "unsubscribe from another thread wakes a receive() parked on the subscription, and the "
    "handle may go once it returned",
    "[lifetime][receive]") {
  // The contract (README "Guarantees and limits"): a handle, like any object, must outlive the
  // calls on it. To stop a consumer parked in receive(), unsubscribe() (or request the stop
  // token) from another thread; destroy the handle once the consumer has returned.
  const auto r = herald_process::run_isolated(
      [](ChildLog& log) {
        const int rounds = herald_test::scaled(200);
        for (int i = 0; i < rounds; ++i) {
          Broker<int> broker;
          auto sub = std::make_unique<Subscription<int>>(broker.subscribe("t"));
          std::atomic<pid_t> tid{0};
          bool got = false;
          std::thread consumer([&, s = sub.get()] {
            tid = herald_test::current_tid();
            got = s->receive().has_value();
          });
          while (tid.load() == 0)
            std::this_thread::yield();
          // Inside receive(), asleep.
          log.check(herald_test::wait_until_blocked(tid, 10s), "the consumer did not park");
          sub->unsubscribe();  // wakes the consumer: receive() returns empty
          consumer.join();
          sub.reset();
          log.check(!got, "receive() returned a message from a subscription that had none");
        }
      },
      20s);
  INFO(r.verdict() << "\n" << r.head(20));
  CHECK(r.ok());
}
