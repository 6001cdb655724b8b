#!/usr/bin/env python3
"""Turns one benchmark run (bench/report.sh) into a Markdown report and a PNG chart.

Inputs, all in the run directory:
  context.txt         "key: value" lines about the run (date, CPU, compiler, flags, ...)
  results.tsv         rows from the custom harnesses (bench/results.hpp): measure / goal; these
                      include the Go peers (bench/peers/), run by the harnesses between their own
                      repetitions, and the interleaved matching comparison of bench_topic_index
  topic_index.json    Google Benchmark JSON of bench_topic_index's other cases (repetitions, not
                      aggregates): linear scan, insert, erase, subscribe/unsubscribe churn
  nats_bridge.json    the same for bench_nats_bridge (absent when the bridge is not built)
  nats_service.json   the same for bench_nats_service (request-reply over NATS)
Outputs, in the same directory:
  benchmarks.md       every table, with medians, min-max and herald's ratio against each peer
  readme_section.md   the run line, the goals table and the chart, for README.md
  chart.gp, *.dat     the gnuplot script and its data; benchmarks.png when gnuplot ran

Standard library only. Exits non-zero when a suite that should have run produced nothing.
"""

import collections
import json
import math
import os
import re
import statistics
import subprocess
import sys

Measure = collections.namedtuple(
    "Measure", "suite workload x contender unit higher median min max samples")
Goal = collections.namedtuple("Goal", "suite what measured target verdict")


def read_context(path):
    ctx = collections.OrderedDict()
    with open(path, encoding="utf-8") as f:
        for line in f:
            if ":" in line:
                key, value = line.split(":", 1)
                ctx[key.strip()] = value.strip()
    return ctx


def read_results(path):
    measures, goals = [], []
    if not os.path.exists(path):
        return measures, goals
    with open(path, encoding="utf-8") as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if cols[0] == "measure" and len(cols) == 11:
                measures.append(Measure(cols[1], cols[2], cols[3], cols[4], cols[5],
                                        cols[6] == "higher", float(cols[7]), float(cols[8]),
                                        float(cols[9]), int(cols[10])))
            elif cols[0] == "goal" and len(cols) == 6:
                goals.append(Goal(cols[1], cols[2], float(cols[3]), cols[4], cols[5]))
            elif line.strip():
                raise SystemExit(f"report: malformed row in {path}: {line!r}")
    return measures, goals


