// TopicIndex: match cost against 10 / 1k / 100k patterns next to the plain baseline (a linear scan
// calling herald::matches on every pattern), plus insert, erase and subscribe/unsubscribe churn.
//
// Patterns are 4-token subjects "svcA.regionB.entityC.keyD", mostly literal, ~10% with a '*' in
// tokens 2-4 and ~10% of the form "svcA.regionB.entityC.>". The alphabet of each token grows
// with the pattern count; half of the probes come from a stored pattern (hits, which also pick up
// overlapping wildcard patterns, more of them as the count grows), half share a stored service
// and region but then leave every alphabet (misses). The counters say how many entries each
// probe matched and how many probes matched at least one.
// BM_index_match_padded keeps the 10-pattern workload's probes and matches and only adds
// patterns that match nothing: the purest view of "cost independent of non-matching patterns".
//
// HERALD_BENCH_SMOKE=1 drops the 100k sizes so the binary finishes in a few seconds.
#include <herald/topic.hpp>
#include <herald/topic_index.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

bool smoke() {
  const char* s = std::getenv("HERALD_BENCH_SMOKE");
  return s != nullptr && *s != '\0' && *s != '0';
}

/// Stands in for the broker's subscriber record: the index stores pointers to these.
struct Subscriber {
  std::size_t id;
};

struct Workload {
  std::vector<std::string> patterns;
  std::vector<std::string> probes;  // a power of two of them, for cheap cycling
};

std::string token(const char* stem, std::size_t i) {
  std::string s(stem);
  s += std::to_string(i);
  return s;
}

std::string join(const std::string (&t)[4]) {
  std::string s = t[0];
  for (int i = 1; i < 4; ++i) {
    s += '.';
    s += t[i];
  }
  return s;
}

Workload make_workload(std::size_t n, std::uint64_t seed = 42) {
  std::mt19937_64 rng(seed);
  auto pick = [&](std::size_t k) { return static_cast<std::size_t>(rng() % k); };
  const std::size_t services = 8;
  // services * k^3 ~ 4n: a random 4-tuple names a stored pattern about a quarter of the time.
  const auto k = std::max<std::size_t>(
      2, static_cast<std::size_t>(std::cbrt(4.0 * static_cast<double>(n) / services)));
  Workload w;
  w.patterns.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::string t[4] = {token("svc", pick(services)), token("region", pick(k)),
                        token("entity", pick(k)), token("key", pick(k))};
    const std::size_t shape = pick(10);
    if (shape == 0) t[1 + pick(3)].assign(1, '*');  // not = "*": g++ 12 false -Wrestrict
    if (shape == 1) t[3].assign(1, '>');
    w.patterns.push_back(join(t));
  }
  const std::size_t probes = 4096;
  w.probes.reserve(probes);
  for (std::size_t i = 0; i < probes; ++i) {
    std::string t[4];
    if (i % 2 == 0) {  // a hit: a stored pattern with its wildcards filled in
      const std::string& p = w.patterns[pick(n)];
      std::size_t j = 0;
      herald::detail::for_each_token(std::string_view(p), [&](std::string_view tok) {
        t[j] = std::string(tok);
        ++j;
        return true;
      });
      if (t[1] == "*") t[1] = token("region", pick(k));
      if (t[2] == "*") t[2] = token("entity", pick(k));
      if (t[3] == "*" || t[3] == ">") t[3] = token("key", pick(k));
    } else {  // a miss: known service and region, then tokens no pattern names, so that not
              // even "svc.region.entity.>" or one '*' can rescue it
      t[0] = token("svc", pick(services));
      t[1] = token("region", pick(k));
      t[2] = token("noentity", pick(k));
      t[3] = token("nokey", pick(k));
    }
    w.probes.push_back(join(t));
  }
  return w;
}

/// Workloads are built once per size and shared by every benchmark and repetition.
const Workload& workload(std::size_t n) {
  static std::map<std::size_t, Workload> cache;  // node-based: references stay valid
  auto it = cache.find(n);
  if (it == cache.end()) it = cache.emplace(n, make_workload(n)).first;
  return it->second;
}

/// The 10-pattern workload plus n - 10 literal patterns that no probe matches: half extend the
/// probes' own 3-token prefixes (so the tables on the probes' paths grow), half sit in subtrees
/// of their own. Match cost here should not move with n, apart from cache misses.
const Workload& padded_workload(std::size_t n) {
  static std::map<std::size_t, Workload> cache;
  if (const auto it = cache.find(n); it != cache.end()) return it->second;
  Workload w = workload(10);
  for (std::size_t i = 0; w.patterns.size() < n; ++i) {
    std::string p;
    if (i % 2 == 0) {
      const std::string& probe = w.probes[(i / 2) % w.probes.size()];
      p = probe.substr(0, probe.rfind('.'));
      p += ".filler";
    } else {
      p = token("other", i % 1000);
      p += '.';
      p += token("r", (i / 1000) % 100);
      p += ".e.k";
    }
    p += std::to_string(i);
    w.patterns.push_back(std::move(p));
  }
  return cache.emplace(n, std::move(w)).first->second;
}

std::vector<Subscriber>& subscribers(std::size_t n) {
  static std::vector<Subscriber> subs;
  if (subs.size() < n) {
    subs.resize(n);
    for (std::size_t i = 0; i < n; ++i)
      subs[i].id = i;
  }
  return subs;
}

using Index = herald::TopicIndex<const Subscriber*>;

