// Topic and pattern syntax, exactly NATS's subject syntax.
//
// A topic is one or more non-empty tokens separated by '.', without whitespace. A pattern may
// also use the tokens '*' (exactly one token) and '>' (one or more trailing tokens; last only).
// '*' or '>' inside a longer token is an ordinary character.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace herald {

/// Thrown when a topic or pattern breaks the syntax; the message names the string and the reason.
class InvalidTopic : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

enum class TopicFault : std::uint8_t {
  none,
  empty,               // the whole string is empty
  empty_token,         // "a..b", ".a", "a."
  whitespace,          // a space, \t, \n, \r, \f or \v anywhere
  wildcard_in_topic,   // a '*' or '>' token in a published topic
  full_wildcard_last,  // a '>' token that is not the last one
};

struct TopicCheck {
  TopicFault fault = TopicFault::none;
  std::size_t offset = 0;  // byte offset of the fault in the checked string
};

constexpr bool is_topic_space(char c) noexcept {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/// One pass over `s`: the first fault and where it is. `patterns` allows '*' and '>' tokens.
constexpr TopicCheck check_topic(std::string_view s, bool patterns) noexcept {
  if (s.empty()) return {TopicFault::empty, 0};
  std::size_t token_start = 0;
  for (std::size_t i = 0; i <= s.size(); ++i) {
    if (i < s.size() && s[i] != '.') {
      if (is_topic_space(s[i])) return {TopicFault::whitespace, i};
      continue;
    }
    const std::size_t len = i - token_start;
    if (len == 0) return {TopicFault::empty_token, token_start};
    if (len == 1) {
      const char c = s[token_start];
      if ((c == '*' || c == '>') && !patterns) return {TopicFault::wildcard_in_topic, token_start};
      if (c == '>' && i != s.size()) return {TopicFault::full_wildcard_last, token_start};
    }
    token_start = i + 1;
  }
  return {};
}

/// True when [begin, end) of `s` is a valid token of a literal topic (its bytes are checked
/// elsewhere): non-empty and not a lone wildcard.
constexpr bool literal_token_ok(std::string_view s, std::size_t begin, std::size_t end) noexcept {
  return end != begin && (end - begin != 1 || (s[begin] != '*' && s[begin] != '>'));
}

/// Same verdict as check_topic(s, false), a word at a time: the hot path of publish and of
/// matching. Bytes below 0x21 (whitespace among them) are rare, so their presence hands the whole
/// string to check_topic; otherwise only the '.' bytes need a look, to check the token they end.
inline bool topic_is_valid_words(std::string_view s) noexcept {
  constexpr std::uint64_t kOnes = 0x0101010101010101u;
  constexpr std::uint64_t kLow7 = kOnes * 0x7F;
  constexpr std::uint64_t kHigh = kOnes * 0x80;
  const std::size_t n = s.size();
  std::size_t token_start = 0;
  for (std::size_t i = 0; i < n; i += 8) {
    std::uint64_t w;
    std::uint64_t valid = ~std::uint64_t{0};
    if (n - i >= 8) {
      std::memcpy(&w, s.data() + i, 8);
    } else {  // the last 8 bytes, shifted so byte k is s[i + k]; the rest is zero padding
      std::memcpy(&w, s.data() + n - 8, 8);
      const auto shift = static_cast<unsigned>(8 * (8 - (n - i)));
      w >>= shift;
      valid >>= shift;
    }
    // Per-byte exact tests (no carry crosses a byte): 0x80 where the byte is < 0x21, and where
    // the byte is '.'; bytes >= 0x80 are ordinary and never flagged.
    const std::uint64_t below = ~(((w & kLow7) + kOnes * (0x80 - 0x21)) | w) & kHigh & valid;
    if (below != 0) return check_topic(s, false).fault == TopicFault::none;
    const std::uint64_t x = w ^ (kOnes * '.');
    for (std::uint64_t dots = ~(((x & kLow7) + kLow7) | x | kLow7) & valid; dots != 0;
         dots &= dots - 1) {
      const std::size_t dot = i + static_cast<std::size_t>(std::countr_zero(dots)) / 8;
      if (!literal_token_ok(s, token_start, dot)) return false;
      token_start = dot + 1;
    }
  }
  return literal_token_ok(s, token_start, n);
}

/// Same verdict as check_topic(s, false), without locating the fault.
constexpr bool topic_is_valid(std::string_view s) noexcept {
  if (std::is_constant_evaluated() || s.size() < 8 || std::endian::native != std::endian::little) {
    return check_topic(s, false).fault == TopicFault::none;
  }
  return topic_is_valid_words(s);
}

/// Appends `s` to `out` printably: whitespace as \t \n ..., other control bytes as \xNN.
inline void append_escaped(std::string& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  for (const char ch : s) {
    const auto u = static_cast<unsigned char>(ch);
    switch (ch) {
      case '\t':
        out += "\\t";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\v':
        out += "\\v";
        break;
      default:
        if (u < 0x20 || u == 0x7f) {
          out += "\\x";
          out += hex[u >> 4];
          out += hex[u & 15];
        } else {
          out += ch;
        }
    }
  }
}

/// How much of an invalid string an error message quotes: all of it up to this many bytes,
/// otherwise a window around the fault (topics may come from untrusted input, and a 1 MiB
/// topic must not become a 1 MiB exception message).
inline constexpr std::size_t kQuotedBytes = 96;

/// The message of InvalidTopic: the fault, its offset, and the string quoted (bounded, escaped).
inline std::string describe(std::string_view kind, std::string_view s, TopicCheck c) {
  const char* why = "";
  switch (c.fault) {
    case TopicFault::none:
      return {};
    case TopicFault::empty:
      return "empty " + std::string(kind);
    case TopicFault::empty_token:
      why = "empty token";
      break;
    case TopicFault::whitespace:
      why = "whitespace";
      break;
    case TopicFault::wildcard_in_topic:
      why = "wildcard token (published topics must be literal)";
      break;
    case TopicFault::full_wildcard_last:
      why = "'>' that is not the last token";
      break;
  }
  std::string msg = std::string(why) + " at offset " + std::to_string(c.offset) + " in " +
                    std::string(kind) + " '";
  if (s.size() <= kQuotedBytes) {
    append_escaped(msg, s);
    msg += "'";
    return msg;
  }
  const std::size_t half = kQuotedBytes / 2;
  const std::size_t begin =
      c.offset > half ? std::min(c.offset - half, s.size() - kQuotedBytes) : 0;
  if (begin > 0) msg += "...";
  append_escaped(msg, s.substr(begin, kQuotedBytes));
  if (begin + kQuotedBytes < s.size()) msg += "...";
  msg += "' (" + std::to_string(s.size()) + " bytes)";
  return msg;
}

/// Splits a (valid) dotted string into its tokens, calling `f(token)` for each; stops early and
/// returns false when `f` returns false.
template <class F>
constexpr bool for_each_token(std::string_view s, F&& f) noexcept(noexcept(f(s))) {
  std::size_t start = 0;
  for (;;) {
    const std::size_t dot = s.find('.', start);
    if (dot == std::string_view::npos) return f(s.substr(start));
    if (!f(s.substr(start, dot - start))) return false;
    start = dot + 1;
  }
}

}  // namespace detail

