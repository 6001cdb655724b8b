// A batch sink: readings arrive one by one, but the store downstream charges per call (a
// round trip), so the sink writes them in batches: at most 100 per call, and never holding a
// reading longer than 20 ms (a timer of the pool flushes a partial batch; no thread waits).
// The program checks that every reading was written exactly once, in order, in few calls.
#include <herald/broker.hpp>
#include <herald/worker_pool.hpp>

#include <fmt/core.h>

#include <chrono>
#include <cstddef>
#include <span>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct Reading {
  int sensor = 0;
  double value = 0;
};

/// The store: one call per batch (called by one handler invocation at a time).
struct Store {
  std::vector<int> written;  // sensor ids, in write order
  int calls = 0;
  void write(std::span<const herald::Message<Reading>> batch) {
    ++calls;
    for (const auto& m : batch)
      written.push_back(m->sensor);
  }
};

}  // namespace

int main() {
  herald::WorkerPool pool{2, 1024};
  herald::Broker<Reading> broker;
  Store store;

  herald::HandlerOptions<Reading> options;
  options.batch = {.max_size = 100, .max_wait = 20ms};
  auto sink = broker.subscribe(
      "sensors.>", [&](std::span<const herald::Message<Reading>> batch) { store.write(batch); },
      pool, {.capacity = 4096, .overflow = herald::Overflow::block}, options);

  constexpr int kReadings = 1050;  // ten full batches and a partial one, flushed by its timer
  for (int i = 0; i < kReadings; ++i)
    broker.publish("sensors.temperature", Reading{i, 20.0 + i % 7});
  const bool idle = sink.wait_idle(10s);

  bool in_order = static_cast<int>(store.written.size()) == kReadings;
  for (std::size_t i = 0; in_order && i < store.written.size(); ++i)
    in_order = store.written[i] == static_cast<int>(i);
  const auto s = sink.stats();
  fmt::print("{} readings written in {} calls (batches of at most 100, or 20 ms): {}\n",
             store.written.size(), store.calls, in_order ? "all, in order" : "NOT all in order");
  fmt::print("handler invocations {}, messages received {}\n", s.invocations, s.received);
  return idle && in_order && store.calls >= 11 && store.calls < 100 ? 0 : 1;
}
