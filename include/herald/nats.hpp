// The NATS integration, all of it: codecs (nats/codec.hpp), the connection (nats/connection.hpp),
// the Bridge (nats/bridge.hpp) and the ServiceBridge of request-reply (nats/service.hpp).
// Optional: needs the NATS C client (Debian: libnats-dev; CMake target herald::nats); herald.hpp
// does not include it.
#pragma once

#include <herald/nats/bridge.hpp>
#include <herald/nats/codec.hpp>
#include <herald/nats/connection.hpp>
#include <herald/nats/jetstream.hpp>
#include <herald/nats/service.hpp>
