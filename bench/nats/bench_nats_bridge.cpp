// Messages/s from a local publish to a subscriber on the other side of NATS, through two
// herald::nats::Bridges, against the same traffic (same subject shape, same payload bytes, same
// flow-control window) sent with raw libnats publish/subscribe. One nats-server, started by this
// binary on a free loopback port, serves every variant of the run.
//
//   raw_libnats            natsConnection_Publish -> server -> message callback (counts)
//   raw_libnats_copying    the same, plus a std::string copy at each end (what an application
//                          owning its values does, and what herald does)
//   bridge/inline_handler  Broker::publish -> the export's inline handler (the publisher's
//                          thread hands it to the client) -> server -> import callback ->
//                          Broker::publish_from -> inline handler (counts)
//   bridge/pull_subscriber ... -> publish_from -> subscription queue -> consumer thread (counts)
//   bridge/inline_handler_headers  as bridge/inline_handler, each message with two headers
//                          (a trace id and a reply subject) carried as NATS headers
//   raw_libnats_headers    its peer: natsMsg_Create + natsMsgHeader_Add x2 + PublishMsg, and
//                          the receiver reads every header name and value into strings (what
//                          any receiver that uses them does, and what the bridge does)
//
// At least once, through JetStream (publish until the stream acknowledged each message; the
// server runs with -js, file storage in a temporary directory; no consumer):
//
//   raw_libnats_js_async        js_PublishAsync, at most kJsInFlight unacknowledged
//                               (PublishAsync.MaxPending), js_PublishAsyncComplete per batch
//   raw_libnats_js_async_msgid  the same with a unique jsPubOptions.MsgId per message (the
//                               Nats-Msg-Id header the bridge sends, and the server's dedup work)
//   bridge_js/export            Broker::publish -> the export's inline handler -> the bridge's
//                               JetStream export (ExportRule::jetstream, max_in_flight =
//                               kJsInFlight, Nats-Msg-Id, resend on failure), Bridge::flush per
//                               batch
//
// HERALD_BENCH_SMOKE=1: tiny batches, one payload size.
#include <herald/nats.hpp>

#include <benchmark/benchmark.h>

#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "nats_server.hpp"

namespace {

bool smoke() {
  static const bool on = [] {
    const char* s = std::getenv("HERALD_BENCH_SMOKE");
    return s && std::string(s) == "1";
  }();
  return on;
}

std::uint64_t batch() {
  return smoke() ? 500 : 20000;
}

/// The JetStream store: a temporary directory, removed at exit (after the server is gone).
struct StoreDir {
  std::filesystem::path path;
  StoreDir() {
    std::string templ =
        (std::filesystem::temp_directory_path() / "herald-bench-js-XXXXXX").string();
    if (::mkdtemp(templ.data()) != nullptr) path = templ;
  }
  ~StoreDir() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove_all(path, ec);
  }
};

herald_test::NatsServer& server() {
  static StoreDir dir;
  static herald_test::NatsServer s({"-js", "-sd", dir.path.string()});
  return s;
}

/// CPU time (user + system) of this process, all threads, and of the server process: on a
/// machine with more runnable threads than cores, CPU per message is the figure that does not
/// depend on the scheduler's mood.
struct CpuClock {
  static std::chrono::nanoseconds self() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    auto ns = [](const timeval& t) {
      return std::chrono::seconds(t.tv_sec) + std::chrono::microseconds(t.tv_usec);
    };
    return ns(u.ru_utime) + ns(u.ru_stime);
  }
  static std::chrono::nanoseconds of(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string field;
    unsigned long long utime = 0, stime = 0;
    // Fields 14 and 15 are utime and stime in clock ticks; the name (field 2) has no spaces here.
    for (int i = 1; i <= 15 && stat >> field; ++i) {
      if (i == 14) utime = std::stoull(field);
      if (i == 15) stime = std::stoull(field);
    }
    const auto tick = std::chrono::nanoseconds(1'000'000'000 / sysconf(_SC_CLK_TCK));
    return tick * static_cast<long long>(utime + stime);
  }
};

/// Records CPU per message as counters: client (this process) and server.
class CpuPerMessage {
 public:
  CpuPerMessage() : self_(CpuClock::self()), server_(CpuClock::of(server().pid())) {}
  void report(benchmark::State& state, std::uint64_t messages) const {
    const double n = static_cast<double>(messages ? messages : 1);
    state.counters["client_ns/msg"] = static_cast<double>((CpuClock::self() - self_).count()) / n;
    state.counters["server_ns/msg"] =
        static_cast<double>((CpuClock::of(server().pid()) - server_).count()) / n;
  }

