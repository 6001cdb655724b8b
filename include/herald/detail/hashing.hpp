// Hashing: the word-wise string hash of topics and tokens, and the 64-bit mixer that spreads
// integer keys. One of each for all of herald (the trie, the route cache, keyed pools, the NATS
// bridge's ids).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace herald::detail {

/// splitmix64's finalizer: a bijection on 64-bit words whose output bits each depend on every
/// input bit. Spreads keys such as 0, n, 2n, ... over buckets (std::hash of an integer is the
/// identity in libstdc++) and turns a counter into well-mixed pseudo-random values.
constexpr std::uint64_t mix64(std::uint64_t h) noexcept {
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h;
}

/// Hashes a token or a topic. They are short, so instead of the byte-oriented std::hash it mixes
/// whole words: one to three loads for any string up to 16 bytes. TokenMap uses the high 32
/// bits, the ones the multiply mixes best.
struct TokenHash {
  std::uint64_t operator()(std::string_view s) const noexcept {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    std::size_t n = s.size();
    std::uint64_t h = (n + 1) * kMul;
    if (n >= 8) {
      for (; n > 8; n -= 8, p += 8)
        h = mix(h, load<std::uint64_t>(p));
      h = mix(h, load<std::uint64_t>(p + n - 8));  // the last 8 bytes, overlapping if need be
    } else if (n >= 4) {
      h = mix(h, load<std::uint32_t>(p) | std::uint64_t{load<std::uint32_t>(p + n - 4)} << 32);
    } else if (n > 0) {
      h = mix(h,
              std::uint64_t{p[0]} | std::uint64_t{p[n / 2]} << 8 | std::uint64_t{p[n - 1]} << 16);
    }
    return h;
  }

 private:
  static constexpr std::uint64_t kMul = 0x9E3779B97F4A7C15u;  // 2^64 / golden ratio, odd
  static constexpr std::uint64_t mix(std::uint64_t h, std::uint64_t w) noexcept {
    h = (h ^ w) * kMul;
    return h ^ (h >> 29);
  }
  template <class U>
  static U load(const unsigned char* p) noexcept {
    U u;
    std::memcpy(&u, p, sizeof u);  // an unaligned load, without the undefined behaviour
    return u;
  }
};

/// TokenHash for unordered containers keyed by std::string, looked up with std::string_view
/// (transparent: no temporary string per lookup).
struct TopicHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return static_cast<std::size_t>(TokenHash{}(s));
  }
};

}  // namespace herald::detail
