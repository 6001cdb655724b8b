// Pipeline: ingest -> validate -> enrich -> sink, built from the pieces of the other examples.
//   validate  a handler subscription on the `checks` pool; invalid readings fail and go to a
//             dead-letter queue (no retries: they would fail again)
//   enrich    a queue group of two handler subscriptions on the `enrich` pool (competing)
//   sink      a handler subscription on a dedicated thread, totals per sensor
//   dashboard a deliberately slow live view with a small drop_oldest queue: it may skip
//             readings, but never slows anything else down
// Stages that must not lose anything use Overflow::block, so back-pressure flows upstream to the
// ingest loop. Each stage that publishes runs on its own executor and only ever waits for stages
// after it: a pool whose workers wait for room in a queue that only that same pool drains could
// deadlock.
#include <herald/broker.hpp>
#include <herald/worker_pool.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct Reading {
  int sensor = 0;
  double celsius = 0;
  double fahrenheit = 0;  // filled in by `enrich`
};

#ifdef HERALD_SANITIZED_BUILD
constexpr int kReadings = 4'000;  // sanitizers are 5-20x slower
#else
constexpr int kReadings = 40'000;
#endif
constexpr int kSensors = 8;
constexpr bool invalid(int i) {
  return i % 100 == 99;
}  // 1% of the input is garbage
constexpr std::uint64_t kInvalid = kReadings / 100;
constexpr std::uint64_t kValid = kReadings - kInvalid;

}  // namespace

int main() {
  herald::WorkerPool checks{1, 1024};
  herald::WorkerPool enrich{2, 1024};
  herald::Broker<Reading> broker;
  herald::Broker<herald::DeadLetter<Reading>> rejects;
  auto dlq = rejects.subscribe("$DLQ.>", {.capacity = 1024});
  const herald::SubscribeOptions lossless{.capacity = 1024, .overflow = herald::Overflow::block};

  herald::HandlerOptions<Reading> to_dlq;
  to_dlq.dead_letters = &rejects;
  auto validator = broker.subscribe(
      "raw.*",
      [&](const herald::Message<Reading>& m) {
        if (m->celsius < -90 || m->celsius > 60) throw std::out_of_range("implausible reading");
        broker.publish("valid." + std::to_string(m->sensor), *m);
      },
      checks, lossless, to_dlq);

  std::array<std::atomic<std::uint64_t>, 2> enriched{};
  auto enricher = [&](std::size_t i) {
    return [&, i](const herald::Message<Reading>& m) {
      Reading r = *m;
      r.fahrenheit = r.celsius * 9 / 5 + 32;
      broker.publish("enriched." + std::to_string(r.sensor), r);
      ++enriched[i];
    };
  };
  herald::SubscribeOptions group = lossless;
  group.queue_group = "enrichers";
  auto enricher0 = broker.subscribe("valid.*", enricher(0), enrich, group);
  auto enricher1 = broker.subscribe("valid.*", enricher(1), enrich, group);

  std::array<double, kSensors> max_f{};  // only the sink's handler touches it: no lock
  std::atomic<std::uint64_t> sunk{0};
  auto sink = broker.subscribe(
      "enriched.*",
      [&](const herald::Message<Reading>& m) {
        max_f[static_cast<std::size_t>(m->sensor)] =
            std::max(max_f[static_cast<std::size_t>(m->sensor)], m->fahrenheit);
        ++sunk;
      },
      herald::dedicated_thread, lossless);
  auto dashboard = broker.subscribe(
      "enriched.*", [](const herald::Message<Reading>&) { std::this_thread::sleep_for(50us); },
      herald::dedicated_thread, {.capacity = 16, .overflow = herald::Overflow::drop_oldest});

  // Ingest: a prepared Publisher per sensor skips validating and routing the topic each time.
  std::vector<herald::Publisher<Reading>> ingest;
  for (int sensor = 0; sensor < kSensors; ++sensor)
    ingest.push_back(broker.publisher("raw." + std::to_string(sensor)));
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kReadings; ++i) {
    const int sensor = i % kSensors;
    const double celsius = invalid(i) ? 999.0 : 15.0 + (i % 200) * 0.1;
    ingest[static_cast<std::size_t>(sensor)].publish(Reading{sensor, celsius, 0});
  }
  // Wait for each stage in pipeline order: once a stage is idle, everything it will ever pass on
  // has reached the next one (and the dead-letter topic).
  bool idle = true;
  for (const auto* stage : {&validator, &enricher0, &enricher1, &sink, &dashboard})
    idle = stage->wait_idle(10s) && idle;
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;

  const auto v = validator.stats(), d = dashboard.stats();
  const herald::BrokerStats b = broker.stats();
  fmt::print("{} readings through 4 stages in {:.0f} ms: {:.0f} readings/s end to end\n", kReadings,
             took.count() * 1e3, kReadings / took.count());
  const std::optional<herald::Message<herald::DeadLetter<Reading>>> reject = dlq.try_receive();
  fmt::print("validate : {} checked, {} dead-lettered ({})\n", v.received, v.dead_lettered,
             reject ? (*reject)->error : "none");
  fmt::print("enrich   : {} + {} (queue group split)\n", enriched[0].load(), enriched[1].load());
  fmt::print("sink     : {} stored; sensor 0 peaked at {:.1f} F\n", sunk.load(), max_f[0]);
  fmt::print("dashboard: offered {}, shown {}, evicted {} (drop_oldest, by design)\n", d.offered,
             d.received, d.evicted);
  fmt::print("broker   : published {}, delivered {}, dropped {}, evicted {}\n", b.published,
             b.delivered, b.dropped, b.evicted);

  const bool ok = idle && sunk == kValid && v.dead_lettered == kInvalid &&
                  enriched[0] + enriched[1] == kValid && d.offered == kValid && d.dropped == 0 &&
                  b.dropped == 0;
  return ok ? 0 : 1;
}
