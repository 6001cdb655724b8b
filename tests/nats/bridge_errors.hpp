// What bridges report, for the tests that check the error text: a collector for on_error, and
// what a bridge's constructor throws for given options.
#pragma once

#include <herald/nats/bridge.hpp>

#include <exception>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
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

/// What constructing a Bridge<T> on `broker` with `options` throws, as "<kind>: <what()>", or
/// "no error". The url is a port nothing listens on: options that pass every check reach the
/// network and fail there with a NatsError naming it.
template <class T>
std::string construction_error(herald::Broker<T>& broker, herald::nats::BridgeOptions options) {
  options.url = "nats://127.0.0.1:1";
  try {
    herald::nats::Bridge<T> bridge(broker, std::move(options));
  } catch (const herald::InvalidTopic& e) {
    return std::string("InvalidTopic: ") + e.what();
  } catch (const std::length_error& e) {
    return std::string("length_error: ") + e.what();
  } catch (const std::invalid_argument& e) {
    return std::string("invalid_argument: ") + e.what();
  } catch (const herald::nats::NatsError& e) {
    return std::string("NatsError: ") + e.what();
  } catch (const std::exception& e) {
    return std::string("other: ") + e.what();
  }
  return "no error";
}

}  // namespace herald_test
