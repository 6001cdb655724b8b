// Two processes — a plant and a dashboard, each with its own Broker — connected through NATS.
// Inside each, herald fans messages out to local subscribers as usual; between them, a
// herald::nats::Bridge carries the topics that should cross: sensor readings go from the plant to
// the dashboard, set-point commands go back. Wildcards mean the same on both sides.
//
//   nats_bridge [nats://host:port]     the plant; it starts the dashboard as a second process
//   nats_bridge --dashboard URL         the dashboard (what the plant starts)
// Without a URL the plant starts a private nats-server on a free loopback port (Debian:
// nats-server). Exits non-zero unless every message crossed as described.
#include <herald/broker.hpp>
#include <herald/nats.hpp>

#include <fmt/core.h>

#include "nats_support.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>

namespace {

/// What the plant publishes: trivially copyable, so the ready TrivialCodec carries it.
struct Reading {
  std::uint32_t sensor;
  double celsius;
};

void print_stats(const char* who, const herald::nats::BridgeStats& s) {
  fmt::print("[{:>9}] bridge: exported {} sent {} dropped {} | received {} imported {}\n", who,
             s.exported, s.sent, s.dropped(), s.received, s.imported);
}

// --- The dashboard process: shows readings, sends a command back. ---
int dashboard(const std::string& url) {
  using namespace std::chrono_literals;
  herald::Broker<Reading> readings;
  herald::Broker<std::string> commands;
  // Two local subscribers, different wildcards, fed by one import.
  auto kitchen_panel = readings.subscribe("sensors.kitchen.*");
  auto all_sensors = readings.subscribe("sensors.>");
  // What the plant exports under "plant1" arrives here without the prefix, and back again.
  herald::nats::Bridge<Reading> in(
      readings, {.url = url, .imports = {{.pattern = "sensors.>", .prefix = "plant1"}}});
  herald::nats::Bridge<std::string> out(
      commands, {.url = url, .exports = {{.pattern = "commands.>", .prefix = "plant1"}}});

  // The import's NATS subscription is in place once its Bridge is constructed: say so. (Core
  // NATS keeps nothing for subscribers that do not exist yet.)
  commands.publish("commands.dashboard.ready", "ready");
  int seen = 0;
  for (; seen < 3; ++seen) {
    auto m = all_sensors.receive_for(10s);
    if (!m) break;
    fmt::print("[dashboard] remote  {:<28} sensor {} {:6.2f}  (origin: bridge {:016x})\n",
               m->topic(), (*m)->sensor, (*m)->celsius, m->origin());
  }
  int kitchen = 0;
  for (; kitchen < 2; ++kitchen) {
    auto m = kitchen_panel.receive_for(10s);
    if (!m) break;
    fmt::print("[dashboard] kitchen panel {:<22} sensor {}\n", m->topic(), (*m)->sensor);
  }
  // Answer with a command; it crosses back to the plant.
  commands.publish("commands.kitchen.setpoint", "20.0");
  out.flush(5s);
  print_stats("dashboard", in.stats());
  return seen == 3 && kitchen == 2 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace std::chrono_literals;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // two processes share the terminal: whole lines
  if (argc == 3 && std::string(argv[1]) == "--dashboard") return dashboard(argv[2]);

  // --- The plant process: publishes readings, obeys set-point commands. ---
  std::unique_ptr<examples::PrivateServer> server;
  std::string url = argc > 1 ? argv[1] : "";
  if (url.empty()) {
    server = std::make_unique<examples::PrivateServer>();
    if (!server->started()) {
      fmt::print(stderr, "nats_bridge: cannot start nats-server; pass a NATS URL instead\n");
      return 1;
    }
    url = server->url();
  }
  fmt::print("NATS server: {}\n\n", url);

  herald::Broker<Reading> readings;
  herald::Broker<std::string> commands;
  auto alarm = readings.subscribe("sensors.*.temperature");  // local: no network involved
  auto ready = commands.subscribe("commands.dashboard.ready");
  auto setpoints = commands.subscribe("commands.*.setpoint");
  // Readings leave under the prefix "plant1"; commands come back the same way.
  herald::nats::Bridge<Reading> out(
      readings, {.url = url, .exports = {{.pattern = "sensors.>", .prefix = "plant1"}}});
  herald::nats::Bridge<std::string> in(
      commands, {.url = url, .imports = {{.pattern = "commands.>", .prefix = "plant1"}}});

  const pid_t child = examples::start_self({"--dashboard", url});
  if (child < 0) {
    fmt::print(stderr, "nats_bridge: cannot start the dashboard process\n");
    return 1;
  }
  fmt::print("[    plant] started the dashboard as process {}\n", child);
  bool ok = ready.receive_for(20s).has_value();

  // The plant publishes locally, exactly as without NATS.
  readings.publish("sensors.kitchen.temperature", Reading{1, 21.5});
  readings.publish("sensors.kitchen.humidity", Reading{2, 40.0});
  readings.publish("sensors.cellar.temperature", Reading{3, 12.25});
  for (int i = 0; ok && i < 2; ++i) {  // the two temperatures
    auto m = alarm.receive_for(1s);
    if (!m) break;
    fmt::print("[    plant] local   {:<28} sensor {} {:6.2f}\n", m->topic(), (*m)->sensor,
               (*m)->celsius);
  }
  auto command = ok ? setpoints.receive_for(20s) : std::nullopt;
  if (command) fmt::print("[    plant] remote  {:<28} \"{}\"\n", command->topic(), **command);
  out.flush(5s);

  int status = 0;
  waitpid(child, &status, 0);
  print_stats("plant", out.stats());
  const bool child_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  fmt::print("{}\n", ok && command && child_ok ? "both processes saw everything they expected"
                                               : "something did not cross");
  // NATS core delivery is at most once: for durable streams, put JetStream behind the subjects.
  return ok && command && child_ok ? 0 : 1;
}
