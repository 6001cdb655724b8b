// Issue 12, items 3 and 4, and the fault-injection harness: this program replaces the global
// operator new/delete (every form) with one that can fail the K-th allocation from now, and
// sweeps K = 1, 2, 3, ... over subscribe, publish, unsubscribe, close and handler dispatch until
// the operation completes without reaching the fault. Each K runs in a forked child, so that a
// std::terminate (an allocation in a noexcept path) or a hang (a ghost subscription) ends the
// child, not this program; the child checks that the broker is consistent after the failure and
// reports through a pipe. Public API only.
//
// Builds: plain and g++ sanitizers (their runtimes are shared libraries, and the executable's
// operator new takes precedence over theirs). clang links its sanitizer runtimes statically,
// operator new included, so the replacement collides there: CMake leaves this file out of clang
// sanitizer builds.
// The replacement's deletes call free() on what its news got from malloc(); g++ cannot see that
// they pair up once it inlines both into library code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

#include <herald/broker.hpp>
#include <herald/subscription.hpp>
#include <herald/worker_pool.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <new>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "catch.hpp"
#include "process_support.hpp"
#include "test_support.hpp"

// ---------------------------------------------------------------------------------------------
// The switch.

namespace fault {

// Constant-initialised, trivially destructible thread_locals: reading them allocates nothing.
thread_local long t_countdown = 0;  // > 0: the t_countdown-th allocation on this thread fails
thread_local bool t_counting = false;
thread_local long t_count = 0;        // allocations on this thread while counting
thread_local bool t_exempt = false;   // this thread ignores g_countdown
std::atomic<long> g_countdown{0};     // > 0: the g_countdown-th allocation on a thread not exempt
std::atomic<bool> g_hit{false};       // a fault was injected since the last arm
std::atomic<bool> g_announce{false};  // write a line to stderr when injecting (children only)

inline void announce() noexcept {
  if (!g_announce.load(std::memory_order_relaxed)) return;
  static const char line[] = "note: fault injected: operator new throws std::bad_alloc\n";
  const ssize_t ignored = ::write(STDERR_FILENO, line, sizeof line - 1);
  (void)ignored;
}

/// True when this allocation must fail.
inline bool should_fail() noexcept {
  if (t_counting) ++t_count;
  if (t_countdown > 0 && --t_countdown == 0) {
    g_hit.store(true);
    announce();
    return true;
  }
  if (!t_exempt && g_countdown.load(std::memory_order_relaxed) > 0 &&
      g_countdown.fetch_sub(1) == 1) {
    g_hit.store(true);
    announce();
    return true;
  }
  return false;
}

/// Fails the k-th allocation made by this thread while the object lives.
class FailNth {
 public:
  explicit FailNth(long k) noexcept {
    g_hit.store(false);
    t_countdown = k;
  }
  ~FailNth() { t_countdown = 0; }
  FailNth(const FailNth&) = delete;
  FailNth& operator=(const FailNth&) = delete;
  [[nodiscard]] bool hit() const noexcept { return g_hit.load(); }
};

/// Fails the k-th allocation made by any other thread (this one is exempt) while it lives.
class FailNthElsewhere {
 public:
  explicit FailNthElsewhere(long k) noexcept {
    t_exempt = true;
    g_hit.store(false);
    g_countdown.store(k);
  }
  ~FailNthElsewhere() {
    g_countdown.store(0);
    t_exempt = false;
  }
  FailNthElsewhere(const FailNthElsewhere&) = delete;
  FailNthElsewhere& operator=(const FailNthElsewhere&) = delete;
  [[nodiscard]] bool hit() const noexcept { return g_hit.load(); }
};

/// Counts the allocations this thread makes while it lives.
class CountAllocations {
 public:
  CountAllocations() noexcept {
    t_count = 0;
    t_counting = true;
  }
  ~CountAllocations() { t_counting = false; }
  CountAllocations(const CountAllocations&) = delete;
  CountAllocations& operator=(const CountAllocations&) = delete;
  [[nodiscard]] long count() const noexcept { return t_count; }
};

inline void* allocate(std::size_t size) {
  if (should_fail()) throw std::bad_alloc();
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}

inline void* allocate_aligned(std::size_t size, std::align_val_t align) {
  if (should_fail()) throw std::bad_alloc();
  const auto a = static_cast<std::size_t>(align);
  const std::size_t rounded = (size + a - 1) / a * a;  // aligned_alloc wants a multiple
  if (void* p = std::aligned_alloc(a, rounded == 0 ? a : rounded)) return p;
  throw std::bad_alloc();
}

}  // namespace fault

