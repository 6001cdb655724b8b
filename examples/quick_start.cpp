// Quick start: subscribe to a pattern, publish to topics, receive what matched.
#include <herald/broker.hpp>

#include <fmt/core.h>

#include <string>

int main() {
  herald::Broker<std::string> broker;  // one broker per message type

  auto sub = broker.subscribe("greetings.*");  // '*' matches exactly one token

  broker.publish("greetings.en", "hello");
  broker.publish("greetings.fr", "bonjour");
  broker.publish("weather.fr", "sunny");  // matches no subscription: nobody gets it

  while (auto m = sub.try_receive()) {  // never blocks; sub.receive() would wait
    fmt::print("{} -> {}\n", m->topic(), m->value());
  }

  // The tour doubles as a test: fail loudly if the two greetings did not arrive.
  const auto stats = sub.stats();
  fmt::print("received {} of {} published\n", stats.received, broker.stats().published);
  return stats.received == 2 ? 0 : 1;
}