void build(Index& index, const Workload& w) {
  auto& subs = subscribers(w.patterns.size());
  for (std::size_t i = 0; i < w.patterns.size(); ++i)
    index.insert(w.patterns[i], &subs[i]);
}

void report_matches(benchmark::State& state, std::size_t visits, std::size_t hits,
                    std::size_t probes) {
  state.SetItemsProcessed(static_cast<std::int64_t>(probes));
  state.counters["matched/probe"] =
      static_cast<double>(visits) / static_cast<double>(std::max<std::size_t>(probes, 1));
  state.counters["hit%"] =
      100.0 * static_cast<double>(hits) / static_cast<double>(std::max<std::size_t>(probes, 1));
}

void match_loop(benchmark::State& state, const Workload& w) {
  Index index;
  build(index, w);
  const std::size_t mask = w.probes.size() - 1;
  std::size_t i = 0;
  std::size_t visits = 0;
  std::size_t hits = 0;
  for (auto _ : state) {
    std::size_t found = 0;
    index.match(w.probes[i++ & mask], [&](const Subscriber* s) {
      benchmark::DoNotOptimize(s);
      ++found;
    });
    visits += found;
    hits += found != 0 ? 1 : 0;
  }
  report_matches(state, visits, hits, i);
}

void BM_index_match(benchmark::State& state) {
  match_loop(state, workload(static_cast<std::size_t>(state.range(0))));
}

/// Same probes and matching patterns at every size; only non-matching patterns are added.
void BM_index_match_padded(benchmark::State& state) {
  match_loop(state, padded_workload(static_cast<std::size_t>(state.range(0))));
}

/// The baseline: what a registry without an index does, herald::matches on every pattern.
void BM_linear_scan(benchmark::State& state) {
  const auto& w = workload(static_cast<std::size_t>(state.range(0)));
  const std::size_t mask = w.probes.size() - 1;
  std::size_t i = 0;
  std::size_t visits = 0;
  std::size_t hits = 0;
  for (auto _ : state) {
    const std::string& topic = w.probes[i++ & mask];
    std::size_t found = 0;
    for (const std::string& p : w.patterns)
      found += herald::matches(topic, p) ? 1 : 0;
    benchmark::DoNotOptimize(found);
    visits += found;
    hits += found != 0 ? 1 : 0;
  }
  report_matches(state, visits, hits, i);
}

/// Time to insert every pattern of the workload into an empty index (one iteration = all).
void BM_index_insert_all(benchmark::State& state) {
  const auto& w = workload(static_cast<std::size_t>(state.range(0)));
  for (auto _ : state) {
    auto index = std::make_unique<Index>();
    build(*index, w);
    benchmark::DoNotOptimize(index->size());
    state.PauseTiming();
    index.reset();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

/// Time to erase every pattern of the workload, in an order unrelated to insertion.
void BM_index_erase_all(benchmark::State& state) {
  const auto& w = workload(static_cast<std::size_t>(state.range(0)));
  auto& subs = subscribers(w.patterns.size());
  std::vector<std::size_t> order(w.patterns.size());
  for (std::size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937_64(7));
  for (auto _ : state) {
    state.PauseTiming();
    Index index;
    build(index, w);
    state.ResumeTiming();
    for (const std::size_t i : order)
      benchmark::DoNotOptimize(index.erase(w.patterns[i], &subs[i]));
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

/// One subscribe plus one unsubscribe while N patterns are registered: flat in N is the goal.
void BM_index_insert_erase_one(benchmark::State& state) {
  const auto& w = workload(static_cast<std::size_t>(state.range(0)));
  Index index;
  build(index, w);
  const Subscriber extra{~std::size_t{0}};
  const std::size_t mask = w.probes.size() - 1;
  std::size_t i = 0;
  for (auto _ : state) {
    const std::string& p = w.probes[i++ & mask];
    index.insert(p, &extra);
    benchmark::DoNotOptimize(index.erase(p, &extra));
  }
  state.SetItemsProcessed(state.iterations());
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const bool tiny = smoke();
  const std::vector<std::int64_t> sizes =
      tiny ? std::vector<std::int64_t>{10, 1000} : std::vector<std::int64_t>{10, 1000, 100000};
  const std::int64_t big = tiny ? 1000 : 100000;
  std::vector<benchmark::internal::Benchmark*> all;
  for (const auto n : sizes) {
    all.push_back(benchmark::RegisterBenchmark("BM_index_match", BM_index_match)->Arg(n));
  }
  for (const auto n : sizes) {
    all.push_back(
        benchmark::RegisterBenchmark("BM_index_match_padded", BM_index_match_padded)->Arg(n));
  }
  for (const auto n : sizes) {
    auto* b = benchmark::RegisterBenchmark("BM_linear_scan", BM_linear_scan)->Arg(n);
    if (n >= 100000) {
      b->Iterations(300);  // ~ms per probe: bound the run time
    } else {
      all.push_back(b);
    }
  }
  all.push_back(benchmark::RegisterBenchmark("BM_index_insert_all", BM_index_insert_all)
                    ->Arg(big)
                    ->Unit(benchmark::kMillisecond));
  all.push_back(benchmark::RegisterBenchmark("BM_index_erase_all", BM_index_erase_all)
                    ->Arg(big)
                    ->Unit(benchmark::kMillisecond));
  for (const auto n : sizes) {
    all.push_back(
        benchmark::RegisterBenchmark("BM_index_insert_erase_one", BM_index_insert_erase_one)
            ->Arg(n));
  }
  if (tiny) {
    for (auto* b : all)
      b->MinTime(0.01);  // smoke: prove it runs, in well under a second
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