def gbench_samples(path):
    """{benchmark name: [per-repetition run]} from a Google Benchmark JSON file."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    runs = collections.OrderedDict()
    for b in data.get("benchmarks", []):
        if b.get("run_type") != "iteration" or b.get("error_occurred"):
            continue
        name = re.sub(r"/(min_time|iterations|real_time|manual_time)[^/]*", "", b["run_name"])
        runs.setdefault(name, []).append(b)
    return runs


def measure_from(suite, workload, x, contender, unit, higher, values):
    values = sorted(values)
    return Measure(suite, workload, str(x), contender, unit, higher, statistics.median(values),
                   values[0], values[-1], len(values))


def matching(path):
    """Matching measures and goals from bench_topic_index's Google Benchmark cases. TopicIndex
    against the NATS sublist (both workloads) is measured interleaved and comes in results.tsv;
    BM_index_match* in the JSON (a quick look without the Go peer) are left out here."""
    measures, goals = [], []
    runs = gbench_samples(path)
    names = {"BM_linear_scan": "linear scan calling herald::matches"}
    sizes = set()
    for name, reps in sorted(runs.items(), key=lambda kv: (
            kv[0].partition("/")[0],
            int(kv[0].partition("/")[2]) if kv[0].partition("/")[2].isdigit() else 0)):
        family, _, arg = name.partition("/")
        if family in names and arg.isdigit():
            measures.append(measure_from("matching", "match one topic", int(arg), names[family],
                                         "CPU ns/match", False, [r["cpu_time"] for r in reps]))
        if family == "BM_index_insert_erase_one" and arg.isdigit():
            sizes.add(int(arg))

    def median_of(family, n):
        reps = runs.get(f"{family}/{n}")
        return statistics.median(r["cpu_time"] for r in reps) if reps else None

    if len(sizes) > 1:
        lo, hi = min(sizes), max(sizes)
        a, b = median_of("BM_index_insert_erase_one", lo), median_of("BM_index_insert_erase_one", hi)
        if a and b:
            goals.append(Goal("matching", f"subscribe+unsubscribe one pattern: at {hi} / at {lo} "
                              "registered", b / a, "<= 1.5", "met" if b / a <= 1.5 else "MISSED"))
    for name, reps in runs.items():
        if name.startswith("BM_index_insert_all/"):
            n = int(name.split("/")[1])
            ms = statistics.median(r["cpu_time"] for r in reps)  # reported in ms
            measures.append(measure_from("matching", "insert every pattern", n,
                                         "herald TopicIndex", "CPU ms", False,
                                         [r["cpu_time"] for r in reps]))
            goals.append(Goal("matching", f"{n} subscriptions inserted (CPU ms)", ms, "< 1000 ms",
                              "met" if ms < 1000 else "MISSED"))
    return measures, goals


def nats_service(path):
    """Request-reply over NATS: herald on both ends against raw libnats request/reply."""
    measures, goals = [], []
    if not os.path.exists(path):
        return measures, goals
    names = {
        "raw_libnats/request/0": "raw libnats request/reply",
        "raw_libnats/request_send_asap/1": "raw libnats request/reply, SendAsap",
        "herald/service_bridge": "herald Service over ServiceBridge (SendAsap)",
    }
    rates = {}
    for name, reps in gbench_samples(path).items():
        if name in names:
            values = [r["items_per_second"] for r in reps if "items_per_second" in r]
            if values:
                measures.append(measure_from("request", "round trips over NATS, 16 B", "",
                                             names[name], "requests/s", True, values))
                rates[name] = statistics.median(values)
    herald = rates.get("herald/service_bridge")
    raw = rates.get("raw_libnats/request_send_asap/1")
    if herald and raw:
        goals.append(Goal("request", "requests/s over NATS, herald / raw libnats (both SendAsap)",
                          herald / raw, ">= 0.8x", "met" if herald / raw >= 0.8 else "MISSED"))
    return measures, goals


def nats(path):
    measures, goals = [], []
    if not os.path.exists(path):
        return measures, goals
    names = {
        "raw_libnats": "raw libnats publish/subscribe",
        "raw_libnats_copying": "raw libnats, copying at each end",
        "bridge/inline_handler": "herald bridge, inline handler",
        "bridge/pull_subscriber": "herald bridge, pull subscriber",
        "raw_libnats_headers": "raw libnats, 2 headers (read at the receiver)",
        "bridge/inline_handler_headers": "herald bridge, inline handler, 2 headers",
        # At least once through JetStream: acknowledged by the stream, 1024 in flight.
        "raw_libnats_js_async": "raw libnats JetStream async publish",
        "raw_libnats_js_async_msgid": "raw libnats JetStream async publish, Nats-Msg-Id",
        "bridge_js/export": "herald bridge, JetStream export (at least once)",
    }
    rates = {}
    order = list(names)

    def key(item):  # Google Benchmark's interleaving shuffles the order: restore it
        base, _, size = item[0].rpartition("/")
        return (int(size) if size.isdigit() else 0, order.index(base) if base in order else 99)

    for name, reps in sorted(gbench_samples(path).items(), key=key):
        base, _, size = name.rpartition("/")
        if base in names and size.isdigit():
            values = [r["items_per_second"] / 1e3 for r in reps if "items_per_second" in r]
            if values:
                measures.append(measure_from("nats", "bridged messages", f"{size} B", names[base],
                                             "k msgs/s", True, values))
                rates[(base, size)] = statistics.median(values)
    for (base, size), rate in rates.items():
        raw = rates.get(("raw_libnats", size))
        # The goal is for plain messages; raw libnats sends no headers, so no ratio for those.
        if base.startswith("bridge/") and not base.endswith("_headers") and raw:
            goals.append(Goal("nats", f"{size}-byte messages/s, {names[base]} / raw libnats",
                              rate / raw, ">= 0.8x", "met" if rate / raw >= 0.8 else "MISSED"))
        if base == "bridge_js/export":
            for peer in ("raw_libnats_js_async", "raw_libnats_js_async_msgid"):
                other = rates.get((peer, size))
                if other:
                    goals.append(Goal("nats", f"{size}-byte messages/s, {names[base]} / "
                                      f"{names[peer]}", rate / other, ">= 0.8x",
                                      "met" if rate / other >= 0.8 else "MISSED"))
    return measures, goals


# ---- layout ----

SUITES = [
    ("queue", "BoundedQueue vs lock-free and blocking queues"),
    ("pool", "WorkerPool vs thread pools"),
    ("broker", "Broker vs the Go reference broker, its C++ translation and ZeroMQ inproc"),
    ("matching", "Topic matching vs NATS's sublist"),
    ("sync", "Concurrency toolkit vs plain baselines"),
    ("request", "Request-reply vs the Go reference broker and raw libnats"),
    ("nats", "NATS bridge vs raw libnats"),
    ("metrics", "What metrics cost: fan-out with metrics on vs off, histogram record, exposition"),
    ("retained", "Retained messages: publish with retention, subscribe with a replay"),
    ("flow", "Handler flow control: timers vs asio steady_timer, keyed parallelism, batches"),
]


def fmt_num(v):
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def advantage(herald, peer):
    """How many times better herald is than `peer` (> 1: herald better), from medians."""
    if herald.median <= 0 or peer.median <= 0:
        return None
    return herald.median / peer.median if herald.higher else peer.median / herald.median


def is_herald(contender):
    return contender.startswith("herald")


# Peers that do a different kind of work than herald's first row, and the word that names it:
# such a peer is compared with the herald row of the same kind (raw JetStream publishing with
# herald's JetStream export, not with its core-NATS bridge).
SAME_WORK_KEYS = ("JetStream",)


def work_kind(contender):
    return next((k for k in SAME_WORK_KEYS if k in contender), None)


def reference_for(peer, rows):
    """The herald row `peer` is compared with, from the rows of one table cell, or None: the
    first doing the same kind of work, else the first."""
    heralds = [m for m in rows if is_herald(m.contender)]
    same = [m for m in heralds if work_kind(m.contender) == work_kind(peer.contender)]
    return (same or heralds or [None])[0]


def grouped(measures):
    """{(suite, workload): {x: [measures in order]}}, in first-seen order."""
    out = collections.OrderedDict()
    for m in measures:
        out.setdefault((m.suite, m.workload), collections.OrderedDict()).setdefault(
            m.x, []).append(m)
    return out


def workload_table(workload, by_x):
    first = next(iter(by_x.values()))[0]
    unit = f"{first.unit}, {'higher' if first.higher else 'lower'} is better"
    has_x = any(x for x in by_x)
    lines = [f"**{workload}** ({unit})", "",
             ("| " + ("x | " if has_x else "") + "contender | median | min - max | runs | herald vs it |"),
             ("|" + ("---:|" if has_x else "") + "---|---:|---:|---:|---:|")]
    for x, rows in by_x.items():
        for m in rows:
            herald = None if is_herald(m.contender) else reference_for(m, rows)
            ratio = advantage(herald, m) if herald else None
            cells = ([x] if has_x else []) + [
                f"**{m.contender}**" if is_herald(m.contender) else m.contender,
                fmt_num(m.median), f"{fmt_num(m.min)} - {fmt_num(m.max)}", str(m.samples),
                f"{ratio:.2f}x" if ratio else ""]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


# The README's compact view: per suite, contenders down, workloads (or x) across.
README_MATRICES = [
    ("queue", None, "BoundedQueue, capacity 1024, 8-byte items (M items/s; ping-pong ns, lower is "
     "better)"),
    ("pool", None, "WorkerPool, 2 threads (ns per empty task; submit-to-start ns; lower is better)"),
    ("broker", "fan-out, lossless", "Broker fan-out, lossless, 32-byte payload, by subscribers "
     "(M deliveries/s)"),
    ("broker", "round trip (ping/pong topics)", "Broker round trip on ping/pong topics, by thread "
     "placement (ns, lower is better)"),
    ("matching", "match one topic", "Topic matching, by patterns registered (CPU ns per match)"),
    ("nats", "bridged messages", "NATS bridge vs raw libnats, by payload size (k msgs/s)"),
]


def matrix(measures, suite, workload, title):
    columns, rows, cell = [], [], {}
    for (s, w), by_x in grouped(measures).items():
        if s != suite or (workload and w != workload) or w in CHART_SKIP:
            continue
        for x, ms in by_x.items():
            col = x if workload else w
            columns.append(col)
            for m in ms:
                if m.contender not in rows:
                    rows.append(m.contender)
                herald = None if is_herald(m.contender) else reference_for(m, ms)
                ratio = advantage(herald, m) if herald else None
                cell[(m.contender, col)] = fmt_num(m.median) + (f" ({ratio:.2f}x)" if ratio else "")
    if not columns:
        return []
    if all(c.isdigit() for c in columns):
        columns.sort(key=int)
    rows.sort(key=lambda r: not is_herald(r))  # herald first, the peers in their own order
    lines = [f"**{title}**", "", "| | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for r in rows:
        name = f"**{r}**" if is_herald(r) else r
        lines.append(f"| {name} | " + " | ".join(cell.get((r, c), "") for c in columns) + " |")
    return lines + [""]


def ratio_text(v):
    """Two decimals, or three when two would round onto a threshold like 1.50."""
    return f"{v:.3f}" if v < 10 and round(v, 2) != v and abs(v * 2 - round(v * 2)) < 0.01 else \
        f"{v:.2f}"


def goals_table(goals):
    lines = ["| area | goal (DESIGN.md) | measured | target | verdict |", "|---|---|---:|---|---|"]
    for g in goals:
        verdict = {"met": "met", "info": "diagnostic, not a goal"}.get(g.verdict, "**NOT MET**")
        lines.append(f"| {g.suite} | {g.what} | {ratio_text(g.measured)} | {g.target} | {verdict} |")
    return lines


def run_line(ctx):
    return (f"Run {ctx.get('date', '?')} on {ctx.get('cpu', '?')} ({ctx.get('cores', '?')} cores, "
            f"{ctx.get('os', '?')}), {ctx.get('compiler', '?')}, flags `{ctx.get('flags', '?')}`, "
            f"Go peers built with {ctx.get('go', '?')}, "
            f"{ctx.get('repetitions', '?')} repetitions interleaved round-robin, medians; load "
            f"average {ctx.get('load_start', '?')} at the start and {ctx.get('load_end', '?')} at "
            f"the end; commit {ctx.get('commit', '?')}.")


# ---- chart ----

CHART_PANELS = [
    # (suite, workload, title); clusters are the workload (or x) values, bars are the peers
    ("queue", None, "BoundedQueue: herald's advantage over each queue"),
    ("pool", None, "WorkerPool: herald's advantage over each pool"),
    ("broker", "fan-out, lossless", "Broker fan-out, lossless deliveries/s, by subscribers"),
    ("matching", "match one topic", "Topic matching ns/match, by patterns registered"),
]

# A parked consumer's CPU against spinning peers is 1,000-30,000x: off any shared scale.
CHART_SKIP = {"idle consumer"}


def panel_data(measures, suite, workload):
    """(cluster labels, peer names, ratios[cluster][peer]) for one chart panel."""
    clusters, peers, ratio = [], [], {}
    for (s, w), by_x in grouped(measures).items():
        if s != suite or (workload and w != workload) or w in CHART_SKIP:
            continue
        for x, rows in by_x.items():
            if not any(is_herald(m.contender) for m in rows):
                continue
            label = x if workload else w
            if label not in clusters:
                clusters.append(label)
            for m in rows:
                if is_herald(m.contender):
                    continue
                if m.contender not in peers:
                    peers.append(m.contender)
                ratio[(label, m.contender)] = advantage(reference_for(m, rows), m)
    if all(c.isdigit() for c in clusters):
        clusters.sort(key=int)  # Google Benchmark's interleaving shuffles the order
    return clusters, peers, ratio


def write_chart(measures, out_dir, smoke):
    panels = []
    for i, (suite, workload, title) in enumerate(CHART_PANELS):
        clusters, peers, ratio = panel_data(measures, suite, workload)
        if not clusters:
            continue
        dat = os.path.join(out_dir, f"chart_{suite}.dat")
        with open(dat, "w", encoding="utf-8") as f:
            f.write("cluster\t" + "\t".join(f'"{p}"' for p in peers) + "\n")
            for c in clusters:
                cells = [ratio.get((c, p)) for p in peers]
                f.write(f'"{c}"\t' + "\t".join(f"{v:.4g}" if v else "NaN" for v in cells) + "\n")
        top = max([v for v in ratio.values() if v] + [1.0])
        panels.append((dat, title, len(peers), 10 ** (math.ceil(math.log10(top)) + 1)))
    if not panels:
        return None
    gp = os.path.join(out_dir, "chart.gp")
    png = os.path.join(out_dir, "benchmarks.png")
    rows = (len(panels) + 1) // 2
    with open(gp, "w", encoding="utf-8") as f:
        f.write(f"""set terminal pngcairo noenhanced size 1600,{560 * rows} font ",10"
