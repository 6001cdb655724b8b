// Topic syntax: which topics a pattern selects, and what a bad topic is told.
#include <herald/topic.hpp>

#include <fmt/core.h>

#include <array>
#include <string_view>

int main() {
  constexpr std::array<std::string_view, 5> topics = {"orders.eu.created", "orders.us.created",
                                                      "orders.eu.shipped", "orders.eu.created.late",
                                                      "payments.eu.settled"};
  constexpr std::array<std::string_view, 5> patterns = {
      "orders.eu.created",  // literal: exactly one topic
      "orders.*.created",   // '*' is exactly one token
      "orders.>",           // '>' is one or more trailing tokens
      "*.eu.>",             // combine them
      ">"};                 // everything

  for (const auto pattern : patterns) {
    fmt::print("{:<20} selects:", pattern);
    for (const auto topic : topics) {
      if (herald::matches(topic, pattern)) fmt::print(" {}", topic);
    }
    fmt::print("\n");
  }

  // Bad input gets a clear error before anything happens.
  for (const std::string_view bad : {"orders..eu", "orders.*", "orders eu"}) {
    try {
      herald::validate_topic(bad);
    } catch (const herald::InvalidTopic& e) {
      fmt::print("rejected: {}\n", e.what());
    }
  }
  return 0;
}
