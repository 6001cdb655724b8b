// Topic/pattern syntax and matching: every NATS rule, table-driven.
#include <herald/topic.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <string_view>

#include "catch.hpp"

using herald::is_valid_pattern;
using herald::is_valid_topic;
using herald::matches;

namespace {

struct Validity {
  std::string_view text;
  bool topic;    // valid as a published topic
  bool pattern;  // valid as a subscription pattern
};

// Every syntax rule in DESIGN.md "Topics", both ways.
const Validity kValidity[] = {
    {"a", true, true},
    {"orders.eu.created", true, true},
    {"", false, false},
    {".", false, false},
    {"..", false, false},
    {".a", false, false},
    {"a.", false, false},
    {"a..b", false, false},
    {"a b", false, false},
    {"a\tb", false, false},
    {"a\nb", false, false},
    {"a\rb", false, false},
    {"a\fb", false, false},
    {"a\vb", false, false},
    {" a", false, false},
    {"a ", false, false},
    {"*", false, true},
    {">", false, true},
    {"a.*", false, true},
    {"a.>", false, true},
    {"*.*.*", false, true},
    {"*.>", false, true},
    {">.a", false, false},
    {"a.>.b", false, false},
    {"a.>.>", false, false},
    {"a*", true, true},  // wildcards inside longer tokens are literal characters
    {"*b", true, true},
    {">x", true, true},
    {"a.b>", true, true},
    {"a.**", true, true},
    {"a.>>", true, true},
    {"a.*.>", false, true},
    {"caf\xc3\xa9.men\xc3\xbc", true, true},  // non-ASCII bytes are ordinary characters
    {"\xff.\x80", true, true},
    {"a.*.", false, false},
    {"$SYS.x", true, true},
    {"a-b_c:d/e", true, true},
};

struct Case {
  std::string_view topic;
  std::string_view pattern;
  bool expected;
};

const Case kMatches[] = {
    {"a", "a", true},
    {"a", "b", false},
    {"a.b", "a.b", true},
    {"a.b", "a", false},
    {"a", "a.b", false},
    {"a.b", "a.*", true},
    {"a.b.c", "a.*", false},
    {"a", "a.*", false},
    {"a.b", "*.b", true},
    {"a.b", "*.*", true},
    {"a", "*", true},
    {"a.b", "*", false},
    {"a.b", "a.>", true},
    {"a.b.c", "a.>", true},
    {"a", "a.>", false},  // '>' needs at least one token
    {"a", ">", true},
    {"a.b.c.d", ">", true},
    {"a.b.c", "*.>", true},
    {"a", "*.>", false},
    {"a.b.c", "a.*.>", true},
    {"a.b", "a.*.>", false},
    {"a.b", "a.b.>", false},
    {"a*", "a*", true},  // literal '*' inside a token
    {"ab", "a*", false},
    {"a.xb", "a.*b", false},
    {"a.*b", "a.*b", true},
    {"a.>x", "a.>x", true},
    {"a.b", "a.>x", false},
    {"orders.eu.created", "orders.*.created", true},
    {"orders.eu.deleted", "orders.*.created", false},
    {"orders.eu.created", "orders.>", true},
    {"caf\xc3\xa9.x", "caf\xc3\xa9.*", true},
    {"caf\xc3\xa9.x", "cafe.*", false},
    // invalid on either side never matches and never throws
    {"a..b", "a.*.b", false},
    {"a.*", "a.*", false},  // a published topic must be literal
    {"a.>", ">", false},
    {"a.b", "a..b", false},
    {"a.b", "a.>.b", false},
    {"", ">", false},
    {"a b", ">", false},
    {"a.b", "", false},
};

std::string long_topic(int tokens, char fill) {
  std::string s;
  for (int i = 0; i < tokens; ++i) {
    if (i) s += '.';
    s += fill;
    s += std::to_string(i);
  }
  return s;
}

}  // namespace

TEST_CASE("topic and pattern validity follows every NATS rule", "[topic]") {
  for (const auto& v : kValidity) {
    INFO("text: '" << std::string(v.text) << "'");
    CHECK(is_valid_topic(v.text) == v.topic);
    CHECK(is_valid_pattern(v.text) == v.pattern);
    if (v.pattern) {
      CHECK_NOTHROW(herald::validate_pattern(v.text));
    } else {
      CHECK_THROWS_AS(herald::validate_pattern(v.text), herald::InvalidTopic);
    }
    if (v.topic) {
      CHECK_NOTHROW(herald::validate_topic(v.text));
    } else {
      CHECK_THROWS_AS(herald::validate_topic(v.text), herald::InvalidTopic);
    }
  }
}

