// TopicIndex<V>: inserts, erases and matches against a brute-force oracle over herald::matches,
// pruning under churn, very long topics, exception safety and exact value lifetimes.
#include <herald/topic_index.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "catch.hpp"

using herald::TopicIndex;

namespace {

#if defined(HERALD_SANITIZED_BUILD)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

/// An entry that knows its own pattern, so a visit names exactly which entry was found.
struct Entry {
  std::string pattern;
  int tag = 0;
  friend bool operator==(const Entry&, const Entry&) = default;
  friend bool operator<(const Entry& a, const Entry& b) {
    return a.pattern != b.pattern ? a.pattern < b.pattern : a.tag < b.tag;
  }
};

template <class V>
std::vector<V> collect(const TopicIndex<V>& index, std::string_view topic) {
  std::vector<V> out;
  index.match(topic, [&](const V& v) { out.push_back(v); });
  return out;
}

std::vector<Entry> sorted_matches(const TopicIndex<Entry>& index, std::string_view topic) {
  auto out = collect(index, topic);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<Entry> brute_force(const std::vector<Entry>& entries, std::string_view topic) {
  std::vector<Entry> out;
  for (const Entry& e : entries) {
    if (herald::matches(topic, e.pattern)) out.push_back(e);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::uint64_t seed_from_env() {
  if (const char* s = std::getenv("HERALD_SEED")) return std::strtoull(s, nullptr, 10);
  return std::random_device{}();
}

/// Concatenates; also sidesteps g++ 12's false -Wrestrict on `"literal" + std::string`.
template <class... Parts>
std::string cat(const Parts&... parts) {
  std::string s;
  (s.append(std::string_view(parts)), ...);
  return s;
}

std::string repeat_tokens(std::string_view token, std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    if (i != 0) s += '.';
    s += token;
  }
  return s;
}

}  // namespace

TEST_CASE("match finds exactly the entries whose pattern selects the topic", "[topic_index]") {
  const std::vector<std::string> patterns = {
      "orders.eu.created", "orders.*.created", "orders.>", "*.eu.*", ">",   "*",
      "orders.*",          "orders.eu.*.x",    "a*.b",     "*b",     "a.>", "a.*.>",
      "payments",          "orders.eu",        "*.*.*.*"};
  const std::vector<std::string> topics = {"orders.eu.created",
                                           "orders.us.created",
                                           "orders",
                                           "orders.eu",
                                           "orders.eu.created.x",
                                           "payments",
                                           "a*.b",
                                           "*b",
                                           "a.b",
                                           "a.b.c",
                                           "x.eu.y",
                                           "b"};
  TopicIndex<Entry> index;
  std::vector<Entry> entries;
  for (std::size_t i = 0; i < patterns.size(); ++i) {
    entries.push_back({patterns[i], static_cast<int>(i)});
    index.insert(patterns[i], entries.back());
  }
  CHECK(index.size() == patterns.size());
  for (const auto& topic : topics) {
    INFO("topic " << topic);
    CHECK(sorted_matches(index, topic) == brute_force(entries, topic));
  }
  CHECK(sorted_matches(index, "orders.eu.created").size() == 5);
}

TEST_CASE("a topic matched by several overlapping patterns visits each entry once",
          "[topic_index]") {
  TopicIndex<int> index;
  const std::vector<std::string> patterns = {"a.b", "a.*", "*.b", "*.*", ">", "a.>", "*.>"};
  for (std::size_t i = 0; i < patterns.size(); ++i)
    index.insert(patterns[i], static_cast<int>(i));
  std::vector<int> seen(patterns.size(), 0);
  index.match("a.b", [&](const int& v) { ++seen[static_cast<std::size_t>(v)]; });
  CHECK(seen == std::vector<int>(patterns.size(), 1));
}

TEST_CASE("duplicate entries are kept, each visited, and erased one at a time", "[topic_index]") {
  TopicIndex<int> index;
  index.insert("a.*", 7);
  index.insert("a.*", 7);
  index.insert("a.*", 8);
  CHECK(index.size() == 3);
  CHECK(collect(index, "a.x").size() == 3);
  CHECK(index.erase("a.*", 7));
  auto left = collect(index, "a.x");
  std::sort(left.begin(), left.end());
  CHECK(left == std::vector<int>{7, 8});
  CHECK(index.erase("a.*", 7));
  CHECK_FALSE(index.erase("a.*", 7));
  CHECK(collect(index, "a.x") == std::vector<int>{8});
  CHECK(index.erase("a.*", 8));
  CHECK(index.empty());
  CHECK(index.node_count() == 0);
}

TEST_CASE("erase of an entry that is not there returns false and changes nothing",
          "[topic_index]") {
  TopicIndex<int> index;
  index.insert("a.b.c", 1);
  const std::size_t nodes = index.node_count();
  CHECK(nodes == 3);
  CHECK_FALSE(index.erase("a.b.c", 2));  // wrong value
  CHECK_FALSE(index.erase("a.b", 1));    // an inner node, no entry of its own
  CHECK_FALSE(index.erase("a.b.c.d", 1));
  CHECK_FALSE(index.erase("a.*.c", 1));  // wildcards in erase are pattern text, not matching
  CHECK_FALSE(index.erase("x", 1));
  CHECK_FALSE(index.erase("a..c", 1));  // invalid pattern
  CHECK_FALSE(index.erase("", 1));
  CHECK(index.size() == 1);
  CHECK(index.node_count() == nodes);
  CHECK(collect(index, "a.b.c") == std::vector<int>{1});
}

TEST_CASE("inserting an invalid pattern throws InvalidTopic and changes nothing", "[topic_index]") {
  TopicIndex<int> index;
  index.insert("a.b", 1);
  for (const std::string_view bad : {"", ".", "a.", ".a", "a..b", "a. b", "a.>.b", ">.a", "a\tb"}) {
    INFO("pattern '" << bad << "'");
    CHECK_THROWS_AS(index.insert(bad, 2), herald::InvalidTopic);
  }
  CHECK(index.size() == 1);
  CHECK(index.node_count() == 2);
  CHECK(collect(index, "a.b") == std::vector<int>{1});
}

TEST_CASE("an invalid topic matches nothing and does not throw", "[topic_index]") {
  TopicIndex<int> index;
  index.insert(">", 1);
  index.insert("*", 2);
  index.insert("a.*", 3);
  for (const std::string_view bad : {"", ".", "a.", "a..b", "a.*", "a.>", "*", ">", "a b"}) {
    INFO("topic '" << bad << "'");
    CHECK_NOTHROW(index.match(bad, [](const int&) { FAIL("visited"); }));
  }
}

TEST_CASE("'>' needs at least one token and '*' exactly one", "[topic_index]") {
  TopicIndex<int> index;
  index.insert("a.>", 1);
  index.insert("a.*", 2);
  CHECK(collect(index, "a").empty());
  CHECK(collect(index, "a.b.c") == std::vector<int>{1});
  auto both = collect(index, "a.b");
  std::sort(both.begin(), both.end());
  CHECK(both == std::vector<int>{1, 2});
}

TEST_CASE("randomized inserts, erases and matches agree with a brute-force scan", "[topic_index]") {
  const std::uint64_t seed = seed_from_env();
  std::fprintf(stderr, "topic_index randomized test: HERALD_SEED=%llu\n",
               static_cast<unsigned long long>(seed));
  INFO("HERALD_SEED=" << seed);
  std::mt19937_64 rng(seed);
  auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
  std::vector<std::string> literals;
  SECTION("three tokens: matches, duplicates and shared prefixes are frequent") {
    literals = {"a", "b", "c"};
  }
  SECTION("forty tokens: node tables outgrow their linear scan and use their index") {
    for (int i = 0; i < 40; ++i)
      literals.push_back(cat("t", std::to_string(i)));
  }
  // One token in 50 is invalid on purpose: an empty token or whitespace in a pattern (plus the
  // '>' that lands mid-pattern), a wildcard or an empty token in a topic.
  auto make = [&](bool pattern) {
    const std::size_t n = 1 + pick(5);
    std::string s;
    for (std::size_t i = 0; i < n; ++i) {
      if (i != 0) s += '.';
      if (pick(50) == 0) {
        s += pattern ? (pick(2) == 0 ? "" : "a b") : (pick(2) == 0 ? "" : "*");
      } else if (pattern && pick(4) == 0) {
        s += pick(2) == 0 ? "*" : ">";
      } else if (!pattern && pick(10) == 0) {
        s += "zz";  // in no pattern
      } else {
        s += literals[pick(literals.size())];
      }
    }
    return s;
  };

  TopicIndex<Entry> index;
  std::vector<Entry> oracle;
  const int steps = kSanitized ? 6000 : 40000;
  for (int step = 0; step < steps; ++step) {
    INFO("step " << step);
    const std::size_t op = pick(100);
    // Inserts outnumber erases while the index is small and trail them once it is large, so it
    // keeps emptying and refilling: pruning is exercised all the way back to the root.
    const std::size_t insert_below = oracle.size() < 150 ? 50 : 25;
    if (op < insert_below) {
      Entry e{make(true), static_cast<int>(pick(3))};
      if (herald::is_valid_pattern(e.pattern)) {
        index.insert(e.pattern, e);
        oracle.push_back(e);
      } else {
        REQUIRE_THROWS_AS(index.insert(e.pattern, e), herald::InvalidTopic);
      }
    } else if (op < 75) {
      Entry e = !oracle.empty() && pick(2) == 0 ? oracle[pick(oracle.size())]
                                                : Entry{make(true), static_cast<int>(pick(3))};
      const auto it = std::find(oracle.begin(), oracle.end(), e);
      const bool there = it != oracle.end();
      if (there) oracle.erase(it);
      REQUIRE(index.erase(e.pattern, e) == there);
    } else {
      const std::string topic = make(false);
      INFO("topic '" << topic << "'");
      REQUIRE(sorted_matches(index, topic) == brute_force(oracle, topic));
    }
    REQUIRE(index.size() == oracle.size());
    if (oracle.empty()) REQUIRE(index.node_count() == 0);
  }
  for (const Entry& e : oracle)
    REQUIRE(index.erase(e.pattern, e));
  CHECK(index.empty());
  CHECK(index.node_count() == 0);
}

TEST_CASE("churn: inserting then erasing 100k patterns leaves no node behind", "[topic_index]") {
  const std::size_t n = kSanitized ? 20000 : 100000;
  TopicIndex<std::size_t> index;
  const std::size_t initial_nodes = index.node_count();
  std::vector<std::string> patterns;
  patterns.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::string p = cat("t", std::to_string(i % 97), ".u", std::to_string(i % 1009), ".");
    p += i % 10 == 0 ? std::string("*") : cat("v", std::to_string(i));
    if (i % 10 == 5) p += ".>";
    patterns.push_back(std::move(p));
  }
  for (int round = 0; round < 3; ++round) {
    INFO("round " << round);
    for (std::size_t i = 0; i < n; ++i)
      index.insert(patterns[i], i);
    CHECK(index.size() == n);
    std::size_t hits = 0;
    index.match("t5.u5.v5.x", [&](const std::size_t& v) { hits += v == 5 ? 1 : 0; });
    CHECK(hits == 1);
    // Erase in an order unrelated to the insertion order so pruning meets every shape.
    for (std::size_t k = 0; k < n; ++k) {
      const std::size_t i = (k * 7919) % n;
      REQUIRE(index.erase(patterns[i], i));
    }
    CHECK(index.empty());
    CHECK(index.node_count() == initial_nodes);
  }
}

TEST_CASE("topics and patterns of more than 100 tokens match correctly", "[topic_index]") {
  TopicIndex<int> index;
  const std::size_t n = 150;
  std::vector<std::string> tokens;
  for (std::size_t i = 0; i < n; ++i)
    tokens.push_back(cat("k", std::to_string(i)));
  auto join = [](const std::vector<std::string>& t) {
    std::string s;
    for (const auto& x : t)
      s += cat(s.empty() ? "" : ".", x);
    return s;
  };
  const std::string topic = join(tokens);
  auto with = [&](std::size_t i, const char* tok) {
    auto t = tokens;
    t[i] = tok;
    return join(t);
  };
  index.insert(topic, 1);
  index.insert(with(77, "*"), 2);
  index.insert(with(n - 1, ">"), 3);
  auto prefix = tokens;
  prefix.resize(120);
  prefix.push_back(">");
  index.insert(join(prefix), 4);
  index.insert(with(3, "other"), 5);
  index.insert(topic + ".more", 6);
  auto got = collect(index, topic);
  std::sort(got.begin(), got.end());
  CHECK(got == std::vector<int>{1, 2, 3, 4});
  CHECK(collect(index, with(77, "zz")) == std::vector<int>{2});
}

TEST_CASE("a bushy deep trie matches correctly once more than 32 '*' branches are pending",
          "[topic_index]") {
  // Pattern k is k literal 'a's, a '*', then 'a's up to 100 tokens: along the all-'a' topic every
  // node has both a literal and a '*' child, so 100 wildcard branches wait at once.
  TopicIndex<int> index;
  const std::size_t n = 100;
  for (std::size_t k = 0; k < n; ++k) {
    std::string p = repeat_tokens("a", k);
    p += (k == 0 ? "*" : ".*");
    if (k + 1 < n) p += cat(".", repeat_tokens("a", n - k - 1));
    index.insert(p, static_cast<int>(k));
  }
  auto got = collect(index, repeat_tokens("a", n));
  std::sort(got.begin(), got.end());
  std::vector<int> want(n);
  for (std::size_t k = 0; k < n; ++k)
    want[k] = static_cast<int>(k);
  CHECK(got == want);
}

TEST_CASE("a pattern of 100k tokens inserts, matches, erases and clears without deep recursion",
          "[topic_index]") {
  const std::size_t n = 100000;
  const std::string deep = repeat_tokens("x", n);
  TopicIndex<int> index;
  index.insert(deep, 1);
  index.insert(deep + ".>", 2);
  index.insert(repeat_tokens("*", n), 3);
  CHECK(index.node_count() == 2 * n + 1);
  auto got = collect(index, deep);
  std::sort(got.begin(), got.end());
  CHECK(got == std::vector<int>{1, 3});
  CHECK(index.erase(deep, 1));
  CHECK(index.node_count() == 2 * n + 1);  // deep + ".>" still needs the chain
  CHECK(index.erase(deep + ".>", 2));
  CHECK(index.node_count() == n);
  index.insert(deep, 1);
  index.clear();  // and the destructor of a second deep index below
  CHECK(index.node_count() == 0);
  TopicIndex<int> other;
  other.insert(deep, 1);
}

namespace {

constexpr unsigned kAlive = 0xA11CEu;
constexpr unsigned kDead = 0xDEADu;

/// Counts live objects and notices a second destruction of the same object.
template <bool Assignable>
struct Tracked {
  static inline long live = 0;
  static inline long double_destroyed = 0;
  int id;
  unsigned state = kAlive;

