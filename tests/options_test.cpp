// Issue 12, item 6 (and 10: queue-group names): every option is validated when it is given, with
// a std::invalid_argument whose message names the field; a duration that cannot be represented is
// clamped or rejected, never converted with undefined behaviour. Public API only.
#include <herald/bounded_queue.hpp>
#include <herald/broker.hpp>
#include <herald/policy.hpp>
#include <herald/subscription.hpp>
#include <herald/worker_pool.hpp>

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <typeinfo>
#include <vector>

#include "catch.hpp"
#include "process_support.hpp"

using namespace std::chrono_literals;
using herald::Broker;
using herald::Message;
using herald::Overflow;
using herald::SubscribeOptions;

namespace {

/// How a call with a bad value ended.
struct Verdict {
  bool threw_invalid_argument = false;
  std::string what;  // the message, or a description of what happened instead
};

/// Calls `f` here and reports how it ended.
Verdict attempt(const std::function<void()>& f) {
  Verdict v;
  try {
    f();
    v.what = "accepted (no exception)";
  } catch (const std::invalid_argument& e) {
    v.threw_invalid_argument = true;
    v.what = e.what();
  } catch (const std::exception& e) {
    v.what =
        std::string("threw ") + typeid(e).name() + " instead of std::invalid_argument: " + e.what();
  }
  return v;
}

/// As attempt(), in a child process: on 8ab127c some bad values reach operator new with an
/// absurd size, which the sanitizers' operator new reports as a fatal out-of-memory instead of
/// throwing std::bad_alloc. The child reports back; a crash is a verdict too.
Verdict attempt_isolated(const std::function<void()>& f) {
  const auto r = herald_process::run_isolated(
      [&](herald_process::ChildLog& log) {
        Verdict v = attempt(f);
        for (char& c : v.what)
          if (c == '\n') c = ' ';
        log.note(std::string("VERDICT ") + (v.threw_invalid_argument ? "1 " : "0 ") + v.what);
      },
      std::chrono::seconds(30));
  Verdict v;
  const auto at = r.output.find("note: VERDICT ");
  if (at == std::string::npos) {
    v.what = r.verdict() + "\n" + r.head(8);
    return v;
  }
  const auto begin = at + 14;
  const auto end = r.output.find('\n', begin);
  v.threw_invalid_argument = r.output[begin] == '1';
  v.what = r.output.substr(begin + 2, end == std::string::npos ? end : end - begin - 2);
  return v;
}

/// Checks that `f` throws std::invalid_argument whose message names `field`.
void expect_rejected(const std::string& label, const std::string& field,
                     const std::function<void()>& f) {
  const Verdict v = attempt_isolated(f);
  INFO(label << " -> " << v.what);
  CHECK(v.threw_invalid_argument);
  if (v.threw_invalid_argument) CHECK(v.what.find(field) != std::string::npos);
}

/// Checks that `f` does not throw (a sane value must stay accepted).
void expect_accepted(const std::string& label, const std::function<void()>& f) {
  const Verdict v = attempt_isolated(f);
  INFO(label << " -> " << v.what);
  CHECK(v.what == "accepted (no exception)");
}

/// Subscribes with `o` on a broker of its own; if subscribe throws, checks first that nothing
/// was registered.
void subscribe_pull(const SubscribeOptions& o) {
  Broker<int> broker;
  try {
    (void)broker.subscribe("t", o);
  } catch (...) {
    if (broker.stats().subscriptions != 0) throw std::logic_error("registered, then threw");
    throw;
  }
}

void subscribe_handler(const SubscribeOptions& o) {
  herald::WorkerPool pool(1, 8);
  Broker<int> broker;
  try {
    (void)broker.subscribe(
        "t", [](const Message<int>&) {}, pool, o);
  } catch (...) {
    if (broker.stats().subscriptions != 0) throw std::logic_error("registered, then threw");
    throw;
  }
}

/// Subscribes a handler with `h` on a broker of its own, as subscribe_pull.
void subscribe_handler_with(const herald::HandlerOptions<int>& h) {
  Broker<int> broker;
  try {
    (void)broker.subscribe(
        "t", [](const Message<int>&) {}, herald::inline_executor, {}, h);
  } catch (...) {
    if (broker.stats().subscriptions != 0) throw std::logic_error("registered, then threw");
    throw;
  }
}

/// `s` with control bytes shown as \xNN, for labels.
std::string printable(const std::string& s) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      out += "\\x";
      out += hex[u >> 4];
      out += hex[u & 15];
    } else {
      out += c;
    }
  }
  return out;
}