// Every form, nothrow ones included (they report an injected failure as nullptr): a sanitizer
// runtime supplies its own defaults, and memory of one family must not reach the other's delete.
void* operator new(std::size_t size) {
  return fault::allocate(size);
}
void* operator new[](std::size_t size) {
  return fault::allocate(size);
}
void* operator new(std::size_t size, std::align_val_t align) {
  return fault::allocate_aligned(size, align);
}
void* operator new[](std::size_t size, std::align_val_t align) {
  return fault::allocate_aligned(size, align);
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  try {
    return fault::allocate(size);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  try {
    return fault::allocate(size);
  } catch (...) {
    return nullptr;
  }
}
void* operator new(std::size_t size, std::align_val_t align, const std::nothrow_t&) noexcept {
  try {
    return fault::allocate_aligned(size, align);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t size, std::align_val_t align, const std::nothrow_t&) noexcept {
  try {
    return fault::allocate_aligned(size, align);
  } catch (...) {
    return nullptr;
  }
}
#include "free_deletes.hpp"  // every operator delete: std::free

// ---------------------------------------------------------------------------------------------
// The sweep.

using namespace std::chrono_literals;
using herald::Broker;
using herald::CloseReason;
using herald::HandlerSubscription;
using herald::Message;
using herald::Overflow;
using herald::SubscribeOptions;
using herald::Subscription;
using herald_process::ChildLog;
using herald_process::ChildResult;
using herald_test::Counted;

namespace {

#if defined(HERALD_SANITIZED_BUILD)
constexpr auto kChildLimit = 20s;
#else
constexpr auto kChildLimit = 5s;
#endif

/// Threads of this process now.
std::size_t thread_count() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/task"))
    ++n;
  return n;
}

/// Threads the child had before its scenario started.
std::size_t g_threads_at_start = 0;

/// One K of a sweep that did not end cleanly.
struct Finding {
  long k = 0;
  std::string verdict;
  std::string output;
};

/// The result of sweeping one operation.
struct Sweep {
  std::string name;
  long faults = 0;  // how many K injected a fault (the operation's allocations)
  bool converged = false;
  std::vector<Finding> findings;

  [[nodiscard]] std::string report() const {
    std::ostringstream o;
    o << name << ": " << faults << " allocation(s) failed in turn, " << findings.size()
      << " ended badly" << (converged ? "" : " (the sweep did not converge)") << "\n";
    for (const Finding& f : findings) {
      o << "  K=" << f.k << ": " << f.verdict << "\n";
      std::istringstream lines(f.output);
      std::string line;
      int shown = 0;
      while (std::getline(lines, line) && shown < 14) {
        if (line.rfind("note: fault injected", 0) == 0) continue;
        o << "    | " << line << "\n";
        ++shown;
      }
    }
    return o.str();
  }
};

/// Runs `scenario(k, log)` in a child for k = 1, 2, ... until a child completes without a fault
/// being injected (the operation needs fewer than k allocations).
Sweep sweep(const std::string& name, const std::function<void(long, ChildLog&)>& scenario,
            long max_k = 300) {
  Sweep s{name, 0, false, {}};
  for (long k = 1; k <= max_k; ++k) {
    const ChildResult r = herald_process::run_isolated(
        [&](ChildLog& log) {
          fault::g_announce = true;
          herald_process::install_terminate_backtrace();
          g_threads_at_start = thread_count();
          scenario(k, log);
        },
        kChildLimit);
    const bool hit = r.output.find("note: fault injected") != std::string::npos;
    if (hit) ++s.faults;
    if (!r.ok()) s.findings.push_back({k, r.verdict(), r.head(16)});
    if (!hit) {
      s.converged = true;
      break;
    }
  }
  return s;
}

/// The sweeps of one test case: their reports, and how many ended badly (a finding, or a sweep
/// that did not converge). check() prints and asserts, on the test thread.
struct Sweeps {
  std::string report;
  std::size_t bad = 0;

  void add(const Sweep& s) {
    report += s.report();
    bad += s.findings.size() + (s.converged ? 0 : 1);
  }
  void check() const {
    std::cout << "\n" << report;
    INFO(report);
    CHECK(bad == 0);
  }
};

/// The identities of SubscriptionStats, checked in a child.
template <class S>
void check_identities(ChildLog& log, const std::string& who, const S& s) {
  log.check(s.offered == s.delivered + s.dropped,
            who + ": offered " + std::to_string(s.offered) + " != delivered " +
                std::to_string(s.delivered) + " + dropped " + std::to_string(s.dropped));
  log.check(s.delivered == s.received + s.evicted + s.queue_depth,
            who + ": delivered " + std::to_string(s.delivered) + " != received " +
                std::to_string(s.received) + " + evicted " + std::to_string(s.evicted) +
                " + queue_depth " + std::to_string(s.queue_depth));
}

/// After the scenario's objects are gone: every payload was destroyed (a thread that is not
/// joined by anything, such as a ghost's dedicated thread, may take a moment).
void check_no_leak(ChildLog& log) {
  const auto until = std::chrono::steady_clock::now() + 2s;
  while ((Counted::live.load() != 0 || thread_count() > g_threads_at_start) &&
         std::chrono::steady_clock::now() < until)
    std::this_thread::yield();
  log.check(Counted::live.load() == 0,
            "leak: " + std::to_string(Counted::live.load()) + " payload(s) still alive");
  const std::size_t threads = thread_count();
  log.check(threads <= g_threads_at_start,
            "leak: " + std::to_string(threads - g_threads_at_start) +
                " thread(s) still running after everything was destroyed (blocked for good)");
}

/// The broker is still usable: a fresh subscription gets a fresh message.
template <class T>
void check_usable(ChildLog& log, Broker<T>& broker) {
  auto fresh = broker.subscribe("fresh.check");
  const auto r = broker.publish("fresh.check", T{99});
  log.check(r.delivered == 1, "a fresh subscribe + publish delivered " +
                                  std::to_string(r.delivered) + " instead of 1");
  const auto m = fresh.try_receive();
  log.check(m.has_value(), "the fresh subscription did not receive the message");
}

enum class Kind { pull, inline_handler, pool_handler, thread_handler };

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::pull:
      return "pull";
    case Kind::inline_handler:
      return "handler/inline_executor";
    case Kind::pool_handler:
      return "handler/WorkerPool";
    case Kind::thread_handler:
      return "handler/dedicated_thread";
  }
  return "?";
}

