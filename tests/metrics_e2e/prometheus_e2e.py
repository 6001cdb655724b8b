#!/usr/bin/env python3
"""End to end: a real Prometheus scrapes examples/metrics_endpoint, and its HTTP API must agree
with what the example did.

    python3 prometheus_e2e.py METRICS_ENDPOINT PROMETHEUS PROMTOOL [--keep DIR]

1. `metrics_endpoint --print` writes one exposition; `promtool check metrics` must accept it.
2. The example serves /metrics on loopback, publishing RATE orders a second, each handled (busy)
   for WORK_US microseconds; Prometheus (temporary directory, 1 s scrape interval) scrapes it.
   Prometheus asks for OpenMetrics, so its scrape checks herald's OpenMetrics output.
3. From Prometheus's HTTP API: up == 1; rate() of the handler subscription's delivered counter
   must be RATE within 20 %; the median of herald_handler_duration_seconds (histogram_quantile)
   must be WORK_US within the resolution of the buckets ([0.75, 1.5] x WORK_US).
Bounded: gives up after 30 s. Exits 77 (CTest: skipped) only when prometheus is not installed.
With --keep DIR (scripts/metrics_graph.sh), it scrapes for 30 s instead of 7 and writes the
series of rate(delivered) and the handler's p50 and p99 over the run to DIR/series.tsv.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

RATE = 200
WORK_US = 200
DEADLINE_S = 30


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(port, expr):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"query {expr!r} failed: {body}")
    return body["data"]["result"]


def scalar(port, expr):
    result = query(port, expr)
    if len(result) != 1:
        return None
    return float(result[0]["value"][1])


def main():
    args = sys.argv[1:]
    keep = None
    if "--keep" in args:
        i = args.index("--keep")
        keep = args[i + 1]
        del args[i:i + 2]
    example, prometheus, promtool = args
    global DEADLINE_S
    scrapes = 7
    if keep:
        DEADLINE_S, scrapes = 60, 30
    if not prometheus or not os.access(prometheus, os.X_OK):
        print("SKIP: prometheus is not installed (Debian package 'prometheus'; "
              "scripts/test.sh installs it)")
        return 77
    start = time.monotonic()

    # 1. promtool on one exposition in the 0.0.4 text format.
    text = subprocess.run([example, "--print"], capture_output=True, text=True, check=True,
                          timeout=20).stdout
    families = sorted({line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")})
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=20)
    print(f"promtool check metrics: exit {lint.returncode} {lint.stdout}{lint.stderr}".strip())
    print(f"{len(families)} metric families: {' '.join(families)}")
    if lint.returncode != 0:
        return 1
    # The scrape configuration README.md shows.
    config = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples",
                          "prometheus.yml")
    check = subprocess.run([promtool, "check", "config", config], capture_output=True, text=True,
                           timeout=20)
    print(f"promtool check config examples/prometheus.yml: exit {check.returncode}")
    if check.returncode != 0:
        print(check.stdout + check.stderr)
        return 1

    tmp = tempfile.mkdtemp(prefix="herald_prom_")
    procs = []
    try:
        app = subprocess.Popen([example, "--port", "0", "--rate", str(RATE), "--work-us",
                                str(WORK_US), "--seconds", str(DEADLINE_S)],
                               stdout=subprocess.PIPE, text=True)
        procs.append(app)
        line = app.stdout.readline()
        print(f"example: {line.strip()}")
        app_port = int(line.split("127.0.0.1:")[1].split(";")[0])

        prom_port = free_port()
        with open(os.path.join(tmp, "prometheus.yml"), "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: herald
    static_configs:
      - targets: ['127.0.0.1:{app_port}']
""")
        log = open(os.path.join(tmp, "prometheus.log"), "w")
        prom = subprocess.Popen([prometheus, f"--config.file={tmp}/prometheus.yml",
                                 f"--storage.tsdb.path={tmp}/data",
                                 f"--web.listen-address=127.0.0.1:{prom_port}",
                                 "--log.level=warn"], stdout=log, stderr=log)
        procs.append(prom)

        def remaining():
            return DEADLINE_S - (time.monotonic() - start)

        # Ready, then enough scrapes for a 5 s rate.
        while True:
            if remaining() < 0 or prom.poll() is not None:
                print(open(os.path.join(tmp, "prometheus.log")).read())
                print("FAIL: prometheus did not become ready")
                return 1
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/-/ready", timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        delivered = 'herald_subscription_delivered_total{job="herald",kind="handler"}'
        while True:
            n = scalar(prom_port, f"count_over_time({delivered}[1m])")
            if n is not None and n >= scrapes:
                break
            if remaining() < 0:
                print(f"FAIL: Prometheus has {n} scrapes of the example, wanted {scrapes}")
                print(query(prom_port, 'up'))
                return 1
            time.sleep(0.5)

        up = scalar(prom_port, 'up{job="herald"}')
        rate = scalar(prom_port, f"rate({delivered}[5s])")
        p50 = scalar(prom_port, 'histogram_quantile(0.5, rate(herald_handler_duration_seconds_bucket'
                                '{job="herald"}[5s]))')
        p99 = scalar(prom_port, 'histogram_quantile(0.99, rate(herald_handler_duration_seconds_bucket'
                                '{job="herald"}[5s]))')
        dropped = scalar(prom_port, 'sum(herald_subscription_dropped_total{job="herald"})')
        topics = query(prom_port, 'rate(herald_topic_published_total{job="herald"}[5s])')
        print(f"Prometheus API: up={up} rate(delivered[5s])={rate} /s (published {RATE}/s), "
              f"handler p50={p50} s p99={p99} s (work {WORK_US} us), dropped={dropped}, "
              f"topic rates={[(t['metric']['topic_pattern'], t['value'][1]) for t in topics]}")
        if keep:
            os.makedirs(keep, exist_ok=True)
            end = time.time()
            exprs = [f"rate({delivered}[3s])"] + [
                f"histogram_quantile({q}, rate(herald_handler_duration_seconds_bucket"
                f'{{job="herald"}}[3s])) * 1e6' for q in (0.5, 0.99)]
            columns = []
            for expr in exprs:
                url = (f"http://127.0.0.1:{prom_port}/api/v1/query_range?" +
                       urllib.parse.urlencode({"query": expr, "start": end - 40, "end": end,
                                               "step": 1}))
                with urllib.request.urlopen(url, timeout=5) as r:
                    result = json.load(r)["data"]["result"]
                columns.append(dict(result[0]["values"]) if result else {})
            times = sorted(set().union(*columns))
            with open(os.path.join(keep, "series.tsv"), "w") as f:
                f.write("# seconds\tdelivered/s\tp50_us\tp99_us\n")
                for t in times:
                    vals = [c.get(t, "NaN") for c in columns]
                    f.write(f"{t - times[0]:.0f}\t" + "\t".join(vals) + "\n")
        ok = True
        if up != 1:
            print("FAIL: up != 1: Prometheus could not scrape or parse the exposition")
            ok = False
        if rate is None or abs(rate - RATE) > 0.2 * RATE:
            print(f"FAIL: rate {rate} is not {RATE} +- 20%")
            ok = False
        if p50 is None or not (0.75 * WORK_US * 1e-6 <= p50 <= 1.5 * WORK_US * 1e-6):
            print(f"FAIL: median handler duration {p50} s is not about {WORK_US} us")
            ok = False
        if dropped is None or dropped <= 0:
            print("FAIL: the audit subscription nobody reads should have dropped messages")
            ok = False
        print(f"{'PASS' if ok else 'FAIL'} in {time.monotonic() - start:.1f} s")
        return 0 if ok else 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