constexpr std::size_t kTwoTo57 = std::size_t{1} << 57;
constexpr std::size_t kMax = std::numeric_limits<std::size_t>::max();

}  // namespace

TEST_CASE("SubscribeOptions: every nonsense value is rejected by name, and nothing is registered",
          "[options][item6]") {
  // Each bad value is tried for a pull subscription and for a handler subscription, each in a
  // child process (see attempt_isolated).
  const auto both = [](const std::string& label, const std::string& field,
                       const SubscribeOptions& o) {
    expect_rejected(label + " (pull)", field, [&] { subscribe_pull(o); });
    expect_rejected(label + " (handler)", field, [&] { subscribe_handler(o); });
  };

  both("capacity 0", "capacity", {.capacity = 0});
  both("capacity 2^57", "capacity", {.capacity = kTwoTo57});
  both("capacity SIZE_MAX", "capacity", {.capacity = kMax});
  both("capacity SIZE_MAX/2 + 2 (its bit_ceil overflows)", "capacity", {.capacity = kMax / 2 + 2});
  both("overflow Overflow(4)", "overflow", {.overflow = static_cast<Overflow>(4)});
  both("overflow Overflow(42)", "overflow", {.overflow = static_cast<Overflow>(42)});
  both("overflow Overflow(255)", "overflow", {.overflow = static_cast<Overflow>(255)});
  both("block_timeout -1 ns", "block_timeout",
       {.overflow = Overflow::block, .block_timeout = -1ns});
  both("block_timeout nanoseconds::min()", "block_timeout",
       {.overflow = Overflow::block, .block_timeout = std::chrono::nanoseconds::min()});
  both("disconnect_after 0 under Overflow::disconnect", "disconnect_after",
       {.overflow = Overflow::disconnect, .disconnect_after = 0});
  both("priority Priority(3)", "priority", {.priority = static_cast<herald::Priority>(3)});
  both("priority Priority(255)", "priority", {.priority = static_cast<herald::Priority>(255)});
  for (const char* name : {" ", "a b", "\t", "a\nb", "a\x01", ".", "a..b", ".a", "a."}) {
    SubscribeOptions o;
    o.queue_group = name;
    both("queue_group '" + printable(name) + "'", "queue_group", o);
  }

  // What stays accepted: the documented ranges.
  expect_accepted("capacity 1", [] { subscribe_pull({.capacity = 1}); });
  expect_accepted("capacity 1 << 16", [] { subscribe_pull({.capacity = 1 << 16}); });
  expect_accepted("queue_group 'workers.eu-1'",
                  [] { subscribe_pull({.queue_group = "workers.eu-1"}); });
  expect_accepted("block_timeout 0 (try once)",
                  [] { subscribe_pull({.overflow = Overflow::block, .block_timeout = 0ns}); });
}

TEST_CASE("subscribe rejects a capacity it could never allocate before allocating anything",
          "[options][item6]") {
  // Whatever the maximum is, a capacity just above it is rejected by name and the maximum itself
  // is not an allocation of exabytes. 8ab127c has no such constant: capacities up to 2^57
  // (BoundedQueue's internal limit for a Message cell) go to operator new.
  const Verdict v = attempt_isolated([] { subscribe_pull({.capacity = kTwoTo57}); });
  INFO("capacity 2^57 -> " << v.what);
  CHECK(v.threw_invalid_argument);
}

TEST_CASE("RetryPolicy and HandlerOptions: nonsense values are rejected by name",
          "[options][retry][item6]") {
  const auto with_retry = [](const herald::RetryPolicy& retry) {
    subscribe_handler_with({.retry = retry});
  };
  expect_rejected("initial_backoff -1 ms", "initial_backoff",
                  [&] { with_retry({.max_attempts = 3, .initial_backoff = -1ms}); });
  expect_rejected("initial_backoff nanoseconds::min()", "initial_backoff", [&] {
    with_retry({.max_attempts = 3, .initial_backoff = std::chrono::nanoseconds::min()});
  });
  expect_rejected("max_backoff -1 ms", "max_backoff",
                  [&] { with_retry({.max_attempts = 3, .max_backoff = -1ms}); });
  expect_rejected("max_backoff 1 ms < initial_backoff 10 ms", "max_backoff", [&] {
    with_retry({.max_attempts = 3, .initial_backoff = 10ms, .max_backoff = 1ms});
  });
}