/// A subscription of any kind, owned by the scenario.
struct AnySub {
  std::optional<Subscription<Counted>> pull;
  std::optional<HandlerSubscription<Counted>> handler;
  void reset() {
    pull.reset();
    handler.reset();
  }
  [[nodiscard]] bool engaged() const { return pull || handler; }
  void unsubscribe() {
    if (pull) pull->unsubscribe();
    if (handler) handler->unsubscribe();
  }
  [[nodiscard]] CloseReason close_reason() const {
    return pull ? pull->close_reason() : handler->close_reason();
  }
};

/// Subscribes `kind` to `pattern`; handler calls are counted in `calls`.
void subscribe_kind(AnySub& out, Broker<Counted>& broker, herald::WorkerPool& pool, Kind kind,
                    const std::string& pattern, const SubscribeOptions& options,
                    std::stop_token stop, std::atomic<int>& calls) {
  auto handler = [&calls](const Message<Counted>&) { ++calls; };
  switch (kind) {
    case Kind::pull:
      out.pull.emplace(broker.subscribe(pattern, options, std::move(stop)));
      return;
    case Kind::inline_handler:
      out.handler.emplace(
          broker.subscribe(pattern, handler, herald::inline_executor, options, std::move(stop)));
      return;
    case Kind::pool_handler:
      out.handler.emplace(broker.subscribe(pattern, handler, pool, options, std::move(stop)));
      return;
    case Kind::thread_handler:
      out.handler.emplace(
          broker.subscribe(pattern, handler, herald::dedicated_thread, options, std::move(stop)));
      return;
  }
}

struct Variant {
  Kind kind;
  bool with_stop;
  bool with_group;
  [[nodiscard]] std::string name() const {
    return std::string(kind_name(kind)) + (with_stop ? ", stop_token" : "") +
           (with_group ? ", queue group" : "");
  }
};

std::vector<Variant> all_variants() {
  std::vector<Variant> v;
  for (Kind k : {Kind::pull, Kind::inline_handler, Kind::pool_handler, Kind::thread_handler}) {
    for (bool stop : {false, true}) {
      for (bool group : {false, true})
        v.push_back({k, stop, group});
    }
  }
  return v;
}