 private:
  std::chrono::nanoseconds self_;
  std::chrono::nanoseconds server_;
};

/// At most this many messages in flight (published, not yet received), for every variant: the
/// benchmark measures sustained delivery, not how much the buffers can swallow.
constexpr std::uint64_t kWindow = 8192;

void wait_for_window(std::uint64_t published, const std::atomic<std::uint64_t>& received) {
  while (published - received.load(std::memory_order_acquire) >= kWindow) {
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

void wait_for_all(std::uint64_t published, const std::atomic<std::uint64_t>& received) {
  while (received.load(std::memory_order_acquire) < published) {
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

natsConnection* connect_raw() {
  natsConnection* nc = nullptr;
  if (natsConnection_ConnectTo(&nc, server().url().c_str()) != NATS_OK) return nullptr;
  return nc;
}

/// What every raw libnats variant shares: two connections, a subscription to "raw.>" whose
/// callback `on_message(closure)` counts into `received`, batches sent by `send(pub, payload)`
/// within the flow-control window, and the counters reported.
template <class Send>
void run_raw(benchmark::State& state, natsMsgHandler on_message, void* closure,
             const std::atomic<std::uint64_t>& received, Send&& send) {
  const auto size = static_cast<std::size_t>(state.range(0));
  natsConnection* pub = connect_raw();
  natsConnection* sub = connect_raw();
  if (!pub || !sub) {
    for (natsConnection* nc : {pub, sub}) {  // the one that did connect, if any
      if (nc) natsConnection_Destroy(nc);
    }
    state.SkipWithError("cannot connect to nats-server");
    return;
  }
  natsSubscription* s = nullptr;
  natsConnection_Subscribe(&s, sub, "raw.>", on_message, closure);
  natsConnection_Flush(sub);

  const std::string payload(size, 'x');
  std::uint64_t published = 0;
  const CpuPerMessage cpu;
  for (auto _ : state) {
    for (std::uint64_t i = 0; i < batch(); ++i) {
      wait_for_window(published, received);
      send(pub, payload);
      ++published;
    }
    wait_for_all(published, received);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(published));
  cpu.report(state, published);
  natsSubscription_Unsubscribe(s);
  natsSubscription_Destroy(s);
  natsConnection_Destroy(pub);
  natsConnection_Destroy(sub);
}

/// Raw libnats. With `Copying`, each end also makes the copy an application makes to own the
/// value (a std::string built before publishing and from the received bytes), as herald does.
template <bool Copying>
void BM_raw_libnats(benchmark::State& state) {
  std::atomic<std::uint64_t> received{0};
  run_raw(
      state,
      [](natsConnection*, natsSubscription*, natsMsg* m, void* counter) {
        if constexpr (Copying) {
          const std::string value(natsMsg_GetData(m),
                                  static_cast<std::size_t>(natsMsg_GetDataLength(m)));
          benchmark::DoNotOptimize(value.data());
        } else {
          benchmark::DoNotOptimize(natsMsg_GetDataLength(m));
        }
        static_cast<std::atomic<std::uint64_t>*>(counter)->fetch_add(1, std::memory_order_release);
        natsMsg_Destroy(m);
      },
      &received, received,
      [](natsConnection* pub, const std::string& payload) {
        const int size = static_cast<int>(payload.size());
        if constexpr (Copying) {
          const std::string value = payload;
          benchmark::DoNotOptimize(value.data());
          natsConnection_Publish(pub, "raw.data", value.data(), size);
        } else {
          natsConnection_Publish(pub, "raw.data", payload.data(), size);
        }
      });
}

// The two headers every message of the *_headers variants carries.
const std::vector<std::pair<std::string, std::string>>& bench_headers() {
  static const std::vector<std::pair<std::string, std::string>> h{
      {"Trace-Id", "4bf92f3577b34da6a3ce929d0e0e4736"}, {"Reply-To", "orders.replies.42"}};
  return h;
}

/// Raw libnats with two headers per message, copied at each end like raw_libnats_copying.
void BM_raw_libnats_headers(benchmark::State& state) {
  struct Received {
    std::atomic<std::uint64_t> count{0};
    std::atomic<std::uint64_t> wrong{0};  // messages that did not carry both headers
  } received;
  run_raw(
      state,
      [](natsConnection*, natsSubscription*, natsMsg* m, void* closure) {
        auto& r = *static_cast<Received*>(closure);
        const std::string value(natsMsg_GetData(m),
                                static_cast<std::size_t>(natsMsg_GetDataLength(m)));
        benchmark::DoNotOptimize(value.data());
        std::vector<std::pair<std::string, std::string>> headers;
        const char** keys = nullptr;
        int count = 0;
        if (natsMsgHeader_Keys(m, &keys, &count) == NATS_OK) {
          for (int k = 0; k < count; ++k) {
            const char** values = nullptr;
            int n = 0;
            if (natsMsgHeader_Values(m, keys[k], &values, &n) != NATS_OK) continue;
            for (int v = 0; v < n; ++v)
              headers.emplace_back(keys[k], values[v]);
            std::free(static_cast<void*>(values));
          }
          std::free(static_cast<void*>(keys));
        }
        if (headers.size() != bench_headers().size()) r.wrong.fetch_add(1);
        r.count.fetch_add(1, std::memory_order_release);
        natsMsg_Destroy(m);
      },
      &received, received.count,
      [](natsConnection* pub, const std::string& payload) {
        const std::string value = payload;
        natsMsg* msg = nullptr;
        natsMsg_Create(&msg, "raw.data", nullptr, value.data(), static_cast<int>(value.size()));
        for (const auto& [name, v] : bench_headers())
          natsMsgHeader_Add(msg, name.c_str(), v.c_str());
        natsConnection_PublishMsg(pub, msg);
        natsMsg_Destroy(msg);
      });
  if (received.wrong.load() != 0) state.SkipWithError("raw libnats: a message lost its headers");
}

template <bool Pull, bool WithHeaders = false>
void BM_bridge(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  herald::Broker<std::string> local;
  herald::Broker<std::string> remote;
  std::optional<herald::nats::Bridge<std::string>> out;
  std::optional<herald::nats::Bridge<std::string>> in;
  try {
    out.emplace(
        local,
        herald::nats::BridgeOptions{
            .url = server().url(),
            .exports = {{.pattern = "bridge.>",
                         .queue = {.capacity = 8192, .overflow = herald::Overflow::block}}}});
    in.emplace(remote, herald::nats::BridgeOptions{.url = server().url(),
                                                   .imports = {{.pattern = "bridge.>"}}});
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }

  std::atomic<std::uint64_t> received{0};
  const herald::SubscribeOptions queue{.capacity = 16384, .overflow = herald::Overflow::block};
  herald::Subscription<std::string> pull;
  herald::HandlerSubscription<std::string> push;
  std::jthread consumer;
  if constexpr (Pull) {
    pull = remote.subscribe("bridge.>", queue);
    consumer = std::jthread([&](std::stop_token stop) {
      while (auto m = pull.receive(stop)) {
        benchmark::DoNotOptimize((*m)->size());
        received.fetch_add(1, std::memory_order_release);
      }
    });
  } else {
    push = remote.subscribe(
        "bridge.>",
        [&](const herald::Message<std::string>& m) {
          benchmark::DoNotOptimize(m->size());
          if constexpr (WithHeaders) benchmark::DoNotOptimize(m.headers().size());
          received.fetch_add(1, std::memory_order_release);
        },
        herald::inline_executor, queue);
  }

  auto publisher = local.publisher("bridge.data");
  const std::string payload(size, 'x');
  herald::Headers headers;
  for (const auto& [name, value] : bench_headers())
    headers.add(name, value);
  std::uint64_t published = 0;
  const CpuPerMessage cpu;
  for (auto _ : state) {
    for (std::uint64_t i = 0; i < batch(); ++i) {
      wait_for_window(published, received);
      if constexpr (WithHeaders) {
        publisher.publish(payload, {.headers = headers});
      } else {
        publisher.publish(payload);
      }
      ++published;
    }
    wait_for_all(published, received);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(published));
  cpu.report(state, published);
  const auto s = out->stats();
  state.counters["dropped"] = static_cast<double>(s.dropped());
  consumer = {};
  in.reset();
  out.reset();
}

/// Messages published and not yet acknowledged by the stream, for every JetStream variant.
constexpr std::int64_t kJsInFlight = 1024;

/// Creates (or empties) a file-storage stream capturing `subject`, through a connection of its own.
bool fresh_stream(const char* name, const char* subject) {
  natsConnection* nc = connect_raw();
  if (!nc) return false;
  jsCtx* js = nullptr;
  bool ok = natsConnection_JetStream(&js, nc, nullptr) == NATS_OK;
  if (ok) {
    js_DeleteStream(js, name, nullptr, nullptr);
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = name;
    const char* subjects[] = {subject};
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    jsStreamInfo* si = nullptr;
    ok = js_AddStream(&si, js, &cfg, nullptr, nullptr) == NATS_OK;
    jsStreamInfo_Destroy(si);
  }
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
  return ok;
}

/// Raw libnats JetStream asynchronous publish, the client bounding what is unacknowledged.
template <bool WithMsgId>
void BM_raw_js_async(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  if (!fresh_stream("RAWJS", "rawjs.>")) {
    state.SkipWithError("cannot create the stream (nats-server without -js?)");
    return;
  }
  natsConnection* nc = connect_raw();
  jsCtx* js = nullptr;
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.PublishAsync.MaxPending = kJsInFlight;
  jo.PublishAsync.StallWait = 60'000;  // wait for room, as the bridge's block policy does
  if (!nc || natsConnection_JetStream(&js, nc, &jo) != NATS_OK) {
    state.SkipWithError("cannot connect to nats-server");
    return;
  }
  const std::string payload(size, 'x');
  std::uint64_t published = 0;
  std::uint64_t failed = 0;
  std::string id;
  const CpuPerMessage cpu;
  for (auto _ : state) {
    for (std::uint64_t i = 0; i < batch(); ++i) {
      natsStatus s = NATS_OK;
      if constexpr (WithMsgId) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        id = "raw-";
        id += std::to_string(published);
        po.MsgId = id.c_str();
        s = js_PublishAsync(js, "rawjs.data", payload.data(), static_cast<int>(size), &po);
      } else {
        s = js_PublishAsync(js, "rawjs.data", payload.data(), static_cast<int>(size), nullptr);
      }
      failed += s != NATS_OK;
      ++published;
    }
    js_PublishAsyncComplete(js, nullptr);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(published));
  cpu.report(state, published);
  state.counters["failed"] = static_cast<double>(failed);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
}

/// The bridge's at-least-once export to the same kind of stream.
void BM_bridge_js(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  if (!fresh_stream("HERALDJS", "heraldjs.>")) {
    state.SkipWithError("cannot create the stream (nats-server without -js?)");
    return;
  }
  herald::Broker<std::string> local;
  std::optional<herald::nats::Bridge<std::string>> out;
  try {
    // Built field by field: g++ 12 -O3 warns wrongly (maybe-uninitialized) about the nested
    // designated initializers of a rule with a JetStreamExport.
    herald::nats::ExportRule rule;
    rule.pattern = "heraldjs.>";
    rule.queue.capacity = 8192;
    rule.queue.overflow = herald::Overflow::block;
    herald::nats::JetStreamExport js;
    js.stream.name = "HERALDJS";
    js.max_in_flight = static_cast<std::size_t>(kJsInFlight);
    rule.jetstream = std::move(js);
    herald::nats::BridgeOptions options;
    options.url = server().url();
    options.exports.push_back(std::move(rule));
    out.emplace(local, std::move(options));
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  auto publisher = local.publisher("heraldjs.data");
  const std::string payload(size, 'x');
  std::uint64_t published = 0;
  const CpuPerMessage cpu;
  for (auto _ : state) {
    for (std::uint64_t i = 0; i < batch(); ++i) {
      publisher.publish(payload);
      ++published;
    }
    if (!out->flush(std::chrono::seconds(60))) {
      state.SkipWithError("the stream did not acknowledge everything within 60 s");
      break;
    }
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(published));
  cpu.report(state, published);
  const auto s = out->stats();
  state.counters["retried"] = static_cast<double>(s.js_retried);
  state.counters["failed"] = static_cast<double>(s.js_failed + s.dropped());
  out.reset();
}

void sizes(benchmark::internal::Benchmark* b) {
  b->Arg(16);
  if (!smoke()) b->Arg(256);
  b->UseRealTime()->Unit(benchmark::kMillisecond);
  if (smoke()) b->Iterations(1);
}

BENCHMARK_TEMPLATE(BM_raw_libnats, false)->Name("raw_libnats")->Apply(sizes);
BENCHMARK_TEMPLATE(BM_raw_libnats, true)->Name("raw_libnats_copying")->Apply(sizes);
BENCHMARK_TEMPLATE(BM_bridge, false)->Name("bridge/inline_handler")->Apply(sizes);
BENCHMARK_TEMPLATE(BM_bridge, true)->Name("bridge/pull_subscriber")->Apply(sizes);
BENCHMARK(BM_raw_libnats_headers)->Name("raw_libnats_headers")->Apply(sizes);
BENCHMARK_TEMPLATE(BM_bridge, false, true)->Name("bridge/inline_handler_headers")->Apply(sizes);
BENCHMARK_TEMPLATE(BM_raw_js_async, false)->Name("raw_libnats_js_async")->Apply(sizes);
BENCHMARK_TEMPLATE(BM_raw_js_async, true)->Name("raw_libnats_js_async_msgid")->Apply(sizes);
BENCHMARK(BM_bridge_js)->Name("bridge_js/export")->Apply(sizes);

}  // namespace

BENCHMARK_MAIN();
