// The umbrella header: everything public in herald except the optional integrations
// (herald/nats.hpp needs libnats; herald/fmt.hpp needs fmt).
#pragma once

#include <herald/bounded_queue.hpp>
#include <herald/broker.hpp>
#include <herald/message.hpp>
#include <herald/policy.hpp>
#include <herald/subscription.hpp>
#include <herald/topic.hpp>
#include <herald/topic_index.hpp>
#include <herald/version.hpp>
#include <herald/worker_pool.hpp>