// A queue-group name long enough that (pattern + ' ' + name) needs the heap.
const std::string kGroup = "billing-workers-of-region-eu";

// ---- subscribe --------------------------------------------------------------------------------

void subscribe_scenario(long k, ChildLog& log, const Variant& v) {
  Counted::live = 0;
  {
    herald::WorkerPool pool(1, 16);
    Broker<Counted> broker;
    auto witness = broker.subscribe("t.x", {.capacity = 8});
    std::stop_source stop;
    std::atomic<int> calls{0};
    SubscribeOptions options{
        .capacity = 1,
        .overflow = v.kind == Kind::pull ? Overflow::block : Overflow::drop_incoming};
    if (v.with_group) options.queue_group = kGroup;
    AnySub sub;
    bool threw = false;
    {
      fault::FailNth f(k);
      try {
        subscribe_kind(sub, broker, pool, v.kind, "t.*", options,
                       v.with_stop ? stop.get_token() : std::stop_token{}, calls);
      } catch (const std::bad_alloc&) {
        threw = true;
      }
    }
    log.note(threw ? "subscribe threw std::bad_alloc" : "subscribe returned");
    const std::size_t handles = threw ? 1 : 2;
    const std::size_t counted = broker.stats().subscriptions;
    log.check(counted == handles, "the broker counts " + std::to_string(counted) +
                                      " subscription(s) while " + std::to_string(handles) +
                                      " handle(s) exist");
    log.note(
        "step: publish twice to t.x (a ghost Overflow::block subscription of capacity 1 "
        "blocks the second publish for ever)");
    const auto r1 = broker.publish("t.x", Counted{1});
    if (sub.pull) (void)sub.pull->try_receive();  // the real one has room again
    const auto r2 = broker.publish("t.x", Counted{2});
    log.note("step: both publishes returned");
    const std::size_t expect = threw ? 1 : 2;
    log.check(r1.matched == expect && r2.matched == expect,
              "publishes matched " + std::to_string(r1.matched) + " and " +
                  std::to_string(r2.matched) + " subscription(s), expected " +
                  std::to_string(expect) + (threw ? " (a ghost is routed)" : ""));
    if (threw && v.kind == Kind::inline_handler) {
      log.check(calls.load() == 0, "the handler of the failed subscribe ran " +
                                       std::to_string(calls.load()) + " time(s)");
    }
    if (!threw && sub.handler) {
      log.check(sub.handler->wait_idle(5s), "wait_idle timed out");
      const auto delivered = sub.handler->stats().delivered;
      log.check(static_cast<std::uint64_t>(calls.load()) == delivered,
                "the handler ran " + std::to_string(calls.load()) + " time(s) for " +
                    std::to_string(delivered) + " delivered message(s)");
    }
    if (v.with_stop) {
      log.note("step: request_stop");
      stop.request_stop();
      if (!threw) {
        log.check(sub.close_reason() == CloseReason::stopped, "not closed by the stop request");
      }
    }
    check_identities(log, "witness", witness.stats());
    check_usable(log, broker);
    log.note("step: tear down");
    sub.reset();
  }
  check_no_leak(log);
}

// ---- publish ----------------------------------------------------------------------------------

enum class PublishHow { first_publish, cached_route, publisher };

/// The publish sweep's payload: a size of its own, so that its message envelopes come from a
/// block pool nothing else in this program has filled (a recycled envelope needs no operator
/// new, and the sweep would not reach the allocation that follows the sequence number).
struct Tagged {
  explicit Tagged(std::uint64_t v) : c(v) {}
  Counted c;
  std::array<std::uint64_t, 5> spare{};
};