/// True when `topic` is a valid literal topic (what `publish` accepts).
/// Complexity: O(size).
[[nodiscard]] constexpr bool is_valid_topic(std::string_view topic) noexcept {
  return detail::topic_is_valid(topic);
}

/// True when `pattern` is a valid subscription pattern (literal tokens, '*' and a final '>').
/// Complexity: O(size).
[[nodiscard]] constexpr bool is_valid_pattern(std::string_view pattern) noexcept {
  return detail::check_topic(pattern, true).fault == detail::TopicFault::none;
}

/// Throws InvalidTopic naming the fault unless `topic` is a valid literal topic.
inline void validate_topic(std::string_view topic) {
  if (detail::topic_is_valid(topic)) return;  // the word-at-a-time check; locate faults rarely
  const auto c = detail::check_topic(topic, false);
  if (c.fault != detail::TopicFault::none) throw InvalidTopic(detail::describe("topic", topic, c));
}

/// Throws InvalidTopic naming the fault unless `pattern` is a valid pattern.
inline void validate_pattern(std::string_view pattern) {
  const auto c = detail::check_topic(pattern, true);
  if (c.fault != detail::TopicFault::none) {
    throw InvalidTopic(detail::describe("pattern", pattern, c));
  }
}

namespace detail {

/// Matches a topic against a pattern, both already known to be valid. No allocation.
constexpr bool match_valid(std::string_view topic, std::string_view pattern) noexcept {
  std::size_t t = 0;
  std::size_t p = 0;
  for (;;) {
    const std::size_t t_end = std::min(topic.find('.', t), topic.size());
    const std::size_t p_end = std::min(pattern.find('.', p), pattern.size());
    const std::string_view pt = pattern.substr(p, p_end - p);
    if (pt == ">") return true;  // valid patterns only have '>' last; it eats >= 1 token
    if (pt != "*" && pt != topic.substr(t, t_end - t)) return false;
    const bool topic_done = t_end == topic.size();
    const bool pattern_done = p_end == pattern.size();
    if (topic_done || pattern_done) return topic_done && pattern_done;
    t = t_end + 1;
    p = p_end + 1;
  }
}

}  // namespace detail

