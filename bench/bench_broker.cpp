// herald::Broker against the brokers a C++ user would otherwise pick, in one run: the Go reference
// broker of DESIGN.md (bench/peers/refbroker: a typed Broker[T], a map of per-subscriber buffered
// channels behind a sync.RWMutex, one goroutine per subscriber; run as a subprocess, once per
// repetition, when --go-peer names it), the C++ translation of that design
// (bench/reference_broker.hpp: mutex-guarded topic map, mutex + condvar queue per subscriber,
// wildcards by scanning every pattern) and ZeroMQ inproc PUB/SUB (one PUB socket, one SUB socket
// per subscriber thread).
//
// A custom harness rather than Google Benchmark cases: repetitions are interleaved round-robin
// over the contenders (so a burst of background load hits everybody alike) and medians reported.
// Payload: a 32-byte struct on topic "market.eu.quote"; every subscriber has a queue of 1024
// (ZeroMQ: SNDHWM = RCVHWM = 1024; Go: a channel buffer of 1024). Workloads:
//   fan-out, block   1 publisher thread, N = 1/8/64 subscribers each drained by its own thread
//                    (Go: goroutine); nothing may be lost (herald: Overflow::block; reference:
//                    waits on its condvar; Go: a blocking channel send). Deliveries/s = messages
//                    received by all subscribers / wall time until the last one got everything.
//                    ZeroMQ PUB drops at the high-water mark, so it is measured on what arrived
//                    and its loss is shown; a second ZeroMQ row sets ZMQ_XPUB_NODROP (the
//                    publisher waits instead: lossless, comparable).
//                    Beside the pull subscriptions, handler subscriptions on a WorkerPool with
//                    hardware_concurrency() threads (published with a Publisher), the idiomatic
//                    way to serve many subscribers; deliveries/s until every one went idle.
//   fan-out, drop    the same with a dropping policy (herald: drop_incoming): publisher-side
//                    ns/publish while the consumers drain as fast as they can, and the loss.
//   round trip       thread A publishes on "ping", thread B receives it and publishes on "pong",
//                    A receives that: ns per round trip (herald: pull subscriptions; Go: the two
//                    subscriptions' goroutines answer each other), with the two threads left to
//                    the scheduler and pinned to two CPUs; beside it the same round trip through
//                    two bare herald BoundedQueues (bench_queue's ping-pong), the goal's yardstick.
//                    Go runs unpinned only (its scheduler places goroutines itself).
//   wildcard         single thread: CPU ns/publish to a topic matched by 3 wildcard subscriptions
//                    while 100 / 1k / 10k non-matching wildcard subscriptions exist (the reference
//                    designs scan them all; herald's cost must stay flat). Timed in batches of
//                    256, the 3 queues drained between batches, outside the clock.
//
//   no subscriber    single thread: CPU ns/publish to a topic nobody subscribes to.
//
//   bench_broker [--reps=N] [--only=block|drop|roundtrip|wildcard|nosub] [--go-peer=PATH]
//                [--deliveries=N] [--budget-ms=N] [--fanout=N] [--nonmatching=N]
//                [--peer=substring] [--pin]   (the last four narrow a run down for diagnosis;
//                --pin fixes thread placement of the fan-out, see g_pin)
//   HERALD_BENCH_SMOKE=1        tiny sizes, fan-out 1 and 8 only, one repetition
//   HERALD_BENCH_RESULTS=path   also append machine-readable rows for bench/report.sh
// Google Benchmark flags are accepted and ignored.
#include <herald/bounded_queue.hpp>
#include <herald/broker.hpp>
#include <herald/worker_pool.hpp>

#include <fmt/core.h>
#include <fmt/format.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include "go_peer.hpp"
#include "reference_broker.hpp"
#include "results.hpp"

#if defined(HERALD_HAVE_ZMQ)
#include <zmq.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <latch>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

/// The payload: a small market-data quote.
struct Tick {
  std::uint64_t seq;
  std::uint64_t instrument;
  double bid;
  double ask;
};
static_assert(sizeof(Tick) == 32);

Tick make_tick(std::uint64_t seq) {
  return Tick{seq, seq * 7, 100.0 + static_cast<double>(seq & 1023), 100.5};
}

constexpr std::string_view kTopic = "market.eu.quote";
constexpr std::size_t kCapacity = 1024;

std::atomic<bool> g_failed{false};

void fail(std::string_view who, std::string_view what) {
  fmt::print(stderr, "FAILED {}: {}\n", who, what);
  g_failed = true;
}

enum class Mode { block, drop };

/// A fan-out run stops publishing after this long even if it has not sent all its messages (the
/// machine's load varies a lot, and the slowest contender must not stretch a run to minutes).
std::chrono::nanoseconds g_run_budget = std::chrono::milliseconds(800);
// --pin (diagnosis only): the publisher on CPU 0, consumers on the other CPUs, so that A/B runs
// of one contender are not decided by where the scheduler happens to put two threads.
bool g_pin = false;
// --go-peer=PATH: the Go reference broker program (bench/peers/refbroker); empty: not run.
std::string g_go_peer;
constexpr std::string_view kGoName = "Go reference broker (goroutine per subscriber)";
constexpr std::string_view kHandlersName = "herald handlers on a WorkerPool (Publisher)";