TEST_CASE("matches follows every NATS rule and agrees with Pattern", "[topic]") {
  for (const auto& c : kMatches) {
    INFO("topic '" << std::string(c.topic) << "' pattern '" << std::string(c.pattern) << "'");
    CHECK(matches(c.topic, c.pattern) == c.expected);
    if (is_valid_pattern(c.pattern)) {
      CHECK(herald::Pattern{c.pattern}.matches(c.topic) == c.expected);
    }
  }
}

TEST_CASE("validation is usable at compile time", "[topic]") {
  static_assert(is_valid_topic("a.b.c"));
  static_assert(!is_valid_topic("a.*"));
  static_assert(is_valid_pattern("a.*.>"));
  static_assert(!is_valid_pattern("a.>.b"));
  static_assert(matches("a.b.c", "a.>"));
  static_assert(!matches("a", "a.>"));
  static_assert(noexcept(matches("a", "b")));
  SUCCEED();
}

TEST_CASE("long topics of 100+ tokens validate and match", "[topic]") {
  const std::string topic = long_topic(150, 't');
  CHECK(is_valid_topic(topic));
  CHECK(matches(topic, topic));
  CHECK(matches(topic, "t0.>"));
  CHECK(matches(topic, ">"));
  std::string all_stars;
  for (int i = 0; i < 150; ++i)
    all_stars += i ? ".*" : "*";
  CHECK(matches(topic, all_stars));
  CHECK_FALSE(matches(topic, all_stars + ".*"));
  CHECK(herald::Pattern{all_stars}.matches(topic));
  CHECK_FALSE(herald::Pattern{all_stars.substr(2)}.matches(topic));
}

TEST_CASE("InvalidTopic names the string, the reason and the offset", "[topic]") {
  auto message_of = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const herald::InvalidTopic& e) {
      return e.what();
    }
    return "<no exception>";
  };
  CHECK(message_of([] { herald::validate_topic("orders..eu"); }) ==
        "empty token at offset 7 in topic 'orders..eu'");
  CHECK(message_of([] { herald::validate_topic("orders.*"); }) ==
        "wildcard token (published topics must be literal) at offset 7 in topic 'orders.*'");
  CHECK(message_of([] { herald::validate_pattern("a.>.b"); }) ==
        "'>' that is not the last token at offset 2 in pattern 'a.>.b'");
  CHECK(message_of([] { herald::validate_pattern("a\tb"); }) ==
        "whitespace at offset 1 in pattern 'a\\tb'");
  CHECK(message_of([] { herald::validate_topic(""); }) == "empty topic");
  CHECK(message_of([] { herald::Pattern{"a."}; }) == "empty token at offset 2 in pattern 'a.'");
  // InvalidTopic is an std::invalid_argument, so generic handlers catch it too.
  CHECK_THROWS_AS(herald::validate_topic("."), std::invalid_argument);
}

TEST_CASE("Pattern exposes its tokens and whether it is literal", "[topic]") {
  const herald::Pattern p{"orders.*.>"};
  CHECK(p.str() == "orders.*.>");
  REQUIRE(p.token_count() == 3);
  CHECK(p.token(0) == "orders");
  CHECK(p.token(1) == "*");
  CHECK(p.token(2) == ">");
  CHECK_FALSE(p.is_literal());
  CHECK(herald::Pattern{"a.b*"}.is_literal());
  CHECK(herald::Pattern{"a"} == herald::Pattern{"a"});
}

TEST_CASE("the word-at-a-time topic check agrees with the byte-by-byte one", "[topic]") {
  // is_valid_topic reads 8 bytes at a time from 8 bytes on; check_topic is the reference. Every
  // length from 0 to 40 puts separators, wildcards and whitespace at every offset of a word,
  // including the shifted last word.
  std::uint64_t seed = std::random_device{}();
  if (const char* s = std::getenv("HERALD_SEED")) seed = std::strtoull(s, nullptr, 10);
  std::fprintf(stderr, "topic word-check test: HERALD_SEED=%llu\n",
               static_cast<unsigned long long>(seed));
  INFO("HERALD_SEED=" << seed);
  std::mt19937_64 rng(seed);
  const std::string_view alphabet("ab.*>.. \t\x01\x7f\x80\xff/-\v\r\x1f!\0", 20);  // NUL too
  for (int i = 0; i < 200000; ++i) {
    std::string s(static_cast<std::size_t>(rng() % 41), 'a');
    // Mostly letters so that long valid topics are common, a few special bytes at random spots.
    const std::size_t specials = rng() % 6;
    for (std::size_t k = 0; k < specials && !s.empty(); ++k) {
      s[rng() % s.size()] = alphabet[rng() % alphabet.size()];
    }
    if (rng() % 3 == 0) {
      for (std::size_t k = 1; k < s.size(); k += 2 + rng() % 6)
        s[k] = '.';
    }
    INFO("string '" << s << "'");
    const bool want =
        herald::detail::check_topic(s, false).fault == herald::detail::TopicFault::none;
    REQUIRE(is_valid_topic(s) == want);
  }
}
