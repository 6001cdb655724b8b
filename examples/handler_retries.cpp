// Handler retries: a handler subscription on a WorkerPool retries failed messages with backoff,
// reports every failure to on_error, and sends what failed every attempt to a dead-letter broker
// (topic `$DLQ.<original topic>`). Then: unsubscribe is quiescent, so once it returns the
// handler is not running and never will again; what it used can be destroyed at once.
#include <herald/broker.hpp>
#include <herald/worker_pool.hpp>

#include <fmt/core.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct Payment {
  int id = 0;
  int cents = 0;
};

/// Polls `done` for up to 5 s (handlers run on other threads; there is nothing to join here).
template <class Pred>
bool wait_until(Pred done) {
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

}  // namespace

int main() {
  herald::WorkerPool pool{2, 64};
  herald::Broker<Payment> broker;
  herald::Broker<herald::DeadLetter<Payment>> dead_letters;
  auto dlq = dead_letters.subscribe("$DLQ.>");  // whoever investigates failures reads this

  herald::HandlerOptions<Payment> failure_handling;
  failure_handling.retry = {.max_attempts = 3, .initial_backoff = 1ms, .max_backoff = 10ms};
  failure_handling.dead_letters = &dead_letters;
  failure_handling.on_error = [](const herald::Message<Payment>& m, std::exception_ptr e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& err) {
      fmt::print("  payment {}: attempt failed: {}\n", m->id, err.what());
    }
  };

  // Handler invocations of one subscription never overlap, so `attempts` needs no lock.
  std::map<int, int> attempts;
  std::atomic<std::uint64_t> charged{0};
  auto charger = broker.subscribe(
      "payments.*",
      [&](const herald::Message<Payment>& m) {
        const int attempt = ++attempts[m->id];
        if (m->cents <= 0) throw std::invalid_argument("amount must be positive");  // permanent
        if (m->id % 3 == 0 && attempt == 1) throw std::runtime_error("gateway timeout");  // once
        fmt::print("  payment {}: charged {} cents (attempt {})\n", m->id, m->cents, attempt);
        ++charged;
      },
      pool, {.capacity = 64}, failure_handling);

  constexpr int kPayments = 6;
  for (int id = 1; id <= kPayments; ++id)
    broker.publish(id % 2 ? "payments.card" : "payments.bank",
                   Payment{id, id == 4 ? -50 : 100 * id});

  // Returns once every payment published so far went through the handler: charged, or
  // dead-lettered after its last attempt.
  const bool settled = charger.wait_idle(10s);
  while (auto m = dlq.try_receive()) {
    const herald::DeadLetter<Payment>& d = m->value();
    fmt::print("dead letter on {}: payment {} failed {} attempts on `{}`: {}\n", m->topic(),
               d.message->id, d.attempts, d.pattern, d.error);
  }
  const herald::HandlerStats s = charger.stats();
  fmt::print("handler: {} invocations, {} failures, {} retries, {} dead-lettered\n\n",
             s.invocations, s.failures, s.retries, s.dead_lettered);
  // 6 payments: #3 and #6 fail once then succeed, #4 fails all 3 attempts: 6 + 1 + 1 + 2 calls.
  bool ok = settled && charged == 5 && s.invocations == 10 && s.failures == 5 && s.retries == 4 &&
            s.dead_lettered == 1;

  // Quiescent unsubscribe: the handler below takes 20 ms per message.
  auto journal = std::make_unique<std::vector<int>>();
  std::atomic<int> calls{0};
  std::atomic<bool> running{false};
  auto auditor = broker.subscribe(
      "audit.>",
      [&](const herald::Message<Payment>& m) {
        running = true;
        ++calls;
        std::this_thread::sleep_for(20ms);
        journal->push_back(m->id);
        running = false;
      },
      pool);
  for (int id = 1; id <= 10; ++id)
    broker.publish("audit.payments", Payment{id, 1});
  const bool started = wait_until([&] { return calls > 0; });
  const auto start = std::chrono::steady_clock::now();
  auditor.unsubscribe();  // returns once the running invocation has finished
  const auto waited = std::chrono::steady_clock::now() - start;
  const bool was_running = running;
  const int calls_then = calls;
  journal.reset();  // safe: the handler will never touch it again
  std::this_thread::sleep_for(50ms);
  fmt::print(
      "unsubscribe waited {:.1f} ms for the running handler; {} of 10 messages handled, "
      "{} started afterwards\n",
      std::chrono::duration<double, std::milli>(waited).count(), calls_then, calls - calls_then);
  ok = ok && started && !was_running && calls == calls_then && calls_then < 10;
  return ok ? 0 : 1;
}
