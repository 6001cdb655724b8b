// Two "processes" — a plant and a dashboard, each with its own Broker — connected through NATS.
// Inside each, herald fans messages out to local subscribers as usual; between them, a
// herald::nats::Bridge carries the topics that should cross: sensor readings go from the plant to
// the dashboard, set-point commands go back. Wildcards mean the same on both sides.
//
// In a real deployment the two halves are separate programs; here they share one process (two
// brokers, two NATS connections) so the example runs on its own.
//
//   nats_bridge [nats://host:port]
// Without a URL it starts a private nats-server on a free loopback port (Debian: nats-server).
#include <herald/broker.hpp>
#include <herald/nats.hpp>

#include <fmt/core.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>

extern char** environ;

namespace {

/// What the plant publishes: trivially copyable, so the ready TrivialCodec carries it.
struct Reading {
  std::uint32_t sensor;
  double celsius;
};

/// Only so that the example runs anywhere: a nats-server of its own on a free loopback port.
class PrivateServer {
 public:
  PrivateServer() {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    close(fd);
    port_ = std::to_string(ntohs(addr.sin_port));
    std::string bin = "/usr/sbin/nats-server", a = "-a", host = "127.0.0.1", p = "-p";
    char* argv[] = {bin.data(), a.data(), host.data(), p.data(), port_.data(), nullptr};
    posix_spawn_file_actions_t quiet;
    posix_spawn_file_actions_init(&quiet);
    posix_spawn_file_actions_addopen(&quiet, 2, "/dev/null", O_WRONLY, 0);
    if (posix_spawnp(&pid_, "nats-server", &quiet, nullptr, argv, environ) != 0 &&
        posix_spawn(&pid_, bin.c_str(), &quiet, nullptr, argv, environ) != 0) {
      pid_ = -1;
    }
    posix_spawn_file_actions_destroy(&quiet);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // let it start listening
  }
  ~PrivateServer() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }
  [[nodiscard]] bool started() const { return pid_ > 0; }
  [[nodiscard]] std::string url() const { return "nats://127.0.0.1:" + port_; }

 private:
  pid_t pid_ = -1;
  std::string port_;
};

void print_stats(const char* who, const herald::nats::BridgeStats& s) {
  fmt::print("{:>9}: exported {} sent {} dropped {} | received {} imported {} | reconnects {}\n",
             who, s.exported, s.sent, s.dropped(), s.received, s.imported, s.reconnects);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace std::chrono_literals;
  std::unique_ptr<PrivateServer> server;
  std::string url = argc > 1 ? argv[1] : "";
  if (url.empty()) {
    server = std::make_unique<PrivateServer>();
    if (!server->started()) {
      fmt::print(stderr, "nats_bridge: cannot start nats-server; pass a NATS URL instead\n");
      return 1;
    }
    url = server->url();
  }
  fmt::print("NATS server: {}\n\n", url);

  // --- The plant: publishes readings, obeys set-point commands. ---
  herald::Broker<Reading> plant;
  herald::Broker<std::string> plant_commands;
  // A local subscriber: in-process fan-out, no network involved.
  auto plant_alarm = plant.subscribe("sensors.*.temperature");
  // Readings leave the plant under the prefix "plant1"; commands come back the same way.
  herald::nats::Bridge<Reading> plant_out(
      plant, {.url = url, .exports = {{.pattern = "sensors.>", .prefix = "plant1"}}});
  herald::nats::Bridge<std::string> plant_in(
      plant_commands, {.url = url, .imports = {{.pattern = "commands.>", .prefix = "plant1"}}});
  auto setpoints = plant_commands.subscribe("commands.*.setpoint");

  // --- The dashboard: shows readings, sends commands. ---
  herald::Broker<Reading> dashboard;
  herald::Broker<std::string> dashboard_commands;
  // Two local subscribers, different wildcards, fed by one import.
  auto kitchen_panel = dashboard.subscribe("sensors.kitchen.*");
  auto all_sensors = dashboard.subscribe("sensors.>");
  herald::nats::Bridge<Reading> dashboard_in(
      dashboard, {.url = url, .imports = {{.pattern = "sensors.>", .prefix = "plant1"}}});
  herald::nats::Bridge<std::string> dashboard_out(
      dashboard_commands, {.url = url, .exports = {{.pattern = "commands.>", .prefix = "plant1"}}});

  // The plant publishes locally, exactly as without NATS.
  plant.publish("sensors.kitchen.temperature", Reading{1, 21.5});
  plant.publish("sensors.kitchen.humidity", Reading{2, 40.0});
  plant.publish("sensors.cellar.temperature", Reading{3, 12.25});

  while (auto m = plant_alarm.receive_for(1s)) {
    fmt::print("plant     local  {:<28} sensor {} {:6.2f}\n", m->topic(), (*m)->sensor,
               (*m)->celsius);
    if (plant_alarm.stats().received == 2) break;  // the two temperatures
  }
  for (int i = 0; i < 3; ++i) {
    auto m = all_sensors.receive_for(5s);
    if (!m) return 1;
    fmt::print("dashboard remote {:<28} sensor {} {:6.2f}  (origin: bridge {:016x})\n", m->topic(),
               (*m)->sensor, (*m)->celsius, m->origin());
  }
  for (int i = 0; i < 2; ++i) {
    auto m = kitchen_panel.receive_for(5s);
    if (!m) return 1;
    fmt::print("dashboard kitchen panel {:<21} sensor {}\n", m->topic(), (*m)->sensor);
  }

  // The dashboard answers with a command; it crosses back to the plant.
  dashboard_commands.publish("commands.kitchen.setpoint", "20.0");
  if (auto m = setpoints.receive_for(5s)) {
    fmt::print("plant     remote {:<28} \"{}\"\n", m->topic(), **m);
  }

  plant_out.flush(2s);
  dashboard_out.flush(2s);
  fmt::print("\n");
  print_stats("plant", plant_out.stats());
  print_stats("dashboard", dashboard_in.stats());
  // NATS core delivery is at most once: for durable streams, put JetStream behind the subjects.
}