  explicit Tracked(int i) : id(i) { ++live; }
  Tracked(const Tracked& o) : id(o.id) { ++live; }
  Tracked(Tracked&& o) noexcept : id(o.id) { ++live; }
  Tracked& operator=(const Tracked& o) requires Assignable {
    id = o.id;
    return *this;
  }
  Tracked& operator=(Tracked&& o) noexcept requires Assignable {
    id = o.id;
    return *this;
  }
  ~Tracked() {
    if (state != kAlive) ++double_destroyed;
    state = kDead;
    --live;
  }
  friend bool operator==(const Tracked& a, const Tracked& b) { return a.id == b.id; }
};

static_assert(std::is_nothrow_move_assignable_v<Tracked<true>>);
static_assert(!std::is_move_assignable_v<Tracked<false>>);

}  // namespace

TEMPLATE_TEST_CASE("erase, clear and the destructor destroy every value exactly once",
                   "[topic_index]", Tracked<true>, Tracked<false>) {
  using T = TestType;
  const long base = T::live;
  {
    TopicIndex<T> index;
    for (int i = 0; i < 200; ++i) {
      index.insert(i % 3 == 0 ? "a.*" : (i % 3 == 1 ? "a.>" : cat("a.b.", std::to_string(i % 7))),
                   T{i});
    }
    CHECK(T::live - base == 200);
    for (int i = 0; i < 200; i += 2) {
      const std::string p =
          i % 3 == 0 ? "a.*" : (i % 3 == 1 ? "a.>" : cat("a.b.", std::to_string(i % 7)));
      REQUIRE(index.erase(p, T{i}));
    }
    CHECK(T::live - base == 100);
    int visits = 0;
    index.match("a.b", [&](const T&) { ++visits; });
    CHECK(visits == 33 + 34);  // odd ids left: 33 are 3 mod 6 ("a.*"), 34 are 1 mod 6 ("a.>")
    index.clear();
    CHECK(T::live == base);
    CHECK(index.node_count() == 0);
    for (int i = 0; i < 50; ++i)
      index.insert("x.y", T{i});
    CHECK(T::live - base == 50);
  }  // the destructor takes the last 50
  CHECK(T::live == base);
  CHECK(T::double_destroyed == 0);
}

namespace {

/// A value whose move constructor throws when armed, to fail an insert half-way.
struct Fragile {
  static inline bool armed = false;
  int id;
  explicit Fragile(int i) : id(i) {}
  Fragile(const Fragile& o) : id(o.id) {
    if (armed) throw std::runtime_error("copy");
  }
  Fragile(Fragile&& o) : id(o.id) {
    if (armed) throw std::runtime_error("move");
  }
  Fragile& operator=(const Fragile&) = default;
  friend bool operator==(const Fragile& a, const Fragile& b) { return a.id == b.id; }
};

}  // namespace

TEST_CASE("an insert that throws half-way leaves the index as it was", "[topic_index]") {
  TopicIndex<Fragile> index;
  index.insert("a.b", Fragile{1});
  REQUIRE(index.node_count() == 2);
  Fragile::armed = true;
  // A prvalue argument initialises the parameter without a move, so the first move is the one
  // into the node's vector: it fails after the new nodes "c" and "d" were made.
  CHECK_THROWS_AS(index.insert("a.b.c.d", Fragile{2}), std::runtime_error);
  CHECK_THROWS_AS(index.insert("a.b", Fragile{3}), std::runtime_error);
  Fragile::armed = false;
  CHECK(index.size() == 1);
  CHECK(index.node_count() == 2);
  CHECK(collect(index, "a.b.c.d").empty());
  CHECK(collect(index, "a.b").size() == 1);
  CHECK(index.erase("a.b", Fragile{1}));
  CHECK(index.node_count() == 0);
}

TEST_CASE("a throwing visitor propagates and leaves the index unchanged", "[topic_index]") {
  TopicIndex<int> index;
  index.insert("a.*", 1);
  index.insert("a.b", 2);
  CHECK_THROWS_AS(index.match("a.b", [](const int&) { throw std::runtime_error("visit"); }),
                  std::runtime_error);
  CHECK(index.size() == 2);
  CHECK(collect(index, "a.b").size() == 2);
}

TEST_CASE("a moved-from index is empty and the moved-to index keeps every entry", "[topic_index]") {
  TopicIndex<int> a;
  a.insert("a.b", 1);
  a.insert("a.*", 2);
  a.insert(">", 3);
  TopicIndex<int> b(std::move(a));
  CHECK(a.empty());  // documented to be left empty
  CHECK(a.node_count() == 0);
  CHECK(collect(a, "a.b").empty());
  CHECK(b.size() == 3);
  CHECK(collect(b, "a.b").size() == 3);
  // Erasing after the move prunes through the new root (children point at no root).
  CHECK(b.erase("a.b", 1));
  CHECK(b.erase("a.*", 2));
  CHECK(b.node_count() == 1);
  TopicIndex<int> c;
  c.insert("z", 9);
  c = std::move(b);
  CHECK(c.size() == 1);
  CHECK(collect(c, "z") == std::vector<int>{3});  // the old "z" entry went with the assignment
  a.insert("q", 4);
  a.swap(c);
  CHECK(collect(a, "q") == std::vector<int>{3});
  CHECK(collect(c, "q") == std::vector<int>{4});
  CHECK(collect(c, "z").empty());
}

TEST_CASE("raw and shared pointers work as values and are compared by identity", "[topic_index]") {
  auto p1 = std::make_shared<int>(1);
  auto p2 = std::make_shared<int>(1);
  TopicIndex<std::shared_ptr<int>> shared;
  shared.insert("s.*", p1);
  shared.insert("s.*", p2);
  CHECK(p1.use_count() == 2);
  CHECK(shared.erase("s.*", p1));
  CHECK(p1.use_count() == 1);
  CHECK_FALSE(shared.erase("s.*", p1));
  CHECK(p2.use_count() == 2);
  shared.clear();
  CHECK(p2.use_count() == 1);

  int x = 0;
  int y = 0;
  TopicIndex<int*> raw;
  raw.insert("r", &x);
  raw.insert("r", &y);
  CHECK(raw.erase("r", &x));
  CHECK(collect(raw, "r") == std::vector<int*>{&y});
}