/// True when the literal `topic` is selected by `pattern`. False when either is invalid.
/// Complexity: O(size of both). Never allocates, never throws.
[[nodiscard]] constexpr bool matches(std::string_view topic, std::string_view pattern) noexcept {
  return is_valid_topic(topic) && is_valid_pattern(pattern) && detail::match_valid(topic, pattern);
}

/// A validated pattern, split into tokens once, for matching many topics against it.
///
///     herald::Pattern p{"orders.*.created"};
///     p.matches("orders.eu.created");   // true
///
/// Throws: InvalidTopic from the constructor when the pattern is invalid.
class Pattern {
 public:
  explicit Pattern(std::string_view pattern) : text_(pattern) {
    validate_pattern(text_);
    detail::for_each_token(std::string_view(text_), [&](std::string_view tok) {
      const auto begin = static_cast<std::size_t>(tok.data() - text_.data());
      tokens_.push_back({begin, tok.size()});
      if (tok == "*" || tok == ">") literal_ = false;
      return true;
    });
  }

  /// The pattern text as given.
  [[nodiscard]] const std::string& str() const noexcept { return text_; }
  /// Number of tokens, wildcards included.
  [[nodiscard]] std::size_t token_count() const noexcept { return tokens_.size(); }
  /// The i-th token (0-based).
  [[nodiscard]] std::string_view token(std::size_t i) const noexcept {
    return std::string_view(text_).substr(tokens_[i].begin, tokens_[i].size);
  }
  /// True when the pattern has no wildcard token (it selects exactly one topic).
  [[nodiscard]] bool is_literal() const noexcept { return literal_; }

  /// True when the literal `topic` is selected by this pattern; false for an invalid topic.
  /// Complexity: O(size of topic). Never allocates.
  [[nodiscard]] bool matches(std::string_view topic) const noexcept {
    return is_valid_topic(topic) && detail::match_valid(topic, text_);
  }

  friend bool operator==(const Pattern& a, const Pattern& b) noexcept { return a.text_ == b.text_; }

 private:
  struct Span {
    std::size_t begin;
    std::size_t size;
  };
  std::string text_;
  std::vector<Span> tokens_;
  bool literal_ = true;
};

}  // namespace herald
