// The umbrella header: everything public in herald except the optional integrations
// (herald/nats.hpp needs libnats; herald/fmt.hpp needs fmt).
#pragma once

#include <herald/topic.hpp>
#include <herald/version.hpp>
