// An enrichment stage: orders arrive in publish order per customer; each is enriched by a call
// to a slow, flaky service. Four lanes run in parallel (HandlerOptions::concurrency), keyed by
// customer, so one customer's orders stay in order while different customers overlap. A failed
// call is retried after a backoff on a timer (the worker is free meanwhile, and only that
// customer's later orders wait: Ordering::per_key); an order that fails every attempt goes to
// the dead-letter topic $DLQ.orders.<region>. The program checks per-customer order, that the
// poisoned orders -- and only they -- were dead-lettered, and that lanes really overlapped.
#include <herald/broker.hpp>
#include <herald/worker_pool.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct Order {
  int customer = 0;
  int seq = 0;            // per customer
  bool poisoned = false;  // the service always rejects it
};

}  // namespace

int main() {
  herald::WorkerPool pool{4, 1024};
  herald::Broker<Order> orders;
  herald::Broker<herald::DeadLetter<Order>> dead;
  auto dlq = dead.subscribe("$DLQ.orders.>", {.capacity = 256});

  std::mutex mu;
  std::map<int, std::vector<int>> enriched;  // customer -> seqs, in enrichment order
  std::set<std::pair<int, int>> timed_out;   // orders that failed once, transiently
  std::atomic<int> in_flight{0}, peak{0}, calls{0};

  herald::HandlerOptions<Order> options;
  options.concurrency = 4;
  options.key = [](const herald::Message<Order>& m) { return std::uint64_t(m->customer); };
  options.ordering = herald::Ordering::per_key;
  options.retry = {.max_attempts = 3, .initial_backoff = 2ms, .max_backoff = 20ms};
  options.dead_letters = &dead;
  auto stage = orders.subscribe(
      "orders.*",
      [&](const herald::Message<Order>& m) {
        const int now = ++in_flight;
        int p = peak.load();
        while (now > p && !peak.compare_exchange_weak(p, now)) {
        }
        std::this_thread::sleep_for(200us);  // the remote call
        const int n = ++calls;
        --in_flight;
        if (m->poisoned) throw std::runtime_error("service rejected the order");
        const std::lock_guard lock(mu);
        // A transient failure, at most once per order: its retry succeeds.
        if (n % 17 == 0 && timed_out.insert({m->customer, m->seq}).second)
          throw std::runtime_error("service timed out");
        enriched[m->customer].push_back(m->seq);
      },
      pool, {.capacity = 1024, .overflow = herald::Overflow::block}, options);

  constexpr int kCustomers = 16, kPerCustomer = 25;
  std::set<std::pair<int, int>> poisoned;
  for (int seq = 0; seq < kPerCustomer; ++seq) {
    for (int c = 0; c < kCustomers; ++c) {
      const bool bad = (c * 31 + seq) % 97 == 0;
      if (bad) poisoned.insert({c, seq});
      orders.publish(c % 2 ? "orders.eu" : "orders.us", Order{c, seq, bad});
    }
  }
  const bool idle = stage.wait_idle(30s);

  bool ordered = true;
  std::size_t handled = 0;
  for (const auto& [customer, seqs] : enriched) {
    ordered = ordered && std::is_sorted(seqs.begin(), seqs.end());
    handled += seqs.size();
  }
  std::set<std::pair<int, int>> dead_lettered;
  while (auto letter = dlq.try_receive())
    dead_lettered.insert({letter->value().message->customer, letter->value().message->seq});
  const auto s = stage.stats();
  fmt::print(
      "{} orders enriched, {} dead-lettered ({} poisoned), {} retries, up to {} calls at "
      "once\n",
      handled, dead_lettered.size(), poisoned.size(), s.retries, peak.load());
  fmt::print("per-customer order kept: {}\n", ordered ? "yes" : "NO");
  const bool ok = idle && ordered && dead_lettered == poisoned &&
                  handled + poisoned.size() == kCustomers * kPerCustomer && peak.load() > 1 &&
                  s.retries_pending == 0;
  return ok ? 0 : 1;
}
