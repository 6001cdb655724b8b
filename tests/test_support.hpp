// Oracles shared by the tests: a lifetime-counting type and replayable seeds.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>

namespace herald_test {

/// Counts constructions and destructions, so a test can prove that nothing leaked or was
/// destroyed twice. Optionally throws from its copy constructor.
struct Counted {
  static inline std::atomic<long> live{0};
  static inline std::atomic<long> copies{0};
  static inline std::atomic<bool> throw_on_copy{false};

  std::uint64_t value = 0;
  bool alive = true;

  explicit Counted(std::uint64_t v = 0) : value(v) { ++live; }
  Counted(const Counted& o) : value(o.value) {
    if (throw_on_copy.load()) throw std::runtime_error("Counted: copy refused");
    if (!o.alive) std::abort();  // copying a destroyed object
    ++copies;
    ++live;
  }
  Counted(Counted&& o) noexcept : value(o.value) { ++live; }
  Counted& operator=(const Counted&) = default;
  Counted& operator=(Counted&&) noexcept = default;
  ~Counted() {
    if (!alive) std::abort();  // double destroy
    alive = false;
    --live;
  }
};

/// The seed of a randomized test: HERALD_SEED when set (to replay), otherwise random. Printed.
inline std::uint64_t seed(const char* test) {
  std::uint64_t s = 0;
  if (const char* env = std::getenv("HERALD_SEED")) {
    s = std::stoull(env);
  } else {
    s = std::random_device{}();
  }
  std::cout << test << ": seed " << s << " (replay with HERALD_SEED=" << s << ")\n";
  return s;
}

/// Gives a thread that is about to block time to actually park (placeholder, replaced below).
inline void let_it_park() {
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
}

/// Scales stress sizes down under the sanitizers, which are 5-20x slower.
constexpr int scaled(int n) {
#if defined(HERALD_SANITIZED_BUILD)
  return n / 8 > 0 ? n / 8 : 1;
#else
  return n;
#endif
}

}  // namespace herald_test