void pin_to_cpu(unsigned cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

void unpin() {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (unsigned i = 0; i < std::thread::hardware_concurrency(); ++i)
    CPU_SET(i, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

/// One measurement: the metric (deliveries/s for block, ns/publish for drop) and the fraction of
/// offered deliveries that never reached a consumer.
struct Outcome {
  double value = 0;
  double loss = 0;
  double cpu_ns = 0;  ///< process CPU time (user + system, all threads) per message received
  double csw = 0;     ///< context switches (voluntary + involuntary) per 1000 messages received
};

/// Process-wide CPU time and context switches, for the diagnostic columns.
struct Usage {
  double cpu_ns = 0;
  double switches = 0;
  static Usage now() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    const auto ns = [](const timeval& tv) {
      return static_cast<double>(tv.tv_sec) * 1e9 + static_cast<double>(tv.tv_usec) * 1e3;
    };
    return {ns(ru.ru_utime) + ns(ru.ru_stime), static_cast<double>(ru.ru_nvcsw + ru.ru_nivcsw)};
  }
};

/// The consumer threads of one run: a start latch, and what each got and when it finished.
struct Consumers {
  explicit Consumers(unsigned n) : ready(n), finish(n), received(n) {}
  std::latch ready;
  std::vector<Clock::time_point> finish;
  std::vector<std::uint64_t> received;
  std::vector<std::thread> threads;
  Usage before;
  /// How many messages each consumer must get: lowered when the publisher stops early.
  std::atomic<std::uint64_t> target{std::numeric_limits<std::uint64_t>::max()};

  /// Whether a lossless consumer that got `got` messages has everything.
  bool complete(std::uint64_t got) const { return got >= target.load(std::memory_order_relaxed); }

  /// Publishes messages 1..`messages` with `publish(seq)`, stopping early once the run's time
  /// budget is spent; returns how many were published.
  template <class Publish>
  std::uint64_t publish_all(std::uint64_t messages, Clock::time_point t0, Publish&& publish) {
    target.store(messages, std::memory_order_relaxed);
    const auto deadline = t0 + g_run_budget;
    std::uint64_t sent = 0;
    while (sent < messages) {
      if ((sent & 255) == 255 && Clock::now() > deadline) break;
      publish(++sent);
    }
    target.store(sent, std::memory_order_relaxed);
    return sent;
  }

  /// Called first by consumer thread `i`.
  void arrive(unsigned i) {
    const unsigned cpus = std::thread::hardware_concurrency();
    if (g_pin && cpus > 1) pin_to_cpu(1 + i % (cpus - 1));
    ready.count_down();
  }

  /// Called when the consumers are ready: the start of the measured interval.
  Clock::time_point start() {
    if (g_pin && std::thread::hardware_concurrency() > 1) pin_to_cpu(0);
    before = Usage::now();
    return Clock::now();
  }

  void done(unsigned i, std::uint64_t got) {
    finish[i] = Clock::now();
    received[i] = got;
  }

  Outcome outcome(Mode mode, Clock::time_point t0, Clock::time_point published,
                  std::uint64_t messages) {
    for (auto& t : threads)
      t.join();
    if (g_pin) unpin();
    const Usage after = Usage::now();
    std::uint64_t total = 0;
    for (std::uint64_t r : received)
      total += r;
    const double offered = static_cast<double>(messages) * static_cast<double>(received.size());
    Outcome o;
    o.loss = 1.0 - static_cast<double>(total) / offered;
    // Per message received when nothing should be lost (useful work), per offer when dropping
    // (most of the publisher's work is then refusing).
    const double got = mode == Mode::block ? std::max(1.0, static_cast<double>(total)) : offered;
    o.cpu_ns = (after.cpu_ns - before.cpu_ns) / got;
    o.csw = (after.switches - before.switches) * 1000.0 / got;
    if (mode == Mode::block) {
      const auto last = *std::max_element(finish.begin(), finish.end());
      o.value = static_cast<double>(total) / std::chrono::duration<double>(last - t0).count();
    } else {
      o.value = std::chrono::duration<double, std::nano>(published - t0).count() /
                static_cast<double>(messages);
    }
    return o;
  }
};

/// Per-subscriber oracle: sequence numbers strictly increase (and, when nothing may be lost, are
/// exactly 1, 2, 3, ...).
struct SeqCheck {
  std::uint64_t last = 0;
  bool ok = true;
  void operator()(std::uint64_t seq, bool lossless) {
    ok = ok && (lossless ? seq == last + 1 : seq > last);
    last = seq;
  }
};

// ---- contenders of the fan-out workloads ----

template <bool Prepared>
Outcome fanout_herald(unsigned n, std::uint64_t messages, Mode mode) {
  const std::string_view who = Prepared ? "herald Publisher" : "herald publish";
  herald::Broker<Tick> broker;
  const herald::SubscribeOptions options{
      .capacity = kCapacity,
      .overflow = mode == Mode::block ? herald::Overflow::block : herald::Overflow::drop_incoming};
  std::vector<herald::Subscription<Tick>> subs;
  for (unsigned i = 0; i < n; ++i)
    subs.push_back(broker.subscribe(kTopic, options));
  Consumers c(n);
  for (unsigned i = 0; i < n; ++i) {
    c.threads.emplace_back([&, i] {
      c.arrive(i);
      SeqCheck check;
      std::uint64_t got = 0;
      while (auto m = subs[i].receive()) {
        check(m->value().seq, mode == Mode::block);
        if (mode == Mode::block && c.complete(++got)) break;
        if (mode == Mode::drop) ++got;
      }
      c.done(i, got);
      if (!check.ok) fail(who, "a subscriber saw sequence numbers out of order");
    });
  }
  auto publisher = broker.publisher(kTopic);
  c.ready.wait();
  const auto t0 = c.start();
  const std::uint64_t sent = c.publish_all(messages, t0, [&](std::uint64_t s) {
    if constexpr (Prepared) {
      publisher.publish(make_tick(s));
    } else {
      broker.publish(kTopic, make_tick(s));
    }
  });
  const auto published = Clock::now();
  broker.close();  // consumers drain what is queued, then stop
  const Outcome o = c.outcome(mode, t0, published, sent);
  std::uint64_t dropped = 0;
  for (const auto& s : subs)
    dropped += s.stats().dropped;
  const auto expected_drops =
      static_cast<std::uint64_t>(o.loss * static_cast<double>(sent) * static_cast<double>(n) + 0.5);
  if (dropped != expected_drops) fail(who, "dropped counter disagrees with what arrived");
  if (mode == Mode::block && o.loss != 0) fail(who, "lost messages under Overflow::block");
  return o;
}

/// Handler subscriptions on a WorkerPool with hardware_concurrency() threads: the idiomatic way
/// to serve many subscribers (the analogue of goroutines). Messages are published with a
/// Publisher; every handler checks its sequence numbers; the run ends when every subscription
/// has handled what it accepted (wait_idle).
Outcome fanout_handlers(unsigned n, std::uint64_t messages, Mode mode) {
  constexpr std::string_view who = "herald handlers on a WorkerPool";
  herald::Broker<Tick> broker;
  herald::WorkerPool pool(std::max(1u, std::thread::hardware_concurrency()), kCapacity);
  const herald::SubscribeOptions options{
      .capacity = kCapacity,
      .overflow = mode == Mode::block ? herald::Overflow::block : herald::Overflow::drop_incoming};
  struct alignas(64) PerSub {
    SeqCheck check;
    std::uint64_t got = 0;
  };
  std::vector<PerSub> per(n);
  std::vector<herald::HandlerSubscription<Tick>> subs;
  for (unsigned i = 0; i < n; ++i) {
    subs.push_back(broker.subscribe(
        kTopic,
        [&per, i, lossless = mode == Mode::block](const herald::Message<Tick>& m) {
          per[i].check(m->seq, lossless);
          ++per[i].got;
        },
        pool, options));
  }
  auto publisher = broker.publisher(kTopic);
  Consumers c(0);  // no consumer threads: only the publishing loop and the CPU accounting
  const auto t0 = c.start();
  const std::uint64_t sent =
      c.publish_all(messages, t0, [&](std::uint64_t s) { publisher.publish(make_tick(s)); });
  const auto published = Clock::now();
  for (auto& h : subs) {
    if (!h.wait_idle(std::chrono::seconds(60))) fail(who, "a subscription did not go idle");
  }
  const auto idle = Clock::now();
  const Usage after = Usage::now();
  std::uint64_t total = 0, dropped = 0;
  for (unsigned i = 0; i < n; ++i) {
    total += per[i].got;
    dropped += subs[i].stats().dropped;
    if (!per[i].check.ok) fail(who, "a handler saw sequence numbers out of order");
  }
  const double offered = static_cast<double>(sent) * n;
  Outcome o;
  o.loss = 1.0 - static_cast<double>(total) / offered;
  const double got = mode == Mode::block ? std::max(1.0, static_cast<double>(total)) : offered;
  o.cpu_ns = (after.cpu_ns - c.before.cpu_ns) / got;
  o.csw = (after.switches - c.before.switches) * 1000.0 / got;
  o.value = mode == Mode::block
                ? static_cast<double>(total) / std::chrono::duration<double>(idle - t0).count()
                : std::chrono::duration<double, std::nano>(published - t0).count() /
                      static_cast<double>(sent);
  if (static_cast<double>(dropped) != offered - static_cast<double>(total)) {
    fail(who, "dropped counter disagrees with what was handled");
  }
  if (mode == Mode::block && total != sent * n) fail(who, "lost messages under Overflow::block");
  return o;
}

Outcome fanout_reference(unsigned n, std::uint64_t messages, Mode mode) {
  herald_bench::ReferenceBroker<Tick> broker;
  const auto policy =
      mode == Mode::block ? herald_bench::RefPolicy::block : herald_bench::RefPolicy::drop;
  std::vector<herald_bench::ReferenceBroker<Tick>::QueuePtr> queues;
  for (unsigned i = 0; i < n; ++i)
    queues.push_back(broker.subscribe(kTopic, kCapacity, policy));
  Consumers c(n);
  for (unsigned i = 0; i < n; ++i) {
    c.threads.emplace_back([&, i] {
      c.arrive(i);
      SeqCheck check;
      std::uint64_t got = 0;
      while (auto m = queues[i]->pop()) {
        check(m->value.seq, mode == Mode::block);
        if (mode == Mode::block && c.complete(++got)) break;
        if (mode == Mode::drop) ++got;
      }
      c.done(i, got);
      if (!check.ok) fail("reference", "a subscriber saw sequence numbers out of order");
    });
  }
  c.ready.wait();
  const auto t0 = c.start();
  const std::uint64_t sent =
      c.publish_all(messages, t0, [&](std::uint64_t s) { broker.publish(kTopic, make_tick(s)); });
  const auto published = Clock::now();
  broker.close();
  const Outcome o = c.outcome(mode, t0, published, sent);
  if (mode == Mode::block && o.loss != 0) fail("reference", "lost messages while blocking");
  return o;
}

#if defined(HERALD_HAVE_ZMQ)
// On the wire: the topic (SUB sockets filter on it as a prefix), then the Tick.
constexpr std::size_t kWire = kTopic.size() + sizeof(Tick);
constexpr std::uint64_t kWarmup = std::numeric_limits<std::uint64_t>::max();
constexpr std::uint64_t kEnd = kWarmup - 1;

void wire(char* buf, std::uint64_t seq) {
  const Tick t = make_tick(seq);
  std::memcpy(buf, kTopic.data(), kTopic.size());
  std::memcpy(buf + kTopic.size(), &t, sizeof t);
}

void check_zmq(int rc, std::string_view what) {
  if (rc != 0) fail("ZeroMQ", fmt::format("{}: {}", what, zmq_strerror(zmq_errno())));
}

template <bool NoDrop>
Outcome fanout_zmq(unsigned n, std::uint64_t messages, Mode mode) {
  static std::atomic<unsigned> endpoints{0};
  const std::string endpoint = fmt::format("inproc://herald-fanout-{}", endpoints++);
  const int hwm = static_cast<int>(kCapacity);
  const int zero = 0;
  void* ctx = zmq_ctx_new();
  void* pub = zmq_socket(ctx, ZMQ_PUB);
  check_zmq(zmq_setsockopt(pub, ZMQ_SNDHWM, &hwm, sizeof hwm), "SNDHWM");
  check_zmq(zmq_setsockopt(pub, ZMQ_LINGER, &zero, sizeof zero), "LINGER");
  if constexpr (NoDrop) {
    // The PUB then refuses (blocking send: waits) instead of dropping at the high-water mark.
    const int one = 1;
    check_zmq(zmq_setsockopt(pub, ZMQ_XPUB_NODROP, &one, sizeof one), "XPUB_NODROP");
  }
  check_zmq(zmq_bind(pub, endpoint.c_str()), "bind");

  std::atomic<unsigned> joined{0};
  std::atomic<unsigned> finished{0};
  Consumers c(n);
  for (unsigned i = 0; i < n; ++i) {
    c.threads.emplace_back([&, i] {
      void* sub = zmq_socket(ctx, ZMQ_SUB);
      check_zmq(zmq_setsockopt(sub, ZMQ_RCVHWM, &hwm, sizeof hwm), "RCVHWM");
      check_zmq(zmq_setsockopt(sub, ZMQ_LINGER, &zero, sizeof zero), "LINGER");
      check_zmq(zmq_connect(sub, endpoint.c_str()), "connect");
      check_zmq(zmq_setsockopt(sub, ZMQ_SUBSCRIBE, kTopic.data(), kTopic.size()), "SUBSCRIBE");
      c.arrive(i);
      SeqCheck check;
      std::uint64_t got = 0;
      bool warm = false;
      char buf[kWire + 8];
      for (;;) {
        const int len = zmq_recv(sub, buf, sizeof buf, 0);
        if (len < 0 && zmq_errno() == EINTR) continue;
        if (len != static_cast<int>(kWire)) {
          fail("ZeroMQ", "unexpected message size");
          break;
        }
        Tick t;
        std::memcpy(&t, buf + kTopic.size(), sizeof t);
        if (t.seq == kWarmup) {
          if (!warm) joined.fetch_add(1);
          warm = true;
          continue;
        }
        if (t.seq == kEnd) break;
        check(t.seq, NoDrop);
        if (mode == Mode::block && c.complete(++got)) break;
        if (mode == Mode::drop) ++got;
      }
      c.done(i, got);
      finished.fetch_add(1);
      if (!check.ok) fail("ZeroMQ", "a subscriber saw sequence numbers out of order");
      zmq_close(sub);
    });
  }
  c.ready.wait();
  // Slow joiners: a SUB's subscription reaches the PUB asynchronously, and until it has, the PUB
  // silently sends it nothing. Warm-up messages go out until every SUB has received one.
  char buf[kWire];
  wire(buf, kWarmup);
  while (joined.load() < n) {
    zmq_send(pub, buf, kWire, ZMQ_DONTWAIT);
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  const auto t0 = c.start();
  const std::uint64_t sent = c.publish_all(messages, t0, [&](std::uint64_t s) {
    wire(buf, s);
    while (zmq_send(pub, buf, kWire, 0) < 0 && zmq_errno() == EINTR) {
    }
  });
  const auto published = Clock::now();
  // End markers, until every SUB that lost something has seen one (they can be dropped too).
  wire(buf, kEnd);
  while (finished.load() < n) {
    zmq_send(pub, buf, kWire, ZMQ_DONTWAIT);
    std::this_thread::yield();
  }
  const Outcome o = c.outcome(mode, t0, published, sent);
  zmq_close(pub);
  zmq_ctx_term(ctx);
  if (NoDrop && o.loss != 0) fail("ZeroMQ", "lost messages with ZMQ_XPUB_NODROP");
  return o;
}
#endif

// The Go reference broker: one run of bench/peers/refbroker, which checks what its subscribers
// receive itself and answers "value loss cpu_ns csw" (deliveries/s or ns/publish as here).
Outcome fanout_go(unsigned n, std::uint64_t messages, Mode mode) {
  const auto budget_ms = std::chrono::duration_cast<std::chrono::milliseconds>(g_run_budget);
  const herald_bench::PeerAnswer a = herald_bench::run_peer(
      g_go_peer,
      {"-workload=fanout", fmt::format("-subs={}", n), fmt::format("-messages={}", messages),
       mode == Mode::block ? "-mode=block" : "-mode=drop",
       fmt::format("-budget-ms={}", std::max<long long>(1, budget_ms.count()))},
      4);
  if (!a.ok) {
    fail(kGoName, a.error);
    return {};
  }
  Outcome o{a.values[0], a.values[1], a.values[2], a.values[3]};
  if (mode == Mode::block && o.loss != 0) fail(kGoName, "lost messages under the block policy");
  return o;
}

struct FanoutContender {
  std::string name;
  Outcome (*run)(unsigned, std::uint64_t, Mode);
  bool block_only = false;  // no dropping variant of its own
};

// ---- the wildcard workload ----

constexpr std::size_t kBatch = 256;
constexpr std::array<std::string_view, 3> kMatching = {"market.*.quote", "market.>", "*.*.quote"};

// Non-matching patterns of several shapes, some sharing a prefix with the published topic.
std::string nonmatching_pattern(std::size_t i) {
  switch (i % 4) {
    case 0:
      return fmt::format("dev{}.>", i);
    case 1:
      return fmt::format("dev.{}.*", i);
    case 2:
      return fmt::format("market.x{}.*", i);
    default:
      return fmt::format("market.*.q{}", i);
  }
}

// Distinct topics, all matched by the 3 wildcard subscriptions: more than herald's route cache
// holds (4096), so every publish resolves its route in the trie.
const std::vector<std::string>& rotating_topics() {
  static const std::vector<std::string> topics = [] {
    std::vector<std::string> t;
    for (int k = 0; k < 8192; ++k)
      t.push_back(fmt::format("market.u{}.quote", k));
    return t;
  }();
  return topics;
}

/// CPU time of the calling thread: the wildcard workload is single-threaded, and on a loaded
/// machine its CPU time is far steadier than wall time (preemption by other processes is excluded).
std::chrono::nanoseconds thread_cpu_time() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

/// Times batches of kBatch publishes (thread CPU time) until `budget` of it is spent; `drain`
/// runs between batches, outside the measurement.
template <class Publish, class Drain>
double time_batches(std::chrono::nanoseconds budget, Publish&& publish, Drain&& drain) {
  std::chrono::nanoseconds total{0};
  std::uint64_t count = 0;
  std::uint64_t i = 0;
  while (total < budget || count == 0) {
    const auto t = thread_cpu_time();
    for (std::size_t k = 0; k < kBatch; ++k)
      publish(i++);
    total += thread_cpu_time() - t;
    count += kBatch;
    drain();
  }
  return static_cast<double>(total.count()) / static_cast<double>(count);
}

enum class HeraldWild { cached, rotating, prepared };

template <HeraldWild Variant>
double wildcard_herald(std::size_t nonmatching, std::chrono::nanoseconds budget) {
  herald::Broker<Tick> broker;
  std::vector<herald::Subscription<Tick>> others;
  others.reserve(nonmatching);
  for (std::size_t i = 0; i < nonmatching; ++i)
    others.push_back(broker.subscribe(nonmatching_pattern(i), {.capacity = 1}));
  std::vector<herald::Subscription<Tick>> matching;
  for (std::string_view p : kMatching)
    matching.push_back(broker.subscribe(p, {.capacity = 2 * kBatch}));
  auto publisher = broker.publisher(kTopic);
  const auto& topics = rotating_topics();
  bool ok = true;
  const double ns = time_batches(
      budget,
      [&](std::uint64_t i) {
        herald::PublishResult r;
        if constexpr (Variant == HeraldWild::cached) {
          r = broker.publish(kTopic, make_tick(i));
        } else if constexpr (Variant == HeraldWild::rotating) {
          r = broker.publish(topics[i % topics.size()], make_tick(i));
        } else {
          r = publisher.publish(make_tick(i));
        }
        ok = ok && r.delivered == kMatching.size();
      },
      [&] {
        for (auto& s : matching) {
          std::size_t got = 0;
          while (s.try_receive())
            ++got;
          ok = ok && got == kBatch;
        }
      });
  if (!ok) fail("herald wildcard", "a publish did not reach exactly the 3 matching subscribers");
  return ns;
}

double wildcard_reference(std::size_t nonmatching, std::chrono::nanoseconds budget) {
  herald_bench::ReferenceBroker<Tick> broker;
  for (std::size_t i = 0; i < nonmatching; ++i)
    broker.subscribe(nonmatching_pattern(i), 1, herald_bench::RefPolicy::drop);
  std::vector<herald_bench::ReferenceBroker<Tick>::QueuePtr> matching;
  for (std::string_view p : kMatching)
    matching.push_back(broker.subscribe(p, 2 * kBatch, herald_bench::RefPolicy::drop));
  bool ok = true;
  const double ns = time_batches(
      budget,
      [&](std::uint64_t i) { ok = broker.publish(kTopic, make_tick(i)) == kMatching.size() && ok; },
      [&] {
        for (auto& q : matching) {
          for (std::size_t k = 0; k < kBatch; ++k)
            ok = q->pop() != nullptr && ok;
        }
      });
  if (!ok) fail("reference wildcard", "a publish did not reach exactly the 3 matching subscribers");
  return ns;
}

double wildcard_go(std::size_t nonmatching, std::chrono::nanoseconds budget) {
  const auto budget_ms = std::chrono::duration_cast<std::chrono::milliseconds>(budget);
  const herald_bench::PeerAnswer a = herald_bench::run_peer(
      g_go_peer, {"-workload=wildcard", fmt::format("-nonmatching={}", nonmatching),
                  fmt::format("-budget-ms={}", std::max<long long>(1, budget_ms.count()))});
  if (!a.ok) fail(kGoName, a.error);
  return a.ok ? a.values[0] : 0;
}

// ---- publishing to a topic nobody subscribes to ----

/// Thread CPU ns per publish to a topic that matches no subscription (there are some elsewhere):
/// what it costs to leave publishing in hot code with nobody listening.
template <bool Prepared>
double nosub_herald(std::size_t /*unused*/, std::chrono::nanoseconds budget) {
  herald::Broker<Tick> broker;
  auto elsewhere = broker.subscribe("orders.>", {.capacity = 1});
  auto publisher = broker.publisher(kTopic);
  std::uint64_t matched = 0;
  const double ns = time_batches(
      budget,
      [&](std::uint64_t i) {
        if constexpr (Prepared) {
          matched += publisher.publish(make_tick(i)).matched;
        } else {
          matched += broker.publish(kTopic, make_tick(i)).matched;
        }
      },
      [] {});
  if (matched != 0) fail("herald no-subscriber publish", "a publish matched a subscription");
  return ns;
}

struct WildContender {
  std::string name;
  double (*run)(std::size_t, std::chrono::nanoseconds);
};

// ---- the round trip workload ----

/// Starts threads A and B of a round trip together, optionally pinned to two different CPUs
/// (B on CPU 0, A on CPU 1, as bench_queue pins its ping-pong); returns ns per round trip.
template <class Echo, class Ping>
double round_trip(std::uint64_t rounds, bool pinned, Echo&& echo, Ping&& ping) {
  const bool pin = pinned && std::thread::hardware_concurrency() > 1;
  std::latch ready(3);
  std::thread b([&] {
    if (pin) pin_to_cpu(0);
    ready.arrive_and_wait();
    echo();
  });
  Clock::time_point t0, t1;
  std::thread a([&] {
    if (pin) pin_to_cpu(1);
    ready.arrive_and_wait();
    t0 = Clock::now();
    ping();
    t1 = Clock::now();
  });
  ready.arrive_and_wait();
  a.join();
  b.join();
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(rounds);
}

template <bool Prepared>
double roundtrip_herald(std::uint64_t rounds, bool pinned) {
  const std::string_view who = Prepared ? "herald Publisher round trip" : "herald round trip";
  herald::Broker<Tick> broker;
  const herald::SubscribeOptions options{.capacity = kCapacity,
                                         .overflow = herald::Overflow::block};
  auto pings = broker.subscribe("ping", options);
  auto pongs = broker.subscribe("pong", options);
  auto ping_publisher = broker.publisher("ping");
  auto pong_publisher = broker.publisher("pong");
  bool ok = true;
  const double ns = round_trip(
      rounds, pinned,
      [&] {
        for (std::uint64_t i = 0; i < rounds; ++i) {
          auto m = pings.receive();
          if (!m) return;
          if constexpr (Prepared) {
            pong_publisher.publish(m->value());
          } else {
            broker.publish("pong", m->value());
          }
        }
      },
      [&] {
        for (std::uint64_t i = 1; i <= rounds; ++i) {
          if constexpr (Prepared) {
            ping_publisher.publish(make_tick(i));
          } else {
            broker.publish("ping", make_tick(i));
          }
          auto m = pongs.receive();
          ok = ok && m && m->value().seq == i;
        }
      });
  if (!ok) fail(who, "a pong was lost or out of order");
  return ns;
}

/// bench_queue's ping-pong: one 8-byte value bounces through two bare BoundedQueues.
double roundtrip_queue(std::uint64_t rounds, bool pinned) {
  herald::BoundedQueue<std::uint64_t> there(kCapacity), back(kCapacity);
  bool ok = true;
  const double ns = round_trip(
      rounds, pinned,
      [&] {
        for (std::uint64_t i = 0; i < rounds; ++i)
          back.push(there.pop().value_or(0));
      },
      [&] {
        for (std::uint64_t i = 1; i <= rounds; ++i) {
          there.push(i);
          ok = back.pop() == i && ok;
        }
      });
  if (!ok) fail("herald BoundedQueue ping-pong", "a value was lost or out of order");
  return ns;
}

double roundtrip_reference(std::uint64_t rounds, bool pinned) {
  herald_bench::ReferenceBroker<Tick> broker;
  auto pings = broker.subscribe("ping", kCapacity, herald_bench::RefPolicy::block);
  auto pongs = broker.subscribe("pong", kCapacity, herald_bench::RefPolicy::block);
  bool ok = true;
  const double ns = round_trip(
      rounds, pinned,
      [&] {
        for (std::uint64_t i = 0; i < rounds; ++i) {
          auto m = pings->pop();
          if (!m) return;
          broker.publish("pong", m->value);
        }
      },
      [&] {
        for (std::uint64_t i = 1; i <= rounds; ++i) {
          broker.publish("ping", make_tick(i));
          auto m = pongs->pop();
          ok = ok && m && m->value.seq == i;
        }
      });
  if (!ok) fail("reference round trip", "a pong was lost or out of order");
  return ns;
}

/// The Go broker's goroutines are placed by Go's scheduler: only the unpinned run is measured.
double roundtrip_go(std::uint64_t rounds, bool /*pinned*/) {
  const herald_bench::PeerAnswer a =
      herald_bench::run_peer(g_go_peer, {"-workload=pingpong", fmt::format("-rounds={}", rounds)});
  if (!a.ok) fail(kGoName, a.error);
  return a.ok ? a.values[0] : 0;
}

struct RoundTripContender {
  std::string name;
  double (*run)(std::uint64_t, bool);
  bool unpinned_only = false;
};

// ---- reporting ----

using Stat = herald_bench::Summary;
using herald_bench::summarize;

struct Table {
  std::string title;
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::string note;
};

void print_text(const Table& t) {
  std::vector<std::size_t> w(t.header.size());
  for (std::size_t i = 0; i < w.size(); ++i) {
    w[i] = t.header[i].size();
    for (const auto& r : t.rows)
      w[i] = std::max(w[i], r[i].size());
  }
  const auto line = [&](const std::vector<std::string>& cells) {
    std::string s;
    for (std::size_t i = 0; i < cells.size(); ++i) {
      s += i < 2 ? fmt::format("{:<{}}", cells[i], w[i]) : fmt::format("{:>{}}", cells[i], w[i]);
      s += "  ";
    }
    fmt::print("  {}\n", s);
  };
  fmt::print("{}\n", t.title);
  line(t.header);
  for (const auto& r : t.rows)
    line(r);
  if (!t.note.empty()) fmt::print("  ({})\n", t.note);
  fmt::print("\n");
}

std::string first_line(const char* path, std::string_view key) {
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key, 0) == 0) {
      const auto colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(colon + 2);
    }
  }
  return "unknown";
}