void publish_scenario(long k, ChildLog& log, PublishHow how) {
  Counted::live = 0;
  {
    herald::WorkerPool pool(1, 16);
    Broker<Tagged> broker;
    // A long topic (shared string), every policy, a queue group, handlers on the pool and inline.
    const std::string topic = "orders.eu-central.created";
    auto all = broker.subscribe("orders.>", {.capacity = 16});
    auto oldest =
        broker.subscribe("orders.*.created", {.capacity = 2, .overflow = Overflow::drop_oldest});
    auto blocking =
        broker.subscribe("orders.eu-central.*", {.capacity = 16, .overflow = Overflow::block});
    auto g1 = broker.subscribe("orders.>", {.capacity = 4, .queue_group = kGroup});
    auto g2 = broker.subscribe("orders.>", {.capacity = 4, .queue_group = kGroup});
    std::atomic<int> pool_calls{0};
    std::atomic<int> inline_calls{0};
    auto on_pool = broker.subscribe("orders.>", [&](const Message<Tagged>&) { ++pool_calls; }, pool,
                                    {.capacity = 16});
    auto on_inline = broker.subscribe(
        "orders.*.*", [&](const Message<Tagged>&) { ++inline_calls; }, herald::inline_executor);
    auto pub = broker.publisher(topic);
    int ok = 0;
    if (how != PublishHow::first_publish) {
      how == PublishHow::publisher ? pub.publish(Tagged{0}) : broker.publish(topic, Tagged{0});
      ++ok;
    }
    bool threw = false;
    {
      fault::FailNth f(k);
      try {
        if (how == PublishHow::publisher) {
          pub.publish(Tagged{1});
        } else {
          broker.publish(topic, Tagged{1});
        }
      } catch (const std::bad_alloc&) {
        threw = true;
      }
    }
    log.note(threw ? "publish threw std::bad_alloc" : "publish returned");
    if (!threw) ++ok;
    broker.publish(topic, Tagged{2});
    ++ok;
    log.check(on_pool.wait_idle(5s), "the pool handler's wait_idle timed out");
    // Every subscriber saw each successful publish once, with consecutive sequence numbers.
    std::vector<std::uint64_t> seqs;
    while (auto m = all.try_receive())
      seqs.push_back(m->sequence());
    log.check(static_cast<int>(seqs.size()) == ok,
              "the catch-all subscriber got " + std::to_string(seqs.size()) + " message(s), " +
                  std::to_string(ok) + " publish(es) succeeded");
    // The broker numbers its publishes 1, 2, 3, ...; a failed publish must not take a number.
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      if (seqs[i] != i + 1) {
        log.fail("successful publish #" + std::to_string(i + 1) + " has sequence number " +
                 std::to_string(seqs[i]) + " (a failed publish consumed one)");
        break;
      }
    }
    log.check(pool_calls.load() == ok && inline_calls.load() == ok,
              "handlers ran " + std::to_string(pool_calls.load()) + " (pool) and " +
                  std::to_string(inline_calls.load()) + " (inline) time(s) for " +
                  std::to_string(ok) + " successful publish(es)");
    const auto b = broker.stats();
    log.check(b.published == static_cast<std::uint64_t>(ok),
              "BrokerStats.published " + std::to_string(b.published) + " for " +
                  std::to_string(ok) + " successful publish(es)");
    std::uint64_t delivered = 0;
    std::uint64_t dropped = 0;
    const auto add = [&](const std::string& who, const auto& s) {
      check_identities(log, who, s);
      delivered += s.delivered;
      dropped += s.dropped;
    };
    add("catch-all", all.stats());
    add("drop_oldest", oldest.stats());
    add("block", blocking.stats());
    add("group member 1", g1.stats());
    add("group member 2", g2.stats());
    add("pool handler", on_pool.stats());
    add("inline handler", on_inline.stats());
    log.check(b.delivered == delivered && b.dropped == dropped,
              "broker totals (delivered " + std::to_string(b.delivered) + ", dropped " +
                  std::to_string(b.dropped) + ") differ from the subscriptions' sums (" +
                  std::to_string(delivered) + ", " + std::to_string(dropped) + ")");
    check_usable(log, broker);
  }
  check_no_leak(log);
}

// ---- unsubscribe, stop, handle destruction -----------------------------------------------------

enum class UnsubscribeHow { unsubscribe, destructor, stop_request };

void unsubscribe_scenario(long k, ChildLog& log, const Variant& v, UnsubscribeHow how) {
  Counted::live = 0;
  {
    herald::WorkerPool pool(1, 16);
    Broker<Counted> broker;
    auto witness = broker.subscribe("t.x", {.capacity = 8});
    std::stop_source stop;
    std::atomic<int> calls{0};
    SubscribeOptions options{.capacity = 4};
    if (v.with_group) options.queue_group = kGroup;
    AnySub sub;
    subscribe_kind(sub, broker, pool, v.kind, "t.*", options,
                   how == UnsubscribeHow::stop_request ? stop.get_token() : std::stop_token{},
                   calls);
    broker.publish("t.x", Counted{1});
    if (sub.handler) log.check(sub.handler->wait_idle(5s), "wait_idle timed out");
    log.note("step: the operation under test (noexcept: a throw here is std::terminate)");
    {
      fault::FailNth f(k);
      switch (how) {
        case UnsubscribeHow::unsubscribe:
          sub.unsubscribe();
          break;
        case UnsubscribeHow::destructor:
          sub.reset();
          break;
        case UnsubscribeHow::stop_request:
          stop.request_stop();
          break;
      }
    }
    log.note("step: returned");
    const std::size_t counted = broker.stats().subscriptions;
    log.check(counted == 1, "the broker still counts " + std::to_string(counted) +
                                " subscription(s) after unsubscribe (1 expected)");
    const auto r = broker.publish("t.x", Counted{2});
    log.check(r.matched == 1, "a publish after unsubscribe matched " + std::to_string(r.matched));
    check_identities(log, "witness", witness.stats());
    check_usable(log, broker);
    sub.reset();
  }
  check_no_leak(log);
}