TEST_CASE(
    "HandlerOptions: a breaker mode, recheck or dedup window out of range is rejected by name",
    "[options][breaker][dedup]") {
  const auto with = subscribe_handler_with;
  const auto key = [](const Message<int>& m) { return static_cast<std::uint64_t>(*m); };
  expect_rejected("when_open WhenOpen(2)", "when_open",
                  [&] { with({.when_open = static_cast<herald::WhenOpen>(2)}); });
  expect_rejected("breaker_recheck 0", "breaker_recheck", [&] { with({.breaker_recheck = 0ns}); });
  expect_rejected("breaker_recheck -1 ms", "breaker_recheck",
                  [&] { with({.breaker_recheck = -1ms}); });
  expect_rejected("dedup.max_count 0", "dedup.max_count",
                  [&] { with({.dedup = {.key = key, .max_count = 0}}); });
  expect_rejected("dedup.max_count 2^31 + 1", "dedup.max_count",
                  [&] { with({.dedup = {.key = key, .max_count = (std::size_t{1} << 31) + 1}}); });
  expect_rejected("dedup.max_age 0", "dedup.max_age",
                  [&] { with({.dedup = {.key = key, .max_age = 0ns}}); });
  expect_rejected("dedup.max_age -1 s", "dedup.max_age",
                  [&] { with({.dedup = {.key = key, .max_age = -1s}}); });
  expect_accepted("dedup of one key for 1 ns",
                  [&] { with({.dedup = {.key = key, .max_count = 1, .max_age = 1ns}}); });
  expect_accepted("no dedup key: the window is not looked at",
                  [&] { with({.dedup = {.max_count = 0}}); });
}

TEST_CASE("max_attempts 0 is rejected by name, or clamped to one attempt as documented",
          "[options][retry][item6]") {
  Broker<int> broker;
  int calls = 0;
  herald::HandlerOptions<int> h;
  h.retry.max_attempts = 0;
  const Verdict v = attempt([&] {
    auto sub = broker.subscribe(
        "t",
        [&](const Message<int>&) {
          ++calls;
          throw std::runtime_error("fails");
        },
        herald::inline_executor, {}, h);
    broker.publish("t", 1);
  });
  INFO("max_attempts 0 -> " << v.what << "; handler calls: " << calls);
  if (v.threw_invalid_argument) {
    CHECK(v.what.find("max_attempts") != std::string::npos);
  } else {
    CHECK(calls == 1);  // the clamp: one attempt, no retry
  }
}

TEST_CASE("retry backoff never overflows, never goes negative and never exceeds max_backoff",
          "[options][retry][item6]") {
  // If subscribe accepts these (it should not, see above), the delays it asks for must still be
  // sane. On 8ab127c: nanoseconds::min() overflows `previous * 3` (UBSan: signed integer
  // overflow), and negative values are handed to the sleep hook as negative delays.
  struct Case {
    const char* label;
    herald::RetryPolicy retry;
  };
  const Case cases[] = {
      {"initial_backoff nanoseconds::min()",
       {.max_attempts = 4, .initial_backoff = std::chrono::nanoseconds::min()}},
      {"initial_backoff -1 ms", {.max_attempts = 4, .initial_backoff = -1ms}},
      {"max_backoff -1 ms", {.max_attempts = 4, .initial_backoff = 1ms, .max_backoff = -1ms}},
      {"max_backoff < initial_backoff",
       {.max_attempts = 4, .initial_backoff = 10ms, .max_backoff = 1ms}},
  };
  for (const Case& c : cases) {
    Broker<int> broker;
    std::vector<std::chrono::nanoseconds> delays;
    herald::HandlerOptions<int> h;
    h.retry = c.retry;
    h.sleep = [&](std::chrono::nanoseconds d) { delays.push_back(d); };
    try {
      auto sub = broker.subscribe(
          "t", [](const Message<int>&) { throw std::runtime_error("fails"); },
          herald::inline_executor, {}, h);
      broker.publish("t", 1);
    } catch (const std::invalid_argument&) {
      continue;  // rejected: fine
    }
    for (const auto d : delays) {
      INFO(c.label << ": asked to sleep " << d.count() << " ns");
      CHECK(d >= std::chrono::nanoseconds::zero());
      CHECK(d <= std::max(c.retry.max_backoff, c.retry.initial_backoff));
    }
  }
}

