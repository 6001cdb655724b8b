// Topic matching: herald::matches and herald::Pattern on typical topics.
#include <herald/topic.hpp>

#include <benchmark/benchmark.h>

#include <array>
#include <string_view>

namespace {

constexpr std::array<std::string_view, 4> kTopics = {"orders.eu.created", "orders.us.shipped",
                                                     "payments.eu.card.settled", "metrics.cpu"};
constexpr std::array<std::string_view, 4> kPatterns = {"orders.*.created", "orders.>",
                                                       "payments.eu.card.settled", "*.cpu"};

void BM_matches(benchmark::State& state) {
  std::size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(herald::matches(kTopics[i & 3], kPatterns[(i >> 2) & 3]));
    ++i;
  }
}
BENCHMARK(BM_matches);

void BM_pattern_matches(benchmark::State& state) {
  const std::array<herald::Pattern, 4> patterns = {
      herald::Pattern{kPatterns[0]}, herald::Pattern{kPatterns[1]}, herald::Pattern{kPatterns[2]},
      herald::Pattern{kPatterns[3]}};
  std::size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(patterns[(i >> 2) & 3].matches(kTopics[i & 3]));
    ++i;
  }
}
BENCHMARK(BM_pattern_matches);

void BM_is_valid_topic(benchmark::State& state) {
  std::size_t i = 0;
  for (auto _ : state)
    benchmark::DoNotOptimize(herald::is_valid_topic(kTopics[i++ & 3]));
}
BENCHMARK(BM_is_valid_topic);

}  // namespace

BENCHMARK_MAIN();
