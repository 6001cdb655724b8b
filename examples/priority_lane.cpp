// A priority lane for control messages. One worker thread has a backlog of 2000 bulk jobs when
// an operator publishes `control.pause`. The control subscription asks for
// SubscribeOptions::priority = Priority::high, so its handler runs as soon as the job in hand
// is done, and the rest of the backlog sees the pause; with the default priority the same
// message would wait behind every queued job. Aging keeps the low lane alive too: a backfill
// submitted at Priority::low still gets one dispatch in every max_bypass + 1 while normal work
// floods the pool.
#include <herald/broker.hpp>
#include <herald/worker_pool.hpp>

#include <fmt/core.h>

#include <atomic>
#include <chrono>
#include <string>

using namespace std::chrono_literals;

namespace {

void work_for(std::chrono::microseconds d) {  // a bulk job: busy for `d`
  const auto until = std::chrono::steady_clock::now() + d;
  while (std::chrono::steady_clock::now() < until) {
  }
}

/// Queues `jobs` bulk jobs, publishes `control.pause` on a subscription of `priority`, and
/// returns how many jobs still did their work after the publish returned, before the pause
/// took hold.
int jobs_run_after_pause_was_published(herald::Priority priority, int jobs) {
  herald::WorkerPool pool(1, 4096);
  herald::Broker<std::string> control;
  std::atomic<bool> paused{false};
  std::atomic<int> worked{0};
  auto on_control = control.subscribe("control.>",
                                      [&](const herald::Message<std::string>& m) {
                                        if (m.topic() == "control.pause") paused = true;
                                      },
                                      pool, {.priority = priority});

  for (int i = 0; i < jobs; ++i) {
    pool.submit([&] {
      if (paused) return;  // paused: the job stays undone (a real service would park it)
      work_for(20us);
      ++worked;
    });
  }
  control.publish("control.pause", "operator");
  // Read once publish has returned (the pause is queued by then): reading it before would also
  // count the jobs run while this thread was preempted inside publish on a loaded machine.
  const int worked_at_publish = worked.load();
  on_control.wait_idle(10s);
  pool.shutdown();  // the skipped jobs still run (and return at once): nothing accepted is lost
  return worked.load() - worked_at_publish;
}

}  // namespace

int main() {
  constexpr int jobs = 2000;
  const int high = jobs_run_after_pause_was_published(herald::Priority::high, jobs);
  const int normal = jobs_run_after_pause_was_published(herald::Priority::normal, jobs);
  fmt::print("control.pause at Priority::high:   {} job(s) ran after it was published\n", high);
  fmt::print("control.pause at Priority::normal: {} job(s) ran after it was published\n", normal);

  // The low lane under a flood of normal work: with max_bypass = 8 at most 8 normal dispatches
  // pass a waiting backfill task, so the backfill finishes long before the flood does.
  constexpr std::uint32_t max_bypass = 8;
  constexpr int flood = 1800;
  constexpr int backfill = 100;
  std::atomic<int> normal_done{0};
  int normal_done_when_backfill_finished = -1;
  {
    herald::WorkerPool pool(1, 4096, {.max_bypass = max_bypass});
    std::atomic<int> backfill_done{0};
    std::atomic<bool> go{false};
    pool.submit([&] {  // hold the worker until everything is queued
      while (!go) {
      }
    });
    for (int i = 0; i < flood; ++i)
      pool.submit([&] { ++normal_done; });
    for (int i = 0; i < backfill; ++i) {
      pool.submit(
          [&] {
            if (++backfill_done == backfill) normal_done_when_backfill_finished = normal_done;
          },
          herald::Priority::low);
    }
    go = true;
  }  // the destructor drains both lanes
  fmt::print("backfill of {} low tasks finished after {} of {} normal tasks (max_bypass {})\n",
             backfill, normal_done_when_backfill_finished, flood, max_bypass);

  // The tour doubles as a test.
  const bool ok = high <= 1 && normal > 1 && normal_done == flood &&
                  normal_done_when_backfill_finished >= 0 &&
                  normal_done_when_backfill_finished <= backfill * static_cast<int>(max_bypass);
  return ok ? 0 : 1;
}
