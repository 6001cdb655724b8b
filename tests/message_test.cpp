// Message<T> and the envelope pool behind it (detail/block_pool.hpp): blocks are reused, the
// pool's bound holds, payload lifetimes balance, and envelopes freed on other threads come back.
#include <herald/broker.hpp>
#include <herald/detail/block_pool.hpp>
#include <herald/message.hpp>

#include <atomic>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

using herald::Message;
using herald_test::Counted;

namespace {

// A block size no other test or type uses, so this pool starts empty.
struct Odd {
  char bytes[1000];
};
using OddPool = herald::detail::BlockPool<sizeof(Odd), alignof(Odd)>;

}  // namespace

TEST_CASE("a freed block is handed out again", "[message][pool]") {
  OddPool& pool = OddPool::instance();
  void* a = pool.allocate();
  pool.deallocate(a);
  void* b = pool.allocate();
  CHECK(b == a);
  pool.deallocate(b);
}

TEST_CASE("the pool keeps at most kCapacity blocks; the rest go back to the system",
          "[message][pool]") {
  OddPool& pool = OddPool::instance();
  const std::size_t n = OddPool::kCapacity + 100;
  std::vector<void*> blocks;
  for (std::size_t i = 0; i < n; ++i)
    blocks.push_back(pool.allocate());
  std::set<void*> distinct(blocks.begin(), blocks.end());
  CHECK(distinct.size() == n);
  for (void* b : blocks)
    pool.deallocate(b);  // the last 100 do not fit: freed (ASan/LSan would see a leak otherwise)
  std::set<void*> again;
  for (std::size_t i = 0; i < OddPool::kCapacity; ++i)
    again.insert(pool.allocate());
  for (void* b : again)
    CHECK(distinct.count(b) == 1);  // all from the ring
  for (void* b : again)
    pool.deallocate(b);
}

TEST_CASE("messages keep their fields and release the payload exactly once", "[message]") {
  herald_test::CountedGuard guard;
  {
    auto m = Message<Counted>::make("orders.eu", 7, 3, 42u);
    const auto copy = m;  // NOLINT: a copy shares the envelope
    CHECK(m.topic() == "orders.eu");
    CHECK(m->value == 42);
    CHECK(m.sequence() == 7);
    CHECK(m.origin() == 3);
    CHECK(&copy.value() == &m.value());
    CHECK(Counted::live == 1);
  }
  CHECK(Counted::live == 0);
}

TEST_CASE("envelopes freed by other threads are reused without loss or double use",
          "[message][pool][stress]") {
  herald_test::CountedGuard guard;
  constexpr int kThreads = 2;
  const int per_thread = herald_test::scaled(50000);
  std::atomic<bool> wrong{false};
  {
    std::vector<std::jthread> threads;
    std::vector<std::vector<Message<Counted>>> handoff(kThreads);
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        // Make messages, check them, free half here and leave half to the main thread.
        for (int i = 0; i < per_thread; ++i) {
          auto m = Message<Counted>::make("t", static_cast<std::uint64_t>(i), 0,
                                          static_cast<std::uint64_t>(t * per_thread + i));
          if (m->value != static_cast<std::uint64_t>(t * per_thread + i) ||
              m.sequence() != static_cast<std::uint64_t>(i)) {
            wrong = true;
          }
          if (i % 2 == 0) handoff[static_cast<std::size_t>(t)].push_back(std::move(m));
        }
      });
    }
    threads.clear();  // join
    CHECK(Counted::live == kThreads * ((per_thread + 1) / 2));
    handoff.clear();  // freed on this thread: back into the pool
  }
  CHECK_FALSE(wrong);
  CHECK(Counted::live == 0);
}

TEST_CASE("long topics are shared with the route, short ones copied; both outlive the broker",
          "[message]") {
  const std::string long_topic = "orders.europe.created.priority";  // > kInlineTopicBytes
  REQUIRE(long_topic.size() > herald::detail::kInlineTopicBytes);
  std::optional<Message<int>> a, b, c, d;
  {
    herald::Broker<int> broker;
    auto sub = broker.subscribe(">", {.capacity = 16});
    auto publisher = broker.publisher(long_topic);
    broker.publish(long_topic, 1);
    publisher.publish(2);
    broker.publish("a.b", 3);
    broker.publish("a.b", 4);
    a = sub.try_receive();
    b = sub.try_receive();
    c = sub.try_receive();
    d = sub.try_receive();
  }  // broker, routes and subscription gone: the messages keep what they refer to
  REQUIRE((a && b && c && d));
  CHECK(a->topic() == long_topic);
  CHECK(b->topic() == long_topic);
  CHECK(&a->topic() == &b->topic());  // one string for the route, not one per message
  CHECK(c->topic() == "a.b");
  CHECK(d->topic() == "a.b");
  CHECK(&c->topic() != &d->topic());
  CHECK(**a + **b + **c + **d == 10);
}

TEST_CASE("headers: set, add, get, erase, and the NATS rules for names and values",
          "[message][headers]") {
  herald::Headers h{{"trace-id", "abc"}, {"k", "1"}};
  h.add("k", "2");
  CHECK(h.size() == 3);
  CHECK(h.get("k") == std::optional<std::string_view>("1"));
  CHECK(h.get_all("k") == std::vector<std::string_view>{"1", "2"});
  h.set("k", "3");
  CHECK(h.get_all("k") == std::vector<std::string_view>{"3"});
  CHECK(h.erase("k") == 1);
  CHECK_FALSE(h.contains("k"));
  CHECK(h.get("Trace-Id") == std::nullopt);  // names are case-sensitive, as in NATS
  const herald::Headers before = h;
  for (const char* bad : {"", "a b", "a:b", "caf\xc3\xa9", "tab\t"}) {
    CHECK_THROWS_AS(h.add(bad, "v"), std::invalid_argument);
  }
  for (const char* bad : {"line\r\nbreak", "\rfirst", "last\n", "lone\rcr", "lone\nlf"}) {
    CHECK_THROWS_AS(h.set("ok", bad), std::invalid_argument);
  }
  CHECK_NOTHROW(herald::Headers{}.add("ok", "tab\tand unicode caf\xc3\xa9 are fine"));
  CHECK_THROWS_AS(h.add(std::string(257, 'n'), "v"), std::invalid_argument);
  CHECK_THROWS_AS(h.add("big", std::string(64 * 1024 + 1, 'v')), std::invalid_argument);
  CHECK(h == before);  // a refused field changes nothing
}

TEST_CASE("headers travel with a published message to every subscriber; none cost nothing",
          "[message][headers]") {
  herald::Broker<std::string> broker;
  auto a = broker.subscribe("orders.*");
  auto b = broker.subscribe("orders.>");
  broker.publish("orders.eu", "x", {.headers = {{"trace-id", "t1"}}});
  broker.publish("orders.us", std::string("y"));
  auto publisher = broker.publisher("orders.asia");
  publisher.publish("z", {.headers = {{"reply", "inbox.1"}}});
  for (auto* sub : {&a, &b}) {
    auto m1 = sub->try_receive();
    auto m2 = sub->try_receive();
    auto m3 = sub->try_receive();
    REQUIRE((m1 && m2 && m3));
    CHECK(m1->headers().get("trace-id") == std::optional<std::string_view>("t1"));
    CHECK(m2->headers().empty());
    CHECK(m3->headers().get("reply") == std::optional<std::string_view>("inbox.1"));
  }
  const auto m = Message<int>::make_with({{"a", "b"}}, "t", 1, 0, 5);
  CHECK(m.headers().size() == 1);
  CHECK(*m == 5);
}
