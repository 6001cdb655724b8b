// Crawl with a TaskGroup and a WeightedSemaphore: a fan-out over a link graph where every fetched
// page spawns the fetches of the pages it links to, into the same group, on a WorkerPool.
// - The TaskGroup joins the whole crawl with one wait(), however many tasks the pages spawned,
//   and its limit bounds the fetches in flight.
// - A WeightedSemaphore bounds the bytes held in memory: a fetch takes as many permits as the
//   page is large, so one big page waits its turn (FIFO) rather than being starved by small ones.
// - The first failing fetch requests stop on the group's token: the other fetches give up, and
//   wait() rethrows that first error.
// The "web" is simulated in memory (a page's size and links follow from its number).
#include <herald/task_group.hpp>
#include <herald/weighted_semaphore.hpp>
#include <herald/worker_pool.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

using namespace std::chrono_literals;

namespace {

constexpr int kPages = 300;

struct Page {
  int id = 0;
  std::int64_t bytes = 0;
  std::vector<int> links;
};

/// The simulated web: page i is 1-64 KiB (page 7 is 900 KiB) and links to three others.
std::int64_t page_bytes(int id) {
  return id == 7 ? 900 * 1024 : 1024 * (1 + (id * 37) % 64);
}

Page fetch(int id, const std::stop_token& stop) {
  for (int slice = 0; slice < 4; ++slice) {  // ~2 ms of "network", abandoned on stop
    if (stop.stop_requested()) throw std::runtime_error("cancelled");
    std::this_thread::sleep_for(500us);
  }
  Page p;
  p.id = id;
  p.bytes = page_bytes(id);
  for (int k = 1; k <= 3; ++k)
    p.links.push_back((id * 7 + k * 13) % kPages);
  return p;
}

class Crawler {
 public:
  Crawler(herald::WorkerPool& pool, std::int64_t memory_budget, int broken_page)
      : memory_(memory_budget), broken_(broken_page), group_(pool) {
    group_.set_limit(8);  // fetches in flight
  }

  /// Crawls from `root`; returns the pages fetched. Throws the first fetch error.
  std::size_t run(int root) {
    visit(root);
    group_.wait();
    return fetched_.load();
  }

  std::int64_t peak_bytes() const { return peak_.load(); }
  std::size_t cancelled() const { return cancelled_.load(); }

 private:
  void visit(int id) {
    {
      const std::lock_guard lock(seen_mutex_);
      if (!seen_.insert(id).second) return;  // spawned once per page
    }
    group_.spawn([this, id](std::stop_token stop) { crawl(id, stop); });
  }

  void crawl(int id, const std::stop_token& stop) {
    if (id == broken_) throw std::runtime_error(fmt::format("page {}: HTTP 500", id));
    // The page's size is known up front (think Content-Length): reserve the memory first.
    const std::int64_t size = page_bytes(id);
    if (!memory_.acquire(size, stop)) {  // false: the crawl was stopped while we waited
      ++cancelled_;
      return;
    }
    Page page;
    {
      struct Release {  // gives the memory back however the fetch ends
        herald::WeightedSemaphore& sem;
        std::int64_t n;
        std::atomic<std::int64_t>& in_use;
        ~Release() {
          in_use -= n;
          sem.release(n);
        }
      } release{memory_, size, in_use_};
      const std::int64_t now = in_use_ += size;
      std::int64_t peak = peak_.load();
      while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
      }
      try {
        page = fetch(id, stop);
      } catch (const std::runtime_error&) {
        if (!stop.stop_requested()) throw;
        ++cancelled_;  // abandoned because of another page's failure: not an error of its own
        return;
      }
    }  // the page is parsed: its memory is free again
    ++fetched_;
    // Spawning from inside a task never blocks a worker; at the group's limit it runs the
    // child inline, on this thread. That is why the memory was released first: a child must
    // never wait for permits its own caller holds.
    for (const int link : page.links)
      visit(link);
  }

  herald::WeightedSemaphore memory_;
  const int broken_;
  std::mutex seen_mutex_;
  std::unordered_set<int> seen_;
  std::atomic<std::size_t> fetched_{0};
  std::atomic<std::size_t> cancelled_{0};
  std::atomic<std::int64_t> in_use_{0};
  std::atomic<std::int64_t> peak_{0};
  herald::TaskGroup group_;  // last: destroyed (and joined) before what its tasks use
};

/// How many pages are reachable from `root` (the oracle for the crawl).
std::size_t reachable(int root) {
  std::unordered_set<int> seen{root};
  std::vector<int> todo{root};
  while (!todo.empty()) {
    const int id = todo.back();
    todo.pop_back();
    for (int k = 1; k <= 3; ++k) {
      const int next = (id * 7 + k * 13) % kPages;
      if (seen.insert(next).second) todo.push_back(next);
    }
  }
  return seen.size();
}

}  // namespace

int main() {
  herald::WorkerPool pool{4, 64};
  constexpr std::int64_t budget = 1024 * 1024;  // 1 MiB of pages in memory at once

  // 1. A full crawl.
  const auto t0 = std::chrono::steady_clock::now();
  Crawler crawler(pool, budget, /*broken_page=*/-1);
  const std::size_t fetched = crawler.run(0);
  const auto ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const std::size_t expected = reachable(0);
  fmt::print("crawl: fetched {} pages (reachable: {}) in {:.0f} ms, peak memory {} KiB of {}\n",
             fetched, expected, ms, crawler.peak_bytes() / 1024, budget / 1024);
  bool ok = fetched == expected && crawler.peak_bytes() <= budget;

  // 2. A crawl that hits a broken page: the first error stops the others and is rethrown.
  Crawler failing(pool, budget, /*broken_page=*/21);
  try {
    const std::size_t n = failing.run(0);
    fmt::print("failing crawl: unexpectedly finished with {} pages\n", n);
    ok = false;
  } catch (const std::runtime_error& e) {
    fmt::print("failing crawl: stopped by \"{}\"; {} fetches gave up on the stop request\n",
               e.what(), failing.cancelled());
    ok = ok && std::string(e.what()) == "page 21: HTTP 500";
  }
  return ok ? 0 : 1;
}
