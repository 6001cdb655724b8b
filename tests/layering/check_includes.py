#!/usr/bin/env python3
"""Fails when an include in include/herald runs up a floor or closes a cycle.

The floors are DESIGN.md's "Layout": a header may include headers of its own floor or below, never
above; detail/ headers include only detail/ headers; and no chain of includes may come back to
where it started. A header that is not in the table below fails too: give it a floor.

    python3 tests/layering/check_includes.py include/herald
"""
import os
import re
import sys

# (pattern, floor); the first pattern that matches a header's path (relative to include/herald)
# gives its floor.
FLOORS = [
    (r"detail/.*", 1),
    (r"(topic|version|headers)\.hpp", 1),
    # dedup_window: a standalone tool (like bounded_queue) that handler subscriptions use for
    # HandlerOptions::dedup, so it sits below handler_state.
    (r"(message|policy|stats|topic_index|bounded_queue|executor|dedup_window)\.hpp", 2),
    (r"(worker_pool|subscription_state|handler_state)\.hpp", 3),
    (r"subscription\.hpp", 4),
    (r"broker\.hpp", 5),
    (r"(nats/.*|nats|fmt|request|metrics|task_group|weighted_semaphore|circuit_breaker"
     r"|rate_limiter|retained)\.hpp", 6),
    (r"herald\.hpp", 7),
]
INCLUDE = re.compile(r'^\s*#\s*include\s*<herald/([^>]+)>', re.M)


def floor_of(header):
    for pattern, floor in FLOORS:
        if re.fullmatch(pattern, header):
            return floor
    return None


def main(root):
    graph = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".hpp"):
                path = os.path.join(dirpath, name)
                header = os.path.relpath(path, root).replace(os.sep, "/")
                with open(path, encoding="utf-8") as f:
                    graph[header] = INCLUDE.findall(f.read())
    problems = []
    for header, includes in sorted(graph.items()):
        floor = floor_of(header)
        if floor is None:
            problems.append(f"{header}: no floor assigned (add it to FLOORS in {sys.argv[0]})")
            continue
        for inc in includes:
            if inc not in graph:
                problems.append(f"{header}: includes <herald/{inc}>, which does not exist")
                continue
            target = floor_of(inc)
            if target is not None and target > floor:
                problems.append(f"{header} (floor {floor}) includes {inc} (floor {target}): upward")
            if header.startswith("detail/") and not inc.startswith("detail/"):
                problems.append(f"{header}: a detail/ header includes the public {inc}")
    # Cycles: depth-first search with colours.
    colour = {h: 0 for h in graph}
    stack = []

    def visit(h):
        colour[h] = 1
        stack.append(h)
        for inc in graph[h]:
            if inc not in graph:
                continue
            if colour[inc] == 1:
                cycle = stack[stack.index(inc):] + [inc]
                problems.append("cycle: " + " -> ".join(cycle))
            elif colour[inc] == 0:
                visit(inc)
        stack.pop()
        colour[h] = 2

    for h in sorted(graph):
        if colour[h] == 0:
            visit(h)
    edges = sum(len(v) for v in graph.values())
    if problems:
        print("\n".join(problems))
        print(f"include graph: {len(graph)} headers, {edges} includes, {len(problems)} problem(s)")
        return 1
    print(f"include graph: {len(graph)} headers, {edges} includes, every one pointing down or "
          f"across a floor, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "include/herald"))
