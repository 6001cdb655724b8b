// herald's version, as numbers and as a string.
#pragma once

#define HERALD_VERSION_MAJOR 0
#define HERALD_VERSION_MINOR 1
#define HERALD_VERSION_PATCH 0
#define HERALD_VERSION_STRING "0.1.0"
