// WorkerPool: fan-out/fan-in with back-pressure. Submitting more tasks than the queues hold makes
// submit() wait for room, so a fast producer runs at the pool's pace instead of piling up work;
// async() returns futures to collect results; stats() counts everything at the end.
#include <herald/worker_pool.hpp>

#include <fmt/core.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <future>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

int main() {
  // 2 threads; each worker's queue holds 4 tasks, so at most 8 wait while 2 run.
  herald::WorkerPool pool{2, 4, {.on_error = [](std::exception_ptr e) {
                            try {
                              std::rethrow_exception(e);
                            } catch (const std::exception& err) {
                              fmt::print("  a task failed: {}\n", err.what());
                            }
                          }}};

  // 1. Back-pressure: 40 tasks of 2 ms into 8 queue slots.
  constexpr int kTasks = 40;
  std::atomic<int> done{0};
  int had_to_wait = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kTasks; ++i) {
    auto task = [&done] {
      std::this_thread::sleep_for(2ms);
      ++done;
    };
    // try_submit never waits: it reports a full queue. submit() waits for room.
    if (!pool.try_submit(task)) {
      ++had_to_wait;
      pool.submit(task);
    }
  }
  const auto ms = [](auto d) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  };
  fmt::print("submitted {} tasks in {} ms; {} submissions found the queues full and waited\n",
             kTasks, ms(std::chrono::steady_clock::now() - start), had_to_wait);

  // 2. Fan-out / fan-in: sum 1..N in 8 slices on the pool, then add the slices up.
  constexpr std::uint64_t kN = 8'000'000;
  constexpr std::uint64_t kSlices = 8;
  std::vector<std::future<std::uint64_t>> parts;
  for (std::uint64_t s = 0; s < kSlices; ++s) {
    parts.push_back(pool.async([s] {
      std::uint64_t sum = 0;
      for (std::uint64_t v = s * kN / kSlices + 1; v <= (s + 1) * kN / kSlices; ++v)
        sum += v;
      return sum;
    }));
  }
  std::uint64_t total = 0;
  for (auto& part : parts)
    total += part.get();  // get() waits for that slice
  const bool sum_ok = total == kN * (kN + 1) / 2;
  fmt::print("sum of 1..{} computed in {} slices: {} ({})\n", kN, kSlices, total,
             sum_ok ? "correct" : "WRONG");

  // 3. Failures: a throwing task goes to on_error; a throwing async() lands in its future.
  pool.submit([] { throw std::runtime_error("disk full"); });
  auto doomed = pool.async([]() -> int { throw std::out_of_range("no such row"); });

  // shutdown() stops accepting, runs everything already accepted, and joins the workers.
  // Futures stay valid afterwards.
  pool.shutdown();
  try {
    (void)doomed.get();
  } catch (const std::out_of_range& e) {
    fmt::print("  a future rethrew: {}\n", e.what());
  }
  const herald::WorkerPoolStats s = pool.stats();
  fmt::print("stats: submitted {}, completed {}, failed {}, queued {}, threads {}\n", s.submitted,
             s.completed, s.failed, s.queued, s.threads);
  fmt::print("after shutdown, try_submit -> {}\n", pool.try_submit([] {}));

  const bool ok = sum_ok && done == kTasks && had_to_wait > 0 &&
                  s.submitted == kTasks + kSlices + 2 && s.failed == 1 &&
                  s.submitted == s.completed + s.failed;
  return ok ? 0 : 1;
}
