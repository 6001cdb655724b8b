// Ordered by key: submit_keyed(key, task) runs the tasks of one key one at a time, in submission
// order, while different keys run in parallel on different workers (the partition-key pattern).
// Here each account's ledger is appended to without a lock: only one task per account runs at
// any moment, and in order, so the ledger comes out exactly as submitted.
#include <herald/worker_pool.hpp>

#include <fmt/core.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace {

constexpr std::size_t kAccounts = 6;
constexpr int kOpsPerAccount = 200;

struct Account {
  std::vector<int> ledger;            // written only by this account's tasks: no lock needed
  std::set<std::thread::id> workers;  // which threads ran them (expect exactly one)
};

}  // namespace

int main() {
  herald::WorkerPool pool{3, 64};
  std::array<Account, kAccounts> accounts;
  std::atomic<int> running{0};  // tasks running right now, over all accounts
  std::atomic<int> peak_parallel{0};

  // Interleave the accounts the way real traffic would: op 0 of each, then op 1 of each, ...
  for (int op = 0; op < kOpsPerAccount; ++op) {
    for (std::uint32_t id = 0; id < kAccounts; ++id) {
      pool.submit_keyed(id, [&, id, op] {
        const int now = ++running;
        for (int seen = peak_parallel;
             now > seen && !peak_parallel.compare_exchange_weak(seen, now);) {
        }
        Account& a = accounts[id];
        a.ledger.push_back(op);
        a.workers.insert(std::this_thread::get_id());
        std::this_thread::sleep_for(std::chrono::microseconds(20));  // "work"
        --running;
      });
    }
  }
  pool.shutdown();  // runs everything submitted, joins: the ledgers are safe to read now

  // Give the worker threads short names in order of appearance, for printing.
  std::vector<std::thread::id> names;
  const auto name_of = [&](std::thread::id t) {
    for (std::size_t i = 0; i < names.size(); ++i)
      if (names[i] == t) return i;
    names.push_back(t);
    return names.size() - 1;
  };

  bool ok = true;
  for (std::size_t id = 0; id < kAccounts; ++id) {
    const Account& a = accounts[id];
    bool in_order = a.ledger.size() == static_cast<std::size_t>(kOpsPerAccount);
    for (std::size_t i = 0; in_order && i < a.ledger.size(); ++i)
      in_order = a.ledger[i] == static_cast<int>(i);
    if (a.workers.empty()) return 1;  // nothing ran at all
    fmt::print("account {}: {} ops {}, all on worker #{}{}\n", id, a.ledger.size(),
               in_order ? "in submission order" : "OUT OF ORDER", name_of(*a.workers.begin()),
               a.workers.size() == 1 ? "" : " (and others!)");
    ok = ok && in_order && a.workers.size() == 1;
  }
  fmt::print("{} workers were used; up to {} accounts were being processed at the same moment\n",
             names.size(), peak_parallel.load());
  ok = ok && names.size() > 1;  // different keys really did run on different workers
  return ok ? 0 : 1;
}