TEST_CASE("WorkerPool: 0 and absurd thread counts or queue capacities are rejected by name",
          "[options][pool][item6]") {
  expect_rejected("threads 0", "threads", [] { herald::WorkerPool p(0, 8); });
  expect_rejected("queue_capacity 0", "capacity", [] { herald::WorkerPool p(1, 0); });
  expect_rejected("threads SIZE_MAX", "threads", [] { herald::WorkerPool p(kMax, 8); });
  expect_rejected("threads 2^40", "threads", [] { herald::WorkerPool p(std::size_t{1} << 40, 8); });
  expect_rejected("queue_capacity SIZE_MAX", "capacity", [] { herald::WorkerPool p(1, kMax); });
  expect_rejected("queue_capacity 2^57", "capacity", [] { herald::WorkerPool p(1, kTwoTo57); });
  expect_rejected("max_bypass 0", "max_bypass",
                  [] { herald::WorkerPool p(1, 8, {.max_bypass = 0}); });
  expect_accepted("max_bypass 1", [] { herald::WorkerPool p(1, 8, {.max_bypass = 1}); });
  expect_rejected("submit at Priority(3)", "priority", [] {
    herald::WorkerPool p(1, 8);
    p.submit([] {}, static_cast<herald::Priority>(3));
  });
}

TEST_CASE("BoundedQueue refuses a capacity it could never allocate before trying",
          "[options][queue][item6]") {
  // BoundedQueue documents std::length_error for an absurd capacity; either that or
  // std::invalid_argument is fine, but not an attempt to allocate it: on 8ab127c its limit is
  // PTRDIFF_MAX / sizeof(cell) / 2, so 2^57 ints (2^61 bytes) go to operator new.
  for (const std::size_t capacity : {kTwoTo57, kMax}) {
    const Verdict v = attempt_isolated([capacity] {
      try {
        herald::BoundedQueue<int> q(capacity);
      } catch (const std::length_error& e) {  // documented: as good as invalid_argument here
        throw std::invalid_argument(std::string("(length_error) ") + e.what());
      }
    });
    INFO("capacity " << capacity << " -> " << v.what);
    CHECK(v.threw_invalid_argument);
    CHECK(v.what.find("capacity") != std::string::npos);
  }
}

TEST_CASE("a NaN timeout is rejected or treated as zero, never converted to an integer",
          "[options][durations][item6]") {
  // On 8ab127c a NaN passes both of Deadline::after's range checks and reaches
  // std::chrono::ceil<nanoseconds>: a float->integer conversion of NaN, undefined behaviour
  // (UBSan: -fsanitize=float-cast-overflow, which g++ does not enable with =undefined).
  const std::chrono::duration<double> nan(std::numeric_limits<double>::quiet_NaN());
  Broker<int> broker;
  auto sub = broker.subscribe("t");
  const auto ok = [](const Verdict& v) {
    return v.threw_invalid_argument || v.what == "accepted (no exception)";
  };
  {
    const Verdict v = attempt([&] { CHECK_FALSE(sub.receive_for(nan)); });
    INFO("Subscription::receive_for(NaN s) -> " << v.what);
    CHECK(ok(v));
  }
  {
    auto h = broker.subscribe(
        "h", [](const Message<int>&) {}, herald::inline_executor);
    const Verdict v = attempt([&] { (void)h.wait_idle(nan); });
    INFO("HandlerSubscription::wait_idle(NaN s) -> " << v.what);
    CHECK(ok(v));
  }
  {
    herald::BoundedQueue<int> q(1);
    const Verdict pop = attempt([&] { CHECK_FALSE(q.pop_for(nan)); });
    INFO("BoundedQueue::pop_for(NaN s) -> " << pop.what);
    CHECK(ok(pop));
    REQUIRE(q.try_push(1));
    const Verdict push = attempt([&] { CHECK_FALSE(q.push_for(2, nan)); });
    INFO("BoundedQueue::push_for(NaN s) -> " << push.what);
    CHECK(ok(push));
  }
}

TEST_CASE("a huge block_timeout waits like forever instead of dropping at once",
          "[options][durations][item6]") {
  // 200 years still fits in nanoseconds; it must mean "wait", never "already expired".
  const auto huge =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::hours(24 * 365 * 200));
  Broker<int> broker;
  auto sub =
      broker.subscribe("t", {.capacity = 1, .overflow = Overflow::block, .block_timeout = huge});
  REQUIRE(broker.publish("t", 0).delivered == 1);
  herald::PublishResult r;
  std::thread publisher([&] { r = broker.publish("t", 1); });
  CHECK(sub.receive());  // makes room; a publisher that gave up at once has dropped already
  publisher.join();
  CHECK(r.dropped == 0);
  CHECK(r.delivered == 1);
}
