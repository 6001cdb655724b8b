// Retained messages: a dashboard that starts after the sensors shows the current state at once.
// The sensors publish with `.retain = true` (or a broker-level retain policy covers them); the
// dashboard subscribes with a replay and first receives the last reading of every sensor --
// marked replayed() -- then the live readings, with none missed or shown twice at the joint.
#include <herald/broker.hpp>

#include <fmt/core.h>

#include <map>
#include <string>

struct Reading {
  double value = 0;
  std::string unit;
};

int main() {
  herald::Broker<Reading> broker;
  // Keep the last 3 readings of every sensor, for at most ten minutes.
  broker.retain("sensors.>", {.last = 3, .max_age = std::chrono::minutes(10)});

  // The sensors start first: nobody is listening yet.
  broker.publish("sensors.kitchen.temp", {19.5, "C"});
  broker.publish("sensors.kitchen.temp", {20.0, "C"});
  broker.publish("sensors.hall.temp", {18.0, "C"});
  broker.publish("sensors.hall.humidity", {41.0, "%"});

  // A last-value read, without subscribing.
  if (auto last = broker.retained("sensors.kitchen.temp")) {
    fmt::print("kitchen is at {} {}\n", last->value().value, last->value().unit);
  }

  // The dashboard starts later and still shows every sensor's current value immediately.
  auto dashboard = broker.subscribe("sensors.>", {.replay = herald::Replay::last_value()});
  broker.publish("sensors.hall.temp", {18.5, "C"});  // live, after the replay

  std::map<std::string, double> panel;
  int replayed = 0;
  int live = 0;
  while (auto m = dashboard.try_receive()) {
    panel[m->topic()] = m->value().value;
    (m->replayed() ? replayed : live) += 1;
    fmt::print("{:8} {:24} {} {}\n", m->replayed() ? "replayed" : "live", m->topic(),
               m->value().value, m->value().unit);
  }

  // The tour doubles as a test: three sensors replayed (their last value), one live update.
  const bool ok = replayed == 3 && live == 1 && panel.size() == 3 &&
                  panel["sensors.kitchen.temp"] == 20.0 && panel["sensors.hall.temp"] == 18.5;
  fmt::print("panel has {} sensors ({} replayed, {} live); {} retained messages\n", panel.size(),
             replayed, live, broker.stats().retained_messages);
  return ok ? 0 : 1;
}
