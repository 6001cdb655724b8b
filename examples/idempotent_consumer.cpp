// An idempotent consumer: the upstream delivers at least once, so some orders arrive two or
// three times (a retry after a lost acknowledgement, a replay after a reconnect). The handler
// subscription keeps a DedupWindow of the order ids it has handled and skips any id it has seen
// within the window, so every order is charged exactly once.
// The window is bounded (the last N ids and at most T old): a duplicate that arrives after its
// id has left the window is handled again. Size the window for the longest redelivery delay.
#include <herald/broker.hpp>
#include <herald/dedup_window.hpp>
#include <herald/worker_pool.hpp>

#include <fmt/core.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <random>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct Order {
  std::uint64_t id = 0;
  int cents = 0;
};

}  // namespace

int main() {
  herald::WorkerPool pool{2, 256};
  herald::Broker<Order> broker;

  // Ids handled in the last 10 minutes, at most 10k of them.
  herald::DedupWindow<std::uint64_t> handled{10'000, 10min};
  std::map<std::uint64_t, int> charges;  // handler invocations never overlap: no lock needed
  std::atomic<std::uint64_t> skipped{0};
  std::int64_t revenue = 0;
  auto consumer =
      broker.subscribe("orders.>",
                       [&](const herald::Message<Order>& m) {
                         if (!handled.insert(m->id)) {  // seen within the window: a redelivery
                           ++skipped;
                           return;
                         }
                         ++charges[m->id];
                         revenue += m->cents;
                       },
                       pool, {.capacity = 1024, .overflow = herald::Overflow::block});

  // The at-least-once upstream: 2000 orders, ~30% delivered again shortly after, some thrice.
  constexpr std::uint64_t kOrders = 2000;
  std::mt19937_64 rng(19);
  std::vector<Order> redeliveries;
  std::uint64_t published = 0;
  std::int64_t expected_revenue = 0;
  for (std::uint64_t id = 1; id <= kOrders; ++id) {
    const Order o{id, static_cast<int>(100 + id % 900)};
    expected_revenue += o.cents;
    broker.publish(id % 2 ? "orders.eu" : "orders.us", o);
    ++published;
    if (rng() % 10 < 3) redeliveries.push_back(o);
    if (rng() % 20 == 0) redeliveries.push_back(o);
    if (redeliveries.size() >= 8 || id == kOrders) {  // the retries come a little later
      for (const Order& r : redeliveries) {
        broker.publish(r.id % 2 ? "orders.eu" : "orders.us", r);
        ++published;
      }
      redeliveries.clear();
    }
  }
  const bool settled = consumer.wait_idle(10s);  // every published message went through

  bool exactly_once = charges.size() == kOrders;
  for (const auto& [id, n] : charges)
    exactly_once = exactly_once && n == 1;
  const auto w = handled.stats();
  fmt::print("published {} messages for {} orders; handled {}, skipped {} redeliveries\n",
             published, kOrders, charges.size(), skipped.load());
  fmt::print("revenue {:.2f} (expected {:.2f}); window: {} ids held, {} duplicates seen\n",
             static_cast<double>(revenue) / 100, static_cast<double>(expected_revenue) / 100,
             w.size, w.duplicates);

  // The limit of any window: an id that has left it is new again.
  herald::DedupWindow<std::uint64_t> tiny{3};
  for (std::uint64_t id = 1; id <= 4; ++id)
    (void)tiny.insert(id);
  const bool forgotten = tiny.insert(1);  // 1 was evicted by 4: "new"
  fmt::print("a 3-id window forgets id 1 after ids 2, 3, 4: insert(1) -> {}\n", forgotten);

  const bool ok = settled && exactly_once && revenue == expected_revenue &&
                  skipped == published - kOrders && w.duplicates == skipped && forgotten;
  return ok ? 0 : 1;
}
