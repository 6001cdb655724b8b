// A collector for what a bridge's on_error reports, for the tests that check the error text.
#pragma once

#include <herald/nats/bridge.hpp>

#include <functional>
#include <mutex>
#include <vector>

namespace herald_test {

struct BridgeErrors {
  std::mutex mutex;
  std::vector<herald::nats::BridgeError> seen;
  /// BridgeOptions::on_error: called from the bridge's and the client's threads.
  std::function<void(const herald::nats::BridgeError&)> sink() {
    return [this](const herald::nats::BridgeError& e) {
      std::lock_guard lock(mutex);
      seen.push_back(e);
    };
  }
  std::vector<herald::nats::BridgeError> snapshot() {
    std::lock_guard lock(mutex);
    return seen;
  }
};

}  // namespace herald_test
