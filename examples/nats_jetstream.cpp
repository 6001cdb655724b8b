// Two processes — a shop taking orders and a billing service, each with its own Broker —
// connected through a JetStream stream, at least once: the NATS server is killed (SIGKILL) in the
// middle of the stream and started again, and billing still gets every order exactly once.
//
//   nats_jetstream                      the shop; starts nats-server -js and the billing process
//   nats_jetstream --billing URL N      the billing service (what the shop starts)
//
// The shop's export publishes each order to the stream ORDERS with a Nats-Msg-Id and resends
// what the stream did not acknowledge; billing's import reads a durable consumer, acknowledges
// an order once its subscriber queued it, and suppresses redeliveries (an ack lost in the crash)
// with its dedup window. Exits non-zero unless billing saw every order once.
#include <herald/broker.hpp>
#include <herald/nats.hpp>

#include <fmt/core.h>
#include <stdlib.h>

#include "nats_support.hpp"

#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;

struct Order {
  std::uint64_t id;
  double amount;
};

// --- The billing process: bills each order once. ---
int billing(const std::string& url, std::uint64_t n) {
  herald::Broker<Order> orders;
  auto to_bill =
      orders.subscribe("orders.>", {.capacity = 4096, .overflow = herald::Overflow::block});
  herald::nats::Bridge<Order> in(
      orders, {.url = url,
               .imports = {{.pattern = "orders.>",
                            .jetstream = herald::nats::JetStreamImport{.stream = {.name = "ORDERS"},
                                                                       .durable = "billing"}}},
               .reconnect = {.initial = 10ms, .max = 200ms}});
  std::vector<int> billed(n + 1, 0);
  std::uint64_t distinct = 0;
  std::uint64_t twice = 0;
  while (distinct < n) {
    auto m = to_bill.receive_for(60s);
    if (!m) break;
    if ((*m)->id == 0 || (*m)->id > n) continue;
    if (billed[(*m)->id]++ == 0) {
      ++distinct;
    } else {
      ++twice;
    }
  }
  const auto s = in.stats();
  fmt::print(
      "[billing] billed {} of {} orders, {} twice; deliveries {}, redeliveries suppressed {}\n",
      distinct, n, twice, s.received, s.js_duplicates);
  return distinct == n && twice == 0 ? 0 : 1;
}

/// Polls the server (plain libnats) until the stream has the consumer, at most `limit`.
bool consumer_exists(natsConnection* nc, const char* stream, const char* consumer,
                     std::chrono::milliseconds limit) {
  jsCtx* js = nullptr;
  if (natsConnection_JetStream(&js, nc, nullptr) != NATS_OK) return false;
  bool found = false;
  for (const auto end = std::chrono::steady_clock::now() + limit;
       !found && std::chrono::steady_clock::now() < end;) {
    jsConsumerInfo* ci = nullptr;
    found = js_GetConsumerInfo(&ci, js, stream, consumer, nullptr, nullptr) == NATS_OK;
    jsConsumerInfo_Destroy(ci);
    if (!found) std::this_thread::sleep_for(20ms);  // another process: nothing to wait on
  }
  jsCtx_Destroy(js);
  return found;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // two processes share the terminal: whole lines
  if (argc == 4 && std::string(argv[1]) == "--billing") {
    return billing(argv[2], std::stoull(argv[3]));
  }
  constexpr std::uint64_t n = 5000;

  // --- The shop process. ---
  std::string dir = (std::filesystem::temp_directory_path() / "herald-example-js-XXXXXX").string();
  if (::mkdtemp(dir.data()) == nullptr) return 1;
  int status = 1;
  {
    examples::PrivateServer server({"-js", "-sd", dir});  // JetStream, stored in files
    if (!server.started()) {
      fmt::print(stderr, "nats_jetstream: cannot start nats-server\n");
      return 1;
    }
    herald::Broker<Order> orders;
    // The export rule, field by field (g++ 12 -O3 warns wrongly about a braced rule holding a
    // JetStreamExport).
    herald::nats::ExportRule rule;
    rule.pattern = "orders.>";
    // While max_in_flight orders are unacknowledged, the shop waits.
    rule.queue = {.capacity = 1024, .overflow = herald::Overflow::block};
    rule.jetstream = herald::nats::JetStreamExport{.stream = {.name = "ORDERS", .create = true}};
    herald::nats::BridgeOptions options{.url = server.url(),
                                        .reconnect = {.initial = 10ms, .max = 200ms}};
    options.exports.push_back(std::move(rule));
    herald::nats::Bridge<Order> out(orders, std::move(options));
    // The stream exists now; billing binds to it.
    const pid_t child = examples::start_self({"--billing", server.url(), std::to_string(n)});
    if (child < 0) return 1;
    fmt::print("[   shop] NATS (JetStream) at {}; billing is process {}\n", server.url(), child);
    // The crash should hit both processes running: wait until billing's durable consumer exists
    // (its bridge made it; it needs the server while it starts).
    if (!consumer_exists(out.native_handle(), "ORDERS", "billing", 20s)) {
      fmt::print(stderr, "nats_jetstream: billing did not start\n");
      kill(child, SIGKILL);
      waitpid(child, nullptr, 0);
      return 1;
    }

    for (std::uint64_t id = 1; id <= n; ++id) {
      orders.publish("orders.eu", Order{id, 9.5 + double(id % 7)});
      if (id == n / 2) {
        fmt::print(
            "[   shop] {} orders published; killing nats-server (SIGKILL) and restarting it\n", id);
        server.crash_and_restart();
      }
    }
    const bool acked = out.flush(60s);  // every order acknowledged by the stream
    const auto s = out.stats();
    fmt::print("[   shop] published {}, acknowledged by the stream {}, resent {}, failed {}\n", n,
               s.js_acked, s.js_retried, s.js_failed);
    waitpid(child, &status, 0);
    status = acked && WIFEXITED(status) ? WEXITSTATUS(status) : 1;
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  fmt::print("{}\n", status == 0 ? "every order was billed once, across a server crash"
                                 : "something was lost or billed twice");
  return status;
}
