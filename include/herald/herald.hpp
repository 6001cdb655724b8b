// The umbrella header: every public header of herald except the optional integrations
// (herald/nats.hpp needs libnats; herald/fmt.hpp needs fmt).
#pragma once

#include <herald/bounded_queue.hpp>
#include <herald/broker.hpp>
#include <herald/executor.hpp>
#include <herald/message.hpp>
#include <herald/policy.hpp>
#include <herald/stats.hpp>
#include <herald/subscription.hpp>
#include <herald/topic.hpp>
#include <herald/topic_index.hpp>
#include <herald/version.hpp>
#include <herald/worker_pool.hpp>
