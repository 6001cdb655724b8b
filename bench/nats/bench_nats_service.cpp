// Request/reply round trips per second over NATS, one requester waiting for each reply, 16-byte
// requests and replies: herald on both ends (Service::request -> ServiceBridge::forward -> NATS ->
// ServiceBridge::answer -> Service responder) against raw libnats (natsConnection_Request in a
// loop -> NATS -> a libnats callback that publishes the reply). One nats-server, started by this
// binary on a free loopback port, serves both.
//
//   raw_libnats/request     natsConnection_Request; the responder replies from its callback
//   raw_libnats/request_send_asap   the same with libnats's SendAsap on both connections, as
//                           ServiceBridge sets it: the like-for-like yardstick
//   herald/service_bridge   svc.request on one Service, answered by an inline responder of
//                           another Service behind a second connection
//
// HERALD_BENCH_SMOKE=1: a few hundred round trips.
#include <herald/nats.hpp>
#include <herald/request.hpp>

#include <benchmark/benchmark.h>

#include <array>
#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "nats_server.hpp"

namespace {

using Bytes16 = std::array<char, 16>;

bool smoke() {
  const char* s = std::getenv("HERALD_BENCH_SMOKE");
  return s && std::string(s) == "1";
}

herald_test::NatsServer& server() {
  static herald_test::NatsServer s;
  return s;
}

void check(natsStatus s, const char* what) {
  if (s != NATS_OK) throw std::runtime_error(std::string(what) + ": " + natsStatus_GetText(s));
}

void respond(natsConnection* nc, natsSubscription*, natsMsg* msg, void*) {
  natsConnection_Publish(nc, natsMsg_GetReply(msg), natsMsg_GetData(msg),
                         natsMsg_GetDataLength(msg));
  natsMsg_Destroy(msg);
}

// A raw connection, with libnats's SendAsap when `asap` (what ServiceBridge sets by default).
natsConnection* connect_raw(bool asap) {
  natsOptions* opts = nullptr;
  check(natsOptions_Create(&opts), "options");
  check(natsOptions_SetURL(opts, server().url().c_str()), "url");
  if (asap) check(natsOptions_SetSendAsap(opts, true), "send asap");
  natsConnection* nc = nullptr;
  const natsStatus s = natsConnection_Connect(&nc, opts);
  natsOptions_Destroy(opts);
  check(s, "connect");
  return nc;
}

void BM_raw_libnats(benchmark::State& state) {
  const bool asap = state.range(0) != 0;
  natsConnection* responder = connect_raw(asap);
  natsConnection* requester = connect_raw(asap);
  natsSubscription* sub = nullptr;
  check(natsConnection_Subscribe(&sub, responder, "bench.raw", respond, nullptr), "subscribe");
  check(natsConnection_Flush(responder), "flush");
  const Bytes16 request{"0123456789abcde"};
  for (auto _ : state) {
    natsMsg* reply = nullptr;
    check(natsConnection_Request(&reply, requester, "bench.raw", request.data(),
                                 static_cast<int>(request.size()), 5000),
          "request");
    benchmark::DoNotOptimize(natsMsg_GetData(reply));
    natsMsg_Destroy(reply);
  }
  state.SetItemsProcessed(state.iterations());
  natsSubscription_Destroy(sub);
  natsConnection_Destroy(requester);
  natsConnection_Destroy(responder);
}

void BM_herald(benchmark::State& state) {
  herald::Service<Bytes16, Bytes16> there;
  auto echo = there.serve(
      "bench.herald", [](const herald::Request<Bytes16>& r) { return *r; },
      herald::inline_executor);
  herald::nats::ServiceBridge<Bytes16, Bytes16> answering(there, {.url = server().url()});
  answering.answer("bench.herald");
  herald::Service<Bytes16, Bytes16> here;
  herald::nats::ServiceBridge<Bytes16, Bytes16> asking(here, {.url = server().url()});
  asking.forward("bench.herald");
  const Bytes16 request{"0123456789abcde"};
  for (auto _ : state) {
    const auto reply = here.request("bench.herald", request, std::chrono::seconds(5));
    if (!reply) throw std::runtime_error("herald request failed: " + reply.error_text());
    benchmark::DoNotOptimize(*reply);
  }
  state.SetItemsProcessed(state.iterations());
}

void shape(benchmark::internal::Benchmark* b) {
  b->UseRealTime()->Unit(benchmark::kMicrosecond);
  if (smoke()) b->Iterations(300);
}

}  // namespace

// Interleaved repetitions: the rows share the machine's phases (see DESIGN.md).
BENCHMARK(BM_raw_libnats)->Name("raw_libnats/request")->Arg(0)->Apply(shape);
BENCHMARK(BM_raw_libnats)->Name("raw_libnats/request_send_asap")->Arg(1)->Apply(shape);
BENCHMARK(BM_herald)->Name("herald/service_bridge")->Apply(shape);

BENCHMARK_MAIN();
