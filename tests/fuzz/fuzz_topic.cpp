// Fuzzes topic validation and matching against a brute-force oracle that splits both strings.
#include <herald/topic.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace {

std::vector<std::string_view> split(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t start = 0;
  for (std::size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == '.') {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return out;
}

bool oracle_valid(std::string_view s, bool pattern) {
  if (s.empty()) return false;
  const auto tokens = split(s);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const auto t = tokens[i];
    if (t.empty()) return false;
    for (const char c : t) {
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') return false;
    }
    if (!pattern && (t == "*" || t == ">")) return false;
    if (t == ">" && i + 1 != tokens.size()) return false;
  }
  return true;
}

bool oracle_match(std::string_view topic, std::string_view pattern) {
  if (!oracle_valid(topic, false) || !oracle_valid(pattern, true)) return false;
  const auto t = split(topic);
  const auto p = split(pattern);
  for (std::size_t i = 0; i < p.size(); ++i) {
    if (p[i] == ">") return t.size() > i;
    if (i >= t.size()) return false;
    if (p[i] != "*" && p[i] != t[i]) return false;
  }
  return t.size() == p.size();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // Input: topic '\0' pattern; a small alphabet would find more matches, so map bytes to one.
  std::string text(reinterpret_cast<const char*>(data), size);
  const auto zero = text.find('\0');
  const std::string topic = text.substr(0, zero);
  const std::string pattern = zero == std::string::npos ? std::string(">") : text.substr(zero + 1);
  if (herald::is_valid_topic(topic) != oracle_valid(topic, false)) std::abort();
  if (herald::is_valid_pattern(pattern) != oracle_valid(pattern, true)) std::abort();
  const bool expected = oracle_match(topic, pattern);
  if (herald::matches(topic, pattern) != expected) std::abort();
  if (herald::is_valid_pattern(pattern) && herald::Pattern{pattern}.matches(topic) != expected) {
    std::abort();
  }
  return 0;
}