std::string fixed(double x, int digits) {
  return fmt::format("{:.{}f}", x, digits);
}

// Ratios involving a contender that did not run (filtered out) print as n/a.
std::string ratio(double x) {
  return std::isfinite(x) && x > 0 ? fmt::format("{:.2f}x", x) : "n/a";
}

}  // namespace

int main(int argc, char** argv) {
  const char* smoke_env = std::getenv("HERALD_BENCH_SMOKE");
  const bool smoke = smoke_env != nullptr && std::string_view(smoke_env) == "1";
  int reps = smoke ? 1 : 5;
  if (smoke) g_run_budget = std::chrono::milliseconds(200);
  std::string only;
  std::string peer;
  unsigned fanout_only = 0;
  std::size_t nonmatching_only = 0;
  std::uint64_t deliveries = smoke ? 20'000 : 2'000'000;  // per fan-out run, over all subscribers
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a.rfind("--reps=", 0) == 0) reps = std::max(1, std::atoi(argv[i] + 7));
    if (a.rfind("--only=", 0) == 0) only = std::string(a.substr(7));
    if (a.rfind("--peer=", 0) == 0) peer = std::string(a.substr(7));
    if (a.rfind("--go-peer=", 0) == 0) g_go_peer = std::string(a.substr(10));
    if (a.rfind("--budget-ms=", 0) == 0) {
      g_run_budget = std::chrono::milliseconds(std::max(1, std::atoi(argv[i] + 12)));
    }
    if (a.rfind("--nonmatching=", 0) == 0) {
      nonmatching_only = std::strtoull(argv[i] + 14, nullptr, 10);
    }
    if (a == "--pin") g_pin = true;
    if (a.rfind("--fanout=", 0) == 0) fanout_only = static_cast<unsigned>(std::atoi(argv[i] + 9));
    if (a.rfind("--deliveries=", 0) == 0) {
      deliveries = std::max<std::uint64_t>(1000, std::strtoull(argv[i] + 13, nullptr, 10));
    }
  }
  if (!g_go_peer.empty() && access(g_go_peer.c_str(), X_OK) != 0) {
    fmt::print(stderr, "bench_broker: --go-peer={} is not an executable program\n", g_go_peer);
    return 2;
  }
  const auto wanted = [&](std::string_view section) {
    return only.empty() || section.find(only) != std::string_view::npos;
  };
  std::vector<unsigned> fanouts = smoke ? std::vector<unsigned>{1, 8} : std::vector{1u, 8u, 64u};
  if (fanout_only != 0) fanouts = {fanout_only};
  const auto chosen = [&](std::string_view name) {
    return peer.empty() || name.find(peer) != std::string_view::npos;
  };
  std::vector<std::size_t> sizes = {100, 1'000, 10'000};
  if (nonmatching_only != 0) sizes = {nonmatching_only};
  const auto budget = smoke ? std::chrono::nanoseconds(std::chrono::milliseconds(2))
                            : std::chrono::milliseconds(60);
  const auto messages_for = [&](unsigned n) {
    return std::max<std::uint64_t>(deliveries / n, 100);
  };
  const std::uint64_t rounds = smoke ? 2'000 : 20'000;  // bench_queue's ping-pong count
  const bool go = !g_go_peer.empty();

  // herald first (the ratios are against it), then the headline peer, the Go reference broker.
  std::vector<FanoutContender> fan = {
      {"herald publish", &fanout_herald<false>},
      {"herald Publisher", &fanout_herald<true>},
      {std::string(kHandlersName), &fanout_handlers},
  };
  if (go) fan.push_back({std::string(kGoName), &fanout_go});
  fan.push_back({"reference design", &fanout_reference});