set output "{png}"
set multiplot layout {rows},2 title "herald vs peers: how many times better herald is (median ratio, same run; log scale, > 1 = herald better){' — SMOKE SIZES, NOT MEANINGFUL' if smoke else ''}"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set logscale y
set ytics ("0.1x" 0.1, "0.5x" 0.5, "1x" 1, "2x" 2, "5x" 5, "10x" 10, "100x" 100, "1000x" 1000, \
  "10^4x" 10000, "10^5x" 100000)
set grid ytics
set key top left Left reverse font ",8" samplen 1.5 maxrows 4
set xtics nomirror
set boxwidth 0.9
""")
        for dat, title, n, top in panels:
            f.write(f'set title "{title}"\nset yrange [0.1:{top:g}]\n')
            f.write(f"plot 1 with lines lc rgb 'black' dt 2 notitle, \\\n")
            f.write(", \\\n".join(f"  '{dat}' using {k + 2}:xtic(1) title columnheader({k + 2})"
                                  for k in range(n)) + "\n")
        f.write("unset multiplot\n")
    try:
        subprocess.run(["gnuplot", gp], check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"report: gnuplot failed ({e}); the chart was not drawn") from e
    return png


BEGIN = "<!-- benchmark-report:begin (written by bench/report.sh --publish) -->"
END = "<!-- benchmark-report:end -->"


def publish(out, root):
    """Copies the report into docs/ and replaces the README's marked benchmark section."""
    docs = os.path.join(root, "docs")
    os.makedirs(docs, exist_ok=True)
    for name in ("benchmarks.md", "benchmarks.png"):
        src = os.path.join(out, name)
        if os.path.exists(src):
            with open(src, "rb") as f, open(os.path.join(docs, name), "wb") as g:
                g.write(f.read())
    readme_path = os.path.join(root, "README.md")
    with open(readme_path, encoding="utf-8") as f:
        readme = f.read()
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"report: README.md has no '{BEGIN}' ... '{END}' section")
    with open(os.path.join(out, "readme_section.md"), encoding="utf-8") as f:
        section = f.read()
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(readme_path, "w", encoding="utf-8") as f:
        f.write(head + BEGIN + "\n" + section + END + tail)
    print(f"report: published to {docs} and README.md")


