// The umbrella header: every public header of herald except the optional integrations
// (herald/nats.hpp needs libnats; herald/fmt.hpp needs fmt).
#pragma once

#include <herald/bounded_queue.hpp>
#include <herald/broker.hpp>
#include <herald/circuit_breaker.hpp>
#include <herald/dedup_window.hpp>
#include <herald/executor.hpp>
#include <herald/message.hpp>
#include <herald/policy.hpp>
#include <herald/rate_limiter.hpp>
#include <herald/stats.hpp>
#include <herald/subscription.hpp>
#include <herald/task_group.hpp>
#include <herald/topic.hpp>
#include <herald/topic_index.hpp>
#include <herald/version.hpp>
#include <herald/weighted_semaphore.hpp>
#include <herald/worker_pool.hpp>
