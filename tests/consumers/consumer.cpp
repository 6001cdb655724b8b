// A user's program: includes the umbrella header and checks a few real results.
#include <herald/herald.hpp>

#include <cstdio>
#include <string>

int main() {
  const bool syntax_ok = herald::is_valid_topic("orders.eu.created") &&
                         !herald::is_valid_topic("orders..eu") &&
                         herald::matches("orders.eu.created", "orders.*.created") &&
                         !herald::matches("orders", "orders.>");
  herald::Broker<std::string> broker;
  auto sub = broker.subscribe("orders.>");
  broker.publish("orders.eu.created", "order 1");
  const auto m = sub.try_receive();
  const bool broker_ok = m && m->value() == "order 1" && m->topic() == "orders.eu.created";
  const bool ok = syntax_ok && broker_ok;
  std::puts(ok ? "consumer: herald works" : "consumer: herald gave a wrong answer");
  return ok ? 0 : 1;
}
