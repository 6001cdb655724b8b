// A user's program: includes the umbrella header and checks a few real results.
#include <herald/herald.hpp>

#include <cstdio>

int main() {
  const bool ok =
      herald::is_valid_topic("orders.eu.created") && !herald::is_valid_topic("orders..eu") &&
      herald::matches("orders.eu.created", "orders.*.created") &&
      herald::matches("orders.eu.created", "orders.>") && !herald::matches("orders", "orders.>");
  std::puts(ok ? "consumer: herald works" : "consumer: herald gave a wrong answer");
  return ok ? 0 : 1;
}