// ---- close and ~Broker ------------------------------------------------------------------------

void close_scenario(long k, ChildLog& log, bool by_destructor) {
  Counted::live = 0;
  {
    herald::WorkerPool pool(1, 16);
    auto broker = std::make_unique<Broker<Counted>>();
    std::atomic<int> calls{0};
    std::vector<AnySub> subs(4);
    std::stop_source stop;
    int i = 0;
    for (Kind kind : {Kind::pull, Kind::inline_handler, Kind::pool_handler, Kind::thread_handler}) {
      SubscribeOptions options{.capacity = 4};
      if (i % 2 == 1) options.queue_group = kGroup;
      subscribe_kind(subs[static_cast<std::size_t>(i)], *broker, pool, kind, "t.*", options,
                     stop.get_token(), calls);
      ++i;
    }
    broker->publish("t.x", Counted{1});
    log.note("step: the operation under test (noexcept: a throw here is std::terminate)");
    {
      fault::FailNth f(k);
      if (by_destructor) {
        broker.reset();
      } else {
        broker->close();
      }
    }
    log.note("step: returned");
    for (const AnySub& s : subs) {
      log.check(s.close_reason() == CloseReason::broker_closed,
                std::string("a subscription is ") + herald::to_string(s.close_reason()).data() +
                    " after close");
    }
    if (broker) {
      log.check(broker->publish("t.x", Counted{2}).closed, "publish after close is not closed");
      log.check(broker->stats().subscriptions == 0, "subscriptions counted after close");
    }
    for (AnySub& s : subs)
      s.reset();
  }
  check_no_leak(log);
}

// ---- handler dispatch ---------------------------------------------------------------------------

