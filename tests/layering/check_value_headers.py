#!/usr/bin/env python3
"""Value types drag in no threading: fails when a header of plain values (message.hpp, stats.hpp,
policy.hpp, topic.hpp, ...) pulls in a threading header, standard or herald's, directly or not.

    python3 tests/layering/check_value_headers.py CXX INCLUDE_DIR

Prints, for each checked header, how many lines it preprocesses to and how many headers it
includes in all. libstdc++'s own internals (bits/...) are not judged: in C++20 <atomic> and
<memory> reach futex code through bits/atomic_wait.h, which no library built on std::atomic can
avoid; what is checked is that none of herald's or the standard's threading headers is included.
"""
import subprocess
import sys

VALUE_HEADERS = ["message.hpp", "policy.hpp", "stats.hpp", "topic.hpp", "topic_index.hpp",
                 "version.hpp"]
FORBIDDEN_STD = ["thread", "stop_token", "mutex", "shared_mutex", "condition_variable", "future",
                 "semaphore", "latch", "barrier"]
FORBIDDEN_HERALD = ["herald/detail/parking.hpp", "herald/bounded_queue.hpp",
                    "herald/worker_pool.hpp", "herald/executor.hpp", "linux/futex.h"]


def deps(cxx, include, header):
    src = f"#include <herald/{header}>\n"
    out = subprocess.run([cxx, "-std=c++20", "-M", "-I", include, "-x", "c++", "-"],
                         input=src, capture_output=True, text=True, check=True).stdout
    files = [t for t in out.replace("\\\n", " ").split() if not t.endswith(":")]
    lines = subprocess.run([cxx, "-std=c++20", "-E", "-P", "-I", include, "-x", "c++", "-"],
                           input=src, capture_output=True, text=True, check=True).stdout.count("\n")
    return files, lines


def main(cxx, include):
    failed = False
    for header in VALUE_HEADERS:
        files, lines = deps(cxx, include, header)
        bad = [f for f in files
               if any(f.endswith("/" + name) for name in FORBIDDEN_STD)
               or any(f.endswith(name) for name in FORBIDDEN_HERALD)]
        verdict = "ok" if not bad else "pulls in threading: " + ", ".join(bad)
        print(f"herald/{header}: {lines} preprocessed lines, {len(files)} headers: {verdict}")
        failed = failed or bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
