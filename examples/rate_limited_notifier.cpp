// A rate-limited notifier: alerts arrive on a Broker faster than the pager API downstream
// accepts (20 messages/s, bursts of 5). One RateLimiter guards the API:
// - urgent alerts wait for a token (acquire with a stop token, so shutdown can interrupt);
// - routine alerts take a token only if one is free now (try_acquire); otherwise they are
//   folded into a digest, sent as one message at the end.
// The pager records when each message arrived, and the program checks that no interval ever
// saw more than the burst plus the rate times its length.
// Then the same pace without a thread of its own: a handler on a one-thread WorkerPool with
// HandlerOptions::rate. Messages over the rate wait in the subscription's queue and a timer
// resumes the handler when the next token is due; the worker stays free, and a second
// subscription on the same pool answers at once meanwhile.
#include <herald/broker.hpp>
#include <herald/rate_limiter.hpp>
#include <herald/worker_pool.hpp>

#include <fmt/core.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <stop_token>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

struct Alert {
  int id = 0;
  bool urgent = false;
};

/// The downstream API: records arrival times (called from one thread, the handler's).
struct Pager {
  std::vector<Clock::time_point> arrivals;
  void send(const std::string&) { arrivals.push_back(Clock::now()); }
};

}  // namespace

int main() {
  constexpr double kRate = 20.0;
  constexpr std::int64_t kBurst = 5;
  herald::RateLimiter limiter{kRate, kBurst};
  herald::Broker<Alert> broker;
  Pager pager;
  std::stop_source shutdown;
  int urgent_sent = 0, routine_sent = 0, folded = 0;

  // The handler runs on a thread of its own: waiting for a token must not hold a pool worker.
  auto notifier = broker.subscribe("alerts.>",
                                   [&](const herald::Message<Alert>& m) {
                                     if (m->urgent) {
                                       if (!limiter.acquire(1, shutdown.get_token()))
                                         return;  // shutting down
                                       pager.send(fmt::format("URGENT alert {}", m->id));
                                       ++urgent_sent;
                                     } else if (limiter.try_acquire()) {
                                       pager.send(fmt::format("alert {}", m->id));
                                       ++routine_sent;
                                     } else {
                                       ++folded;  // over the rate: goes into the digest
                                     }
                                   },
                                   herald::dedicated_thread,
                                   {.capacity = 256, .overflow = herald::Overflow::block});

  // A storm: 60 alerts at once, every fourth urgent.
  constexpr int kAlerts = 60;
  int urgent_published = 0;
  const auto t0 = Clock::now();
  for (int i = 1; i <= kAlerts; ++i) {
    const bool urgent = i % 4 == 0;
    urgent_published += urgent ? 1 : 0;
    broker.publish(urgent ? "alerts.disk.full" : "alerts.cpu.high", Alert{i, urgent});
  }
  const bool settled = notifier.wait_idle(10s);
  notifier.unsubscribe();  // quiescent: the handler no longer runs
  if (folded > 0) {
    limiter.acquire();  // the digest is a message too
    pager.send(fmt::format("digest: {} routine alerts", folded));
  }
  shutdown.request_stop();
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();

  // Never more than burst + rate x length in any interval between two arrivals. (+1: an
  // arrival is stamped after its token was granted, so the first one of an interval may have
  // been granted earlier than it arrived; the next one was granted after it arrived.)
  const auto& a = pager.arrivals;
  bool within_rate = true;
  for (std::size_t i = 0; i < a.size(); ++i) {
    for (std::size_t j = i; j < a.size(); ++j) {
      const double span = std::chrono::duration<double>(a[j] - a[i]).count();
      const double allowed = static_cast<double>(kBurst) + 1.0 + kRate * span;
      if (static_cast<double>(j - i + 1) > allowed + 1e-9) within_rate = false;
    }
  }
  fmt::print(
      "{} alerts ({} urgent) -> {} pager messages in {:.2f} s: {} urgent, {} routine, "
      "1 digest of {} folded routine alerts\n",
      kAlerts, urgent_published, a.size(), seconds, urgent_sent, routine_sent, folded);
  fmt::print("never above {} messages/s with bursts of {}: {}\n", kRate, kBurst,
             within_rate ? "yes" : "NO");

  const bool ok = settled && within_rate && urgent_sent == urgent_published &&
                  urgent_sent + routine_sent + folded == kAlerts && folded > 0 &&
                  a.size() == static_cast<std::size_t>(urgent_sent + routine_sent + 1);

  // Part two: HandlerOptions::rate on a pool of one worker.
  herald::WorkerPool pool{1, 256};
  herald::HandlerOptions<Alert> paced;
  paced.rate = std::make_shared<herald::RateLimiter>(kRate, kBurst);
  Pager paced_pager;
  auto bulk = broker.subscribe(
      "bulk.>",
      [&](const herald::Message<Alert>& m) { paced_pager.send(fmt::format("bulk {}", m->id)); },
      pool, {.capacity = 256}, paced);
  std::atomic<int> pings{0};
  auto health = broker.subscribe(
      "health", [&](const herald::Message<Alert>&) { ++pings; }, pool);
  const auto t1 = Clock::now();
  for (int i = 1; i <= 25; ++i)
    broker.publish("bulk.email", Alert{i, false});
  broker.publish("health", Alert{});
  const bool health_fast = health.wait_idle(1s);  // the worker is not asleep in the limiter
  const auto health_latency = Clock::now() - t1;
  const bool bulk_done = bulk.wait_idle(10s);
  const double bulk_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  // 25 messages at 20/s with a burst of 5: the last one no earlier than (25 - 5) / 20 = 1 s.
  const bool paced_ok = bulk_done && paced_pager.arrivals.size() == 25 && bulk_seconds >= 0.95;
  fmt::print(
      "HandlerOptions::rate on a 1-thread pool: 25 bulk messages in {:.2f} s ({} waits on a "
      "timer); a health check meanwhile took {:.1f} ms\n",
      bulk_seconds, bulk.stats().rate_limited,
      std::chrono::duration<double, std::milli>(health_latency).count());
  return ok && paced_ok && health_fast && pings == 1 ? 0 : 1;
}