def yardstick_goals(measures):
    """Goals that compare two suites of the same run: what one broker delivery costs beyond
    the queue hop it contains (DESIGN.md: a 1-subscriber Publisher fan-out >= 0.33x herald's own
    BoundedQueue 1P1C). Not interleaved within one process like the other ratios: the two
    suites run one after the other."""
    def median(suite, workload, x, contender):
        return next((m.median for m in measures if (m.suite, m.workload, m.x, m.contender) ==
                     (suite, workload, x, contender)), None)
    queue = median("queue", "1P1C", "", "herald::BoundedQueue")
    out = []
    for contender in ("herald Publisher", "herald publish"):
        broker = median("broker", "fan-out, lossless", "1", contender)
        if queue and broker:
            r = broker / queue
            out.append(Goal("broker", f"fan-out 1 lossless deliveries/s, {contender} / herald "
                            "BoundedQueue 1P1C items/s (bench_queue, same run)",
                            r, ">= 0.33x", "met" if r >= 0.33 else "MISSED"))
    return out


def main():
    args = sys.argv[1:]
    if len(args) not in (1, 3) or (len(args) == 3 and args[1] != "--publish"):
        raise SystemExit("usage: report.py RUN_DIR [--publish REPO_ROOT]")
    out = args[0]
    ctx = read_context(os.path.join(out, "context.txt"))
    smoke = ctx.get("mode") == "smoke"
    measures, goals = read_results(os.path.join(out, "results.tsv"))
    for part in (matching(os.path.join(out, "topic_index.json")),
                 nats(os.path.join(out, "nats_bridge.json")),
                 nats_service(os.path.join(out, "nats_service.json"))):
        measures += part[0]
        goals += part[1]

    expected = ["queue", "pool", "broker", "matching", "metrics", "flow"] + (
        ["nats"] if ctx.get("nats") == "built" else [])
    missing = [s for s in expected if not any(m.suite == s for m in measures)]
    if missing:
        raise SystemExit(f"report: no results for {', '.join(missing)}: a benchmark failed")
    # The real peers are run, never quoted: their rows must be there.
    for suite, prefix in (("broker", "Go reference broker"), ("matching", "NATS sublist")):
        if not any(m.suite == suite and m.contender.startswith(prefix) for m in measures):
            raise SystemExit(f"report: no '{prefix}' rows in {suite}: the Go peer did not run")

    goals += yardstick_goals(measures)
    png = write_chart(measures, out, smoke)
    missed = [g for g in goals if g.verdict == "MISSED"]
    judged = [g for g in goals if g.verdict != "info"]

    md = ["# herald benchmark report", ""]
    if smoke:
        md += ["**SMOKE RUN: tiny sizes, one repetition. These numbers prove the pipeline works; "
               "they mean nothing about speed.**", ""]
    md += [run_line(ctx), "",
           "Every figure is measured in one run, each suite by one harness, repetitions "
           "interleaved round-robin over the contenders, medians; the Go peers (the reference "
           "broker of DESIGN.md and NATS's sublist, bench/peers/) are real programs the harness "
           "runs once per repetition between its own contenders, each timing itself. "
           "\"herald vs it\" is how many times better "
           "herald's median is than that contender's (> 1: herald better; for rates herald / it, "
           "for times it / herald). Against the first herald row when a suite has several.",
           "", f"Goals met: {len(judged) - len(missed)} of {len(judged)}.", ""]
    md += ["## Goals", ""] + goals_table(goals) + [""]
    if png:
        md += ["## Chart", "", f"![herald vs peers]({os.path.basename(png)})", ""]
    by_suite = grouped(measures)
    for suite, title in SUITES:
        keys = [k for k in by_suite if k[0] == suite]
        if not keys:
            continue
        md += [f"## {title}", ""]
        for key in keys:
            md += workload_table(key[1], by_suite[key])
    with open(os.path.join(out, "benchmarks.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md))

    readme = [run_line(ctx), ""]
    if smoke:
        readme += ["**SMOKE RUN: not meaningful.**", ""]
    readme += ["Medians; in parentheses, how many times better herald is than that row "
               "(> 1: herald better).", ""]
    for suite, workload, title in README_MATRICES:
        readme += matrix(measures, suite, workload, title)
    if png:
        readme += ["![herald vs peers](docs/benchmarks.png)", ""]
    readme += [f"**Goals of DESIGN.md: {len(judged) - len(missed)} of {len(judged)} met in this "
               "run.** Not met:", ""]
    readme += [f"- {g.suite}: {g.what} = **{ratio_text(g.measured)}** (goal {g.target})"
               for g in missed]
    readme += ["", "Every goal with its ratio, and every table with min-max and repetitions: "
               "[docs/benchmarks.md](docs/benchmarks.md).", ""]
    with open(os.path.join(out, "readme_section.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(readme))

    print(f"report: {len(measures)} measurements, {len(judged)} goals "
          f"({len(missed)} not met) -> {os.path.join(out, 'benchmarks.md')}"
          + (f", {png}" if png else ", no chart"))
    if len(args) == 3:
        if smoke:
            raise SystemExit("report: a smoke run is never published")
        publish(out, args[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
