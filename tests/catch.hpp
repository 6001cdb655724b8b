// Includes whichever Catch2 the build found (2.13 from Debian 12, or 3.x).
#pragma once
#if defined(HERALD_CATCH3)
#include <catch2/catch_all.hpp>
#else
#include <catch2/catch.hpp>
#endif
