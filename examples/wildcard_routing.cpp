// Wildcard routing: several subscriptions with `*` and `>` patterns on one broker, and which
// of them each published message reached.
#include <herald/broker.hpp>

#include <fmt/core.h>

#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace {

struct Subscriber {
  std::string_view name;
  std::string_view pattern;
  std::size_t expected;  // how many of the topics below it should receive
};

}  // namespace

int main() {
  // What each pattern means:
  //   `*` stands for exactly one token, `>` for one or more trailing tokens (last token only).
  constexpr std::array<Subscriber, 5> subscribers = {{
      {"eu-billing", "orders.eu.created", 1},  // a literal pattern: exactly one topic
      {"creations", "orders.*.created", 2},    // any region, but only `created`
      {"all-orders", "orders.>", 4},           // everything under `orders.`, at any depth
      {"eu-desk", "*.eu.>", 4},                // any first token, then `eu`, then 1+ tokens
      {"audit", ">", 5},                       // every topic
  }};
  constexpr std::array<std::string_view, 5> topics = {"orders.eu.created", "orders.us.created",
                                                      "orders.eu.shipped", "orders.eu.created.late",
                                                      "payments.eu.settled"};

  herald::Broker<int> broker;
  std::vector<herald::Subscription<int>> subs;
  for (const Subscriber& s : subscribers)
    subs.push_back(broker.subscribe(s.pattern));

  // Publishing reports how many subscriptions the topic matched.
  int value = 0;
  for (const std::string_view topic : topics) {
    const herald::PublishResult r = broker.publish(topic, ++value);
    fmt::print("publish #{} to {:<24} -> matched {} subscriptions\n", value, topic, r.matched);
  }
  fmt::print("\n");

  // Each subscription drains its own queue: who got what.
  bool ok = true;
  for (std::size_t i = 0; i < subs.size(); ++i) {
    fmt::print("{:<10} {:<18} got:", subscribers[i].name, subscribers[i].pattern);
    std::size_t got = 0;
    while (auto m = subs[i].try_receive()) {
      fmt::print(" #{}", m->value());
      ++got;
    }
    fmt::print("\n");
    if (got != subscribers[i].expected) {
      fmt::print("  expected {} messages, got {}\n", subscribers[i].expected, got);
      ok = false;
    }
  }

  // Only `audit` (`>`) matches an unrelated topic. Once it leaves, a publish there reaches
  // nobody: that is counted, not an error.
  subs.back().unsubscribe();
  const auto r = broker.publish("inventory.restocked", 0);
  fmt::print("\nafter `audit` unsubscribed, inventory.restocked matched {} (no_subscriber={})\n",
             r.matched, broker.stats().no_subscriber);
  return ok && r.matched == 0 ? 0 : 1;
}