void dispatch_scenario(long k, ChildLog& log, Kind kind, bool with_dead_letters) {
  Counted::live = 0;
  {
    herald::WorkerPool pool(1, 16);
    Broker<herald::DeadLetter<Counted>> dlq;
    auto letters = dlq.subscribe("$DLQ.>", {.capacity = 64});
    Broker<Counted> broker;
    constexpr int kMessages = 6;
    std::atomic<int> handled{0};
    std::atomic<int> errors{0};
    herald::HandlerOptions<Counted> options;
    options.retry = {.max_attempts = 2, .initial_backoff = 1us, .max_backoff = 1us};
    options.sleep = [](std::chrono::nanoseconds) {};
    options.on_error = [&](const Message<Counted>&, std::exception_ptr) { ++errors; };
    if (with_dead_letters) options.dead_letters = &dlq;
    // Odd values always fail, with a message long enough to need the heap.
    auto handler = [&](const Message<Counted>& m) {
      if (m->value % 2 == 1) {
        throw std::runtime_error("handler failed on an odd value, as this test wants it to");
      }
      ++handled;
    };
    std::optional<HandlerSubscription<Counted>> h;
    const SubscribeOptions sub_options{.capacity = 16};
    switch (kind) {
      case Kind::pool_handler:
        h.emplace(broker.subscribe("jobs.*", handler, pool, sub_options, options));
        break;
      case Kind::thread_handler:
        h.emplace(
            broker.subscribe("jobs.*", handler, herald::dedicated_thread, sub_options, options));
        break;
      default:
        h.emplace(
            broker.subscribe("jobs.*", handler, herald::inline_executor, sub_options, options));
        break;
    }
    log.note("step: publish (faults on the handler's thread; inline: on the publishing thread)");
    bool publish_threw = false;
    bool idle = false;
    {
      // Nothing but the operation allocates on an armed thread: no logging in here.
      std::optional<fault::FailNth> here;
      std::optional<fault::FailNthElsewhere> elsewhere;
      if (kind == Kind::inline_handler) {
        here.emplace(k);
      } else {
        elsewhere.emplace(k);
      }
      for (std::uint64_t i = 0; i < kMessages; ++i) {
        try {
          broker.publish("jobs.a", Counted{i});
        } catch (const std::bad_alloc&) {
          publish_threw = true;
        }
      }
      idle = h->wait_idle(5s);
    }
    log.note(publish_threw ? "a publish threw std::bad_alloc" : "every publish returned");
    log.check(idle, "wait_idle timed out: a message was accepted and not handled");
    const auto s = h->stats();
    check_identities(log, "handler", s);
    if (!publish_threw) {
      log.check(s.delivered == kMessages, "delivered " + std::to_string(s.delivered));
      log.check(s.received == kMessages, "received " + std::to_string(s.received));
    }
    std::uint64_t in_dlq = 0;
    while (letters.try_receive())
      ++in_dlq;
    log.check(in_dlq == s.dead_lettered, "dead_lettered " + std::to_string(s.dead_lettered) +
                                             " but the dead-letter topic holds " +
                                             std::to_string(in_dlq));
    h.reset();
  }
  check_no_leak(log);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Item 4: paths that cannot fail must not allocate.

TEST_CASE(
    "unsubscribe, a queue-group member's destructor, a stop request, close and ~Broker "
    "allocate nothing",
    "[fault][noexcept][item4]") {
  // They are noexcept: an allocation in them is a std::terminate waiting for memory to run out.
  // On 8ab127c: remove() builds a std::string key for queue-group members (pattern + ' ' +
  // name) and close() reserves a vector.
  herald::WorkerPool pool(1, 16);
  std::atomic<int> calls{0};
  const auto measure = [&](Kind kind, bool group, const char* how) {
    auto broker = std::make_unique<Broker<Counted>>();
    std::stop_source stop;
    SubscribeOptions options{.capacity = 4};
    if (group) options.queue_group = kGroup;
    AnySub sub;
    subscribe_kind(sub, *broker, pool, kind, "t.*", options, stop.get_token(), calls);
    auto other = broker->subscribe("u");
    broker->publish("t.x", Counted{1});
    if (sub.handler) REQUIRE(sub.handler->wait_idle(5s));
    long n = 0;
    const std::string op = how;
    {
      fault::CountAllocations count;
      if (op == "unsubscribe()") {
        sub.unsubscribe();
      } else if (op == "destructor") {
        sub.reset();
      } else if (op == "request_stop()") {
        stop.request_stop();
      } else if (op == "close()") {
        broker->close();
      } else {
        broker.reset();
      }
      n = count.count();
    }
    INFO(kind_name(kind) << (group ? " in a queue group" : "") << ": " << op << " allocated " << n
                         << " time(s)");
    CHECK(n == 0);
  };
  for (Kind kind : {Kind::pull, Kind::inline_handler, Kind::pool_handler, Kind::thread_handler}) {
    for (bool group : {false, true}) {
      for (const char* how :
           {"unsubscribe()", "destructor", "request_stop()", "close()", "~Broker"})
        measure(kind, group, how);
    }
  }
}

TEST_CASE("an allocation failure in unsubscribe, close or ~Broker does not terminate the program",
          "[fault][noexcept][item4]") {
  // The same paths, with their first allocation failing: on 8ab127c std::terminate ("terminate
  // called after throwing an instance of 'std::bad_alloc'") ends the child.
  const auto unsub = herald_process::run_isolated([](ChildLog& log) {
    fault::g_announce = true;
    herald_process::install_terminate_backtrace();
    g_threads_at_start = thread_count();
    unsubscribe_scenario(1, log, {Kind::pull, false, true}, UnsubscribeHow::unsubscribe);
  });
  INFO("unsubscribe() of a queue-group member, first allocation failing: " << unsub.verdict()
                                                                           << "\n"
                                                                           << unsub.head());
  CHECK(unsub.ok());
  const auto close = herald_process::run_isolated([](ChildLog& log) {
    fault::g_announce = true;
    herald_process::install_terminate_backtrace();
    g_threads_at_start = thread_count();
    close_scenario(1, log, false);
  });
  INFO("close(), first allocation failing: " << close.verdict() << "\n" << close.head());
  CHECK(close.ok());
  const auto destroy = herald_process::run_isolated([](ChildLog& log) {
    fault::g_announce = true;
    herald_process::install_terminate_backtrace();
    g_threads_at_start = thread_count();
    close_scenario(1, log, true);
  });
  INFO("~Broker, first allocation failing: " << destroy.verdict() << "\n" << destroy.head());
  CHECK(destroy.ok());
}

// ---------------------------------------------------------------------------------------------
// Item 3: subscribe is all-or-nothing.

TEST_CASE(
    "subscribe is all-or-nothing when an allocation fails: nothing counted, routed or "
    "running",
    "[fault][subscribe][item3]") {
  // Every variant: pull and handler (inline, pool, dedicated thread), with and without a
  // stop_token and a queue group. After a std::bad_alloc from subscribe, the broker counts only
  // the witness, a publish reaches only the witness (a ghost Overflow::block subscription of
  // capacity 1 would block the second publish: the child is killed and reported as a HANG), the
  // ghost's handler never runs, and no payload leaks.
  Sweeps all;
  for (const Variant& v : all_variants()) {
    const Sweep s = sweep("subscribe (" + v.name() + ")",
                          [&](long k, ChildLog& log) { subscribe_scenario(k, log, v); });
    all.add(s);
  }
  all.check();
}

// ---------------------------------------------------------------------------------------------
// The rest of the harness: publish, unsubscribe, close, dispatch.

TEST_CASE("publish under allocation failure leaves every subscriber and counter consistent",
          "[fault][publish]") {
  Sweeps all;
  const std::pair<PublishHow, const char*> hows[] = {
      {PublishHow::first_publish, "Broker::publish, route not cached yet"},
      {PublishHow::cached_route, "Broker::publish, route cached"},
      {PublishHow::publisher, "Publisher::publish"}};
  for (const auto& [how, name] : hows) {
    const Sweep s =
        sweep(name, [how = how](long k, ChildLog& log) { publish_scenario(k, log, how); });
    all.add(s);
  }
  all.check();
}

TEST_CASE("unsubscribe, handle destruction and stop requests survive allocation failure",
          "[fault][unsubscribe][item4]") {
  Sweeps all;
  const std::pair<UnsubscribeHow, const char*> hows[] = {
      {UnsubscribeHow::unsubscribe, "unsubscribe()"},
      {UnsubscribeHow::destructor, "handle destructor"},
      {UnsubscribeHow::stop_request, "request_stop()"}};
  for (const auto& [how, how_name] : hows) {
    for (const Variant& v : all_variants()) {
      if (v.with_stop) continue;  // the stop_request case always has one
      const Sweep s =
          sweep(std::string(how_name) + " (" + v.name() + ")",
                [&v, how = how](long k, ChildLog& log) { unsubscribe_scenario(k, log, v, how); });
      all.add(s);
    }
  }
  all.check();
}

TEST_CASE("close and ~Broker survive allocation failure", "[fault][close][item4]") {
  Sweeps all;
  for (const bool by_destructor : {false, true}) {
    const Sweep s =
        sweep(by_destructor ? "~Broker" : "close()",
              [by_destructor](long k, ChildLog& log) { close_scenario(k, log, by_destructor); });
    all.add(s);
  }
  all.check();
}

TEST_CASE("handler dispatch, retries and dead letters survive allocation failure",
          "[fault][dispatch]") {
  Sweeps all;
  for (Kind kind : {Kind::inline_handler, Kind::pool_handler, Kind::thread_handler}) {
    for (const bool dlq : {false, true}) {
      const Sweep s =
          sweep(std::string("dispatch (") + kind_name(kind) + (dlq ? ", dead letters" : "") + ")",
                [kind, dlq](long k, ChildLog& log) { dispatch_scenario(k, log, kind, dlq); });
      all.add(s);
    }
  }
  all.check();
}

TEST_CASE("the fault switch works in this build (operator new is ours)", "[fault][harness]") {
  // If a sanitizer runtime's operator new won over ours, every sweep above would pass vacuously.
  bool threw = false;
  {
    fault::FailNth f(1);
    try {
      auto p = std::make_unique<int>(1);
      (void)p;
    } catch (const std::bad_alloc&) {
      threw = true;
    }
  }
  CHECK(threw);
  long n = 0;
  {
    fault::CountAllocations c;
    auto s = std::make_shared<std::string>(100, 'x');
    n = c.count();
  }
  CHECK(n == 2);  // the control block with the string, and the string's buffer
}
