// Graceful shutdown: consumers are std::jthreads whose subscriptions follow the thread's
// stop_token. Stopping one consumer unsubscribes it and lets it finish what was already queued;
// closing the broker does the same for everyone. The counts prove nothing accepted was lost.
#include <herald/broker.hpp>

#include <fmt/core.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <latch>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

/// What a consumer reports when its loop ends.
struct Report {
  std::uint64_t processed = 0;
  std::uint64_t after_close = 0;  // of those, how many it finished after its subscription closed
  std::uint64_t accepted = 0;     // what its queue accepted (SubscriptionStats::delivered)
  herald::CloseReason reason = herald::CloseReason::open;
};

}  // namespace

int main() {
  const std::array<std::string, 3> regions = {"eu", "us", "asia"};
  herald::Broker<int> broker;
  std::array<Report, 3> reports;
  std::latch subscribed(regions.size());

  std::vector<std::jthread> consumers;
  for (std::size_t i = 0; i < regions.size(); ++i) {
    consumers.emplace_back([&, i](std::stop_token stop) {
      // Passing the thread's stop_token ties the subscription to it: request_stop() (or the
      // jthread's destructor) unsubscribes it. `block` makes the publisher wait rather than drop.
      auto sub = broker.subscribe("jobs." + regions[i],
                                  {.capacity = 64, .overflow = herald::Overflow::block}, stop);
      subscribed.count_down();
      // Ends after the last queued message, once the subscription is closed for any reason.
      for (const herald::Message<int>& m : sub) {
        (void)*m;
        std::this_thread::sleep_for(20us);  // "work"
        ++reports[i].processed;
        if (!sub.is_open()) ++reports[i].after_close;
      }
      reports[i].accepted = sub.stats().delivered;
      reports[i].reason = sub.close_reason();
    });
  }
  subscribed.wait();  // messages published before a subscription exists are not delivered to it

  std::atomic<std::uint64_t> accepted{0};  // summed from PublishResult::delivered
  std::jthread producer([&](std::stop_token stop) {
    for (int n = 0; !stop.stop_requested(); ++n) {
      accepted += broker.publish("jobs." + regions[static_cast<std::size_t>(n) % 3], n).delivered;
    }
  });

  std::this_thread::sleep_for(100ms);
  fmt::print("stopping the asia consumer while the producer keeps going\n");
  consumers[2].request_stop();  // its subscription closes; it drains what it has, then exits
  consumers[2].join();
  std::this_thread::sleep_for(50ms);  // asia messages now match no subscription

  fmt::print("stopping the producer, then closing the broker\n");
  producer.request_stop();
  producer.join();
  broker.close();     // closes the remaining subscriptions; their consumers drain, then exit
  consumers.clear();  // each jthread requests stop (already closed: no effect) and joins

  // After close, publish returns at once with `closed` set: nothing is accepted any more.
  const herald::PublishResult late = broker.publish("jobs.eu", -1);
  fmt::print("publish after close: closed={} delivered={}\n\n", late.closed, late.delivered);

  std::uint64_t processed = 0;
  bool ok = late.closed;
  for (std::size_t i = 0; i < regions.size(); ++i) {
    const Report& r = reports[i];
    fmt::print("{:<5} accepted {:>6}  processed {:>6} ({:>2} after close)  closed by {}\n",
               regions[i], r.accepted, r.processed, r.after_close, herald::to_string(r.reason));
    processed += r.processed;
    ok = ok && r.processed == r.accepted && r.processed > 0;
  }
  ok = ok && reports[2].reason == herald::CloseReason::stopped &&
       reports[0].reason == herald::CloseReason::broker_closed;
  const herald::BrokerStats s = broker.stats();
  fmt::print("\nbroker: published {}, delivered {}, dropped {}, matched nobody {}\n", s.published,
             s.delivered, s.dropped, s.no_subscriber);
  fmt::print("accepted {} = processed {}: {}\n", accepted.load(), processed,
             accepted == processed ? "nothing lost" : "MISMATCH");
  ok = ok && accepted == processed && s.dropped == 0 && s.no_subscriber > 0;
  return ok ? 0 : 1;
}