#if defined(HERALD_HAVE_ZMQ)
  fan.push_back({"ZeroMQ inproc PUB/SUB", &fanout_zmq<false>});
  fan.push_back({"ZeroMQ inproc, XPUB_NODROP", &fanout_zmq<true>, true});
#endif
  const auto fan_index = [&](std::string_view name) {
    for (std::size_t i = 0; i < fan.size(); ++i)
      if (fan[i].name == name) return i;
    return fan.size();
  };
  const std::size_t kHeraldPublish = 0, kHeraldPublisher = 1, kHandlers = 2,
                    kGo = fan_index(kGoName), kReference = fan_index("reference design"),
                    kZmq = fan_index("ZeroMQ inproc PUB/SUB"),
                    kZmqNoDrop = fan_index("ZeroMQ inproc, XPUB_NODROP");
  std::vector<WildContender> wild = {
      {"herald publish (route cached)", &wildcard_herald<HeraldWild::cached>},
      {"herald publish (8192 topics, uncached)", &wildcard_herald<HeraldWild::rotating>},
      {"herald Publisher", &wildcard_herald<HeraldWild::prepared>},
  };
  if (go) wild.push_back({std::string(kGoName), &wildcard_go});
  wild.push_back({"reference design", &wildcard_reference});
  const std::vector<WildContender> nosub = {
      {"herald publish", &nosub_herald<false>},
      {"herald Publisher", &nosub_herald<true>},
  };
  std::vector<RoundTripContender> trip = {
      {"herald publish", &roundtrip_herald<false>},
      {"herald Publisher", &roundtrip_herald<true>},
      {"herald BoundedQueue ping-pong (two queues, no broker)", &roundtrip_queue},
  };
  if (go) trip.push_back({std::string(kGoName), &roundtrip_go, true});
  trip.push_back({"reference design", &roundtrip_reference});
  constexpr std::size_t kTripQueue = 2;
  const std::array<bool, 2> placements = {false, true};
  const std::array<std::string_view, 2> placement_names = {"unpinned", "pinned"};

  std::string zmq_ver = "not built";
