// Slow consumers: the four overflow policies side by side. Each round gives one subscriber a
// small queue and a consumer slower than the publisher (5 ms per message, plus one 50 ms stall);
// its policy decides what happens when the queue is full. Figures vary a little between runs.
#include <herald/broker.hpp>

#include <fmt/core.h>

#include <array>
#include <chrono>
#include <thread>

using namespace std::chrono_literals;

namespace {

constexpr int kMessages = 50;

struct Round {
  herald::SubscriptionStats stats;
  std::chrono::milliseconds publish_time;
  int first = 0;  // the first and last message the consumer saw
  int last = 0;
};

Round run(const herald::SubscribeOptions& options) {
  herald::Broker<int> broker;
  auto sub = broker.subscribe("ticks", options);
  Round round{};

  // The slow consumer. Range-for ends once the subscription is closed (by broker.close() or by
  // the disconnect policy) and the messages already queued have been drained.
  std::jthread consumer([&] {
    for (const herald::Message<int>& m : sub) {
      if (round.first == 0) round.first = *m;
      round.last = *m;
      std::this_thread::sleep_for(*m == 10 ? 50ms : 5ms);
    }
  });

  // The publisher goes as fast as the policy lets it: only `block` ever makes it wait.
  const auto start = std::chrono::steady_clock::now();
  for (int i = 1; i <= kMessages; ++i)
    broker.publish("ticks", i);
  round.publish_time = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - start);

  broker.close();  // closes the subscription: the consumer drains what is queued, then stops
  consumer.join();
  round.stats = sub.stats();
  return round;
}

}  // namespace

int main() {
  const std::array<herald::SubscribeOptions, 4> options = {{
      // Waits for room, at most 10 ms per message; then drops it (for this subscriber only).
      {.capacity = 8, .overflow = herald::Overflow::block, .block_timeout = 10ms},
      // Keeps what is queued and drops the newcomer. The default policy.
      {.capacity = 8, .overflow = herald::Overflow::drop_incoming},
      // Keeps the newest: evicts the oldest queued message to make room.
      {.capacity = 8, .overflow = herald::Overflow::drop_oldest},
      // Gives up on the consumer after 3 overflows in a row; it can still drain its queue.
      {.capacity = 8, .overflow = herald::Overflow::disconnect, .disconnect_after = 3},
  }};

  fmt::print("{} messages, queue capacity 8, consumer 5 ms/message with a 50 ms stall\n\n",
             kMessages);
  fmt::print("{:<14}{:>10}{:>9}{:>11}{:>9}{:>9}{:>10}{:>8}  {}\n", "policy", "publish", "offered",
             "delivered", "dropped", "evicted", "received", "saw", "close reason");
  std::array<Round, 4> rounds;
  bool ok = true;
  for (std::size_t i = 0; i < options.size(); ++i) {
    const Round r = rounds[i] = run(options[i]);
    const herald::SubscriptionStats& s = r.stats;
    fmt::print("{:<14}{:>7} ms{:>9}{:>11}{:>9}{:>9}{:>10}{:>8}  {}\n",
               herald::to_string(options[i].overflow), r.publish_time.count(), s.offered,
               s.delivered, s.dropped, s.evicted, s.received,
               fmt::format("{}..{}", r.first, r.last), herald::to_string(s.close_reason));
    // Exact accounting under every policy: each offer was accepted or dropped, and everything
    // accepted was received or evicted.
    ok = ok && s.offered == s.delivered + s.dropped && s.delivered == s.received + s.evicted;
  }

  // What each policy must have done with a consumer this slow.
  const auto &block = rounds[0].stats, &incoming = rounds[1].stats, &oldest = rounds[2].stats,
             &disconnect = rounds[3].stats;
  ok = ok && block.offered == kMessages && block.dropped == block.dropped_timeout;
  ok = ok && incoming.offered == kMessages && incoming.dropped > 0 && incoming.evicted == 0;
  ok = ok && oldest.offered == kMessages && oldest.dropped == 0 && oldest.evicted > 0;
  ok = ok && rounds[2].last == kMessages;  // drop_oldest always keeps the newest message
  ok = ok && disconnect.close_reason == herald::CloseReason::slow_consumer &&
       disconnect.offered < kMessages;  // nothing is offered to it once it is disconnected
  fmt::print("\n{}\n", ok ? "every policy behaved as documented" : "UNEXPECTED COUNTS");
  return ok ? 0 : 1;
}