#if defined(HERALD_HAVE_ZMQ)
  {
    int major = 0, minor = 0, patch = 0;
    zmq_version(&major, &minor, &patch);
    zmq_ver = fmt::format("{}.{}.{}", major, minor, patch);
  }
#endif
  const std::string header = fmt::format(
      "bench_broker: {} | {} cores | {} Release (-O3) | libzmq {} | Go peer {} | {} repetitions "
      "interleaved round-robin, medians | load average at start {}{}",
      first_line("/proc/cpuinfo", "model name"), std::thread::hardware_concurrency(),
#if defined(__clang__)
      "clang++ " __clang_version__,
#else
      "g++ " __VERSION__,
#endif
      zmq_ver, go ? g_go_peer : std::string("not run (no --go-peer)"), reps,
      first_line("/proc/loadavg", ""), smoke ? " | SMOKE sizes" : "");
  const std::string setup = fmt::format(
      "32-byte payload on one topic, queue capacity {} per subscriber (ZeroMQ SNDHWM = RCVHWM = "
      "{}, Go channel buffer {}); a fan-out run publishes {} / subscribers messages, or fewer if "
      "its {} ms budget runs out; one consumer thread (Go: goroutine) per subscriber; round trip "
      "{} rounds",
      kCapacity, kCapacity, kCapacity, deliveries,
      std::chrono::duration_cast<std::chrono::milliseconds>(g_run_budget).count(), rounds);
  fmt::print("{}\n{}\n\n", header, setup);

  // samples[mode][fanout index][contender]
  std::vector<std::vector<std::vector<std::vector<Outcome>>>> samples(
      2, std::vector<std::vector<std::vector<Outcome>>>(
             fanouts.size(), std::vector<std::vector<Outcome>>(fan.size())));
  std::vector<std::vector<std::vector<double>>> wild_samples(
      sizes.size(), std::vector<std::vector<double>>(wild.size()));
  std::vector<std::vector<double>> nosub_samples(nosub.size());
  // trip_samples[placement][contender]
  std::vector<std::vector<std::vector<double>>> trip_samples(
      placements.size(), std::vector<std::vector<double>>(trip.size()));
  const std::array<Mode, 2> modes = {Mode::block, Mode::drop};
  const std::array<std::string_view, 2> mode_names = {"block", "drop"};

  for (int rep = 0; rep < reps; ++rep) {
    for (std::size_t mi = 0; mi < modes.size(); ++mi) {
      if (!wanted(mode_names[mi])) continue;
      for (std::size_t f = 0; f < fanouts.size(); ++f) {
        for (std::size_t k = 0; k < fan.size(); ++k) {
          const std::size_t i = (k + static_cast<std::size_t>(rep)) % fan.size();  // rotate
          if ((modes[mi] == Mode::drop && fan[i].block_only) || !chosen(fan[i].name)) continue;
          samples[mi][f][i].push_back(fan[i].run(fanouts[f], messages_for(fanouts[f]), modes[mi]));
        }
      }
    }
    for (std::size_t pl = 0; pl < placements.size() && wanted("roundtrip"); ++pl) {
      for (std::size_t k = 0; k < trip.size(); ++k) {
        const std::size_t i = (k + static_cast<std::size_t>(rep)) % trip.size();
        if ((placements[pl] && trip[i].unpinned_only) || !chosen(trip[i].name)) continue;
        trip_samples[pl][i].push_back(trip[i].run(rounds, placements[pl]));
      }
    }
    for (int w = 0; w < 3 && wanted("nosub"); ++w) {
      for (std::size_t k = 0; k < nosub.size(); ++k) {
        const std::size_t i = (k + static_cast<std::size_t>(w)) % nosub.size();
        nosub_samples[i].push_back(nosub[i].run(0, budget));
      }
    }
    // Wildcard samples are cheap and single-threaded: three per repetition.
    for (int w = 0; w < 3 && wanted("wildcard"); ++w) {
      for (std::size_t s = 0; s < sizes.size(); ++s) {
        for (std::size_t k = 0; k < wild.size(); ++k) {
          const std::size_t i = (k + static_cast<std::size_t>(3 * rep + w)) % wild.size();
          if (!chosen(wild[i].name)) continue;
          wild_samples[s][i].push_back(wild[i].run(sizes[s], budget));
        }
      }
    }
  }

  herald_bench::ResultsFile results;
  std::vector<Table> tables;
  std::vector<std::string> targets;
  const auto verdict = [](bool ok) { return ok ? "met" : "MISSED"; };

  // Fan-out tables.
  for (std::size_t mi = 0; mi < modes.size(); ++mi) {
    if (!wanted(mode_names[mi])) continue;
    const bool block = modes[mi] == Mode::block;
    Table t;
    t.title = block ? "Fan-out, lossless (herald Overflow::block): M deliveries/s, higher is better"
                    : "Fan-out, dropping (herald Overflow::drop_incoming): publisher ns/publish, "
                      "lower is better";
    t.header = {"subs",
                "contender",
                block ? "M deliv/s" : "ns/publish",
                "min",
                "max",
                block ? "lost" : "dropped",
                "CPU ns/msg",
                "csw/1k msgs",
                "herald publish vs it",
                "herald Publisher vs it"};
    t.note = block ? "vs it = herald's deliveries/s / its deliveries/s (> 1: herald faster); "
                     "ZeroMQ PUB drops at its high-water mark: its rate counts what arrived; CPU "
                     "ns/msg and csw/1k msgs = process CPU time and context switches per message "
                     "received (medians; diagnostics, no target; the Go program's own process)"
                   : "vs it = its ns/publish / herald's (> 1: herald faster); dropped = share of "
                     "deliveries refused because a queue was full (ZeroMQ: lost at its high-water "
                     "mark); CPU ns/msg and csw/1k msgs = per delivery offered (published x "
                     "subscribers)";
    for (std::size_t f = 0; f < fanouts.size(); ++f) {
      std::vector<Stat> st(fan.size());
      std::vector<double> loss(fan.size()), cpu(fan.size()), csw(fan.size());
      for (std::size_t i = 0; i < fan.size(); ++i) {
        if (samples[mi][f][i].empty()) continue;
        std::vector<double> v, l, u, w;
        for (const Outcome& o : samples[mi][f][i]) {
          v.push_back(block ? o.value / 1e6 : o.value);
          l.push_back(o.loss);
          u.push_back(o.cpu_ns);
          w.push_back(o.csw);
        }
        st[i] = summarize(v);
        results.measure("broker", block ? "fan-out, lossless" : "fan-out, dropping",
                        std::to_string(fanouts[f]), fan[i].name,
                        block ? "M deliveries/s" : "ns/publish", block, v);
        loss[i] = summarize(l).median;
        cpu[i] = summarize(u).median;
        csw[i] = summarize(w).median;
      }
      const auto vs = [&](std::size_t h, std::size_t i) {
        return block ? st[h].median / st[i].median : st[i].median / st[h].median;
      };
      for (std::size_t i = 0; i < fan.size(); ++i) {
        if (samples[mi][f][i].empty()) continue;
        t.rows.push_back({std::to_string(fanouts[f]), fan[i].name,
                          fixed(st[i].median, block ? 3 : 1), fixed(st[i].min, block ? 3 : 1),
                          fixed(st[i].max, block ? 3 : 1), fmt::format("{:.1f}%", 100 * loss[i]),
                          fixed(cpu[i], 0), fixed(csw[i], 1), ratio(vs(kHeraldPublish, i)),
                          ratio(vs(kHeraldPublisher, i))});
      }
      const auto ran = [&](std::size_t i) { return i < fan.size() && !samples[mi][f][i].empty(); };
      if (!block || !ran(kHeraldPublish) || !ran(kHeraldPublisher)) continue;
      for (std::size_t h : {kHeraldPublish, kHeraldPublisher}) {
        // Records the goal "herald / peer >= target" and returns the printed verdict.
        const auto goal = [&](std::size_t peer_index, double target) {
          const double r = vs(h, peer_index);
          results.goal("broker",
                       fmt::format("fan-out {} lossless deliveries/s, {} / {}", fanouts[f],
                                   fan[h].name, fan[peer_index].name),
                       r, fmt::format(">= {}x", target), r >= target);
          return verdict(r >= target);
        };
        std::string line = fmt::format("fan-out {:>2}: {}", fanouts[f], fan[h].name);
        if (ran(kGo)) {  // the headline peer first, in the results file too
          const char* v = goal(kGo, 3);
          line += fmt::format(" / Go = {:.2f}x (>= 3: {});", vs(h, kGo), v);
        }
        if (ran(kReference)) {
          const char* v = goal(kReference, 3);
          line += fmt::format(" / C++ reference = {:.2f}x (>= 3: {});", vs(h, kReference), v);
        }
        if (ran(kZmq) && ran(kZmqNoDrop)) {
          const char* v = goal(kZmq, 1);
          const char* v_nodrop = goal(kZmqNoDrop, 1);
          line +=
              fmt::format(" / ZeroMQ = {:.2f}x (>= 1: {}); / ZeroMQ NODROP = {:.2f}x (>= 1: {})",
                          vs(h, kZmq), v, vs(h, kZmqNoDrop), v_nodrop);
        }
        targets.push_back(line);
      }
      // Handler subscriptions on a pool: >= 2x the Go broker, and never below herald's own pull
      // path (with the same Publisher) at 64 subscribers.
      if (ran(kHandlers)) {
        std::string line = fmt::format("fan-out {:>2}: {}", fanouts[f], fan[kHandlers].name);
        if (ran(kGo)) {
          const double r = vs(kHandlers, kGo);
          results.goal("broker",
                       fmt::format("fan-out {} lossless deliveries/s, {} / {}", fanouts[f],
                                   fan[kHandlers].name, fan[kGo].name),
                       r, ">= 2x", r >= 2);
          line += fmt::format(" / Go = {:.2f}x (>= 2: {});", r, verdict(r >= 2));
        }
        if (fanouts[f] == 64) {
          const double r = vs(kHandlers, kHeraldPublisher);
          results.goal("broker",
                       fmt::format("fan-out 64 lossless deliveries/s, {} / herald Publisher (pull)",
                                   fan[kHandlers].name),
                       r, ">= 1x", r >= 1);
          line += fmt::format(" / herald pull = {:.2f}x (>= 1: {})", r, verdict(r >= 1));
        }
        targets.push_back(line);
      }
    }
    tables.push_back(std::move(t));
  }

  // Round trip table.
  if (wanted("roundtrip")) {
    Table t;
    t.title =
        "Round trip, ping/pong topics (A publishes ping, B answers on pong): ns per round "
        "trip, lower is better";
    t.header = {"threads",
                "contender",
                "ns/round trip",
                "min",
                "max",
                "herald publish vs it",
                "vs BoundedQueue ping-pong"};
    t.note =
        "vs it = its ns / herald publish's ns (> 1: herald faster); vs BoundedQueue "
        "ping-pong = its ns / the two bare queues' ns (the goal: herald <= 2); pinned = B on "
        "CPU 0, A on CPU 1; the Go broker runs unpinned only";
    for (std::size_t pl = 0; pl < placements.size(); ++pl) {
      std::vector<Stat> st(trip.size());
      for (std::size_t i = 0; i < trip.size(); ++i) {
        if (trip_samples[pl][i].empty()) continue;
        st[i] = summarize(trip_samples[pl][i]);
        results.measure("broker", "round trip (ping/pong topics)", std::string(placement_names[pl]),
                        trip[i].name, "ns/round trip", false, trip_samples[pl][i]);
      }
      for (std::size_t i = 0; i < trip.size(); ++i) {
        if (trip_samples[pl][i].empty()) continue;
        t.rows.push_back({std::string(placement_names[pl]), trip[i].name, fixed(st[i].median, 0),
                          fixed(st[i].min, 0), fixed(st[i].max, 0),
                          ratio(st[i].median / st[0].median),
                          ratio(st[i].median / st[kTripQueue].median)});
      }
      if (trip_samples[pl][kTripQueue].empty()) continue;
      for (std::size_t h : {std::size_t{0}, std::size_t{1}}) {
        if (trip_samples[pl][h].empty()) continue;
        const double r = st[h].median / st[kTripQueue].median;
        results.goal("broker",
                     fmt::format("round trip {}, {} / herald BoundedQueue ping-pong",
                                 placement_names[pl], trip[h].name),
                     r, "<= 2x", r <= 2);
        targets.push_back(
            fmt::format("round trip {}: {} / BoundedQueue ping-pong = {:.2f} (<= 2: "
                        "{})",
                        placement_names[pl], trip[h].name, r, verdict(r <= 2)));
      }
    }
    tables.push_back(std::move(t));
  }

  // No-subscriber table.
  if (wanted("nosub")) {
    Table t;
    t.title =
        "Publish to a topic nobody subscribes to (one subscription elsewhere): thread CPU "
        "ns/publish, lower is better";
    t.header = {"contender", "ns/publish", "min", "max"};
    t.note = "3 samples per repetition; the goal: <= 15 ns, cheap enough to leave in hot code";
    for (std::size_t i = 0; i < nosub.size(); ++i) {
      const Stat st = summarize(nosub_samples[i]);
      results.measure("broker", "publish, no subscriber", "", nosub[i].name, "ns/publish", false,
                      nosub_samples[i]);
      t.rows.push_back({nosub[i].name, fmt::format("{:.1f}", st.median),
                        fmt::format("{:.1f}", st.min), fmt::format("{:.1f}", st.max)});
      results.goal("broker", fmt::format("publish with no subscriber, {}: ns", nosub[i].name),
                   st.median, "<= 15", st.median <= 15);
      targets.push_back(fmt::format("no subscriber: {} = {:.1f} ns (<= 15: {})", nosub[i].name,
                                    st.median, verdict(st.median <= 15)));
    }
    tables.push_back(std::move(t));
  }

  // Wildcard table.
  if (wanted("wildcard")) {
    Table t;
    t.title =
        "Wildcard publish, 3 matching wildcard subscriptions among many non-matching ones: "
        "thread CPU ns/publish, lower is better";
    t.header = {"non-matching", "contender",       "ns/publish", "min",
                "max",          "reference vs it", "vs own 100"};
    t.note =
        "reference vs it = C++ reference ns / its ns (> 1: faster than the reference); vs own 100 "
        "= its ns / its ns at 100 non-matching subscriptions (flat: about 1); 3 samples per "
        "repetition; the uncached row publishes to 8192 distinct topics (more than herald's "
        "4096-route cache), so every publish matches in the trie; Go: the publishing goroutine's "
        "OS thread (locked), the subscriber goroutines catch up between batches";
    std::vector<std::vector<Stat>> st(sizes.size(), std::vector<Stat>(wild.size()));
    for (std::size_t s = 0; s < sizes.size(); ++s)
      for (std::size_t i = 0; i < wild.size(); ++i)
        if (!wild_samples[s][i].empty()) {
          st[s][i] = summarize(wild_samples[s][i]);
          results.measure("broker", "wildcard publish", std::to_string(sizes[s]), wild[i].name,
                          "ns/publish", false, wild_samples[s][i]);
        }
    const std::size_t ref = wild.size() - 1;  // the C++ reference design, last
    for (std::size_t s = 0; s < sizes.size(); ++s) {
      for (std::size_t i = 0; i < wild.size(); ++i) {
        if (wild_samples[s][i].empty()) continue;
        t.rows.push_back(
            {std::to_string(sizes[s]), wild[i].name, fmt::format("{:.1f}", st[s][i].median),
             fmt::format("{:.1f}", st[s][i].min), fmt::format("{:.1f}", st[s][i].max),
             ratio(st[s][ref].median / st[s][i].median), ratio(st[s][i].median / st[0][i].median)});
      }
    }
    for (std::size_t i = 0; i < wild.size() && sizes.size() > 1; ++i) {
      if (wild[i].name.rfind("herald", 0) != 0) continue;
      if (wild_samples.front()[i].empty() || wild_samples.front()[ref].empty()) continue;
      const double growth = st.back()[i].median / st.front()[i].median;
      results.goal("broker",
                   fmt::format("wildcard publish flat in non-matching subscriptions, {}: ns at "
                               "{} / ns at {}",
                               wild[i].name, sizes.back(), sizes.front()),
                   growth, "<= 1.5", growth <= 1.5);
      targets.push_back(
          fmt::format("wildcard: {} ns/publish at {} / at {} non-matching = "
                      "{:.2f} (flat, <= 1.5: {}); reference grows {:.1f}x",
                      wild[i].name, sizes.back(), sizes.front(), growth, verdict(growth <= 1.5),
                      st.back()[ref].median / st.front()[ref].median));
    }
    tables.push_back(std::move(t));
  }

  for (const Table& t : tables)
    print_text(t);
  fmt::print("load average at end: {}\n", first_line("/proc/loadavg", ""));
  fmt::print("targets (DESIGN.md; ratios within this run):\n");
  for (const auto& line : targets)
    fmt::print("  {}\n", line);

  if (g_failed) fmt::print(stderr, "a contender delivered wrong results\n");
  return g_failed ? 1 : 0;
}
