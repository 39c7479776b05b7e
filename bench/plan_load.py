"""Reading the plan at scale: the peak and what is kept, in a process that does nothing else.

    python bench/plan_load.py [--services 100000] [--distinct-urls] [--trace]
                              [--source DIR] [--repeat 3]

Writes `scale.py --process`'s plan (`common.plan_toml`, channels of 100 services on 50
loopback addresses) to a temporary folder and, `--repeat` times, starts a fresh Python that
imports `monitor`, runs `load_config` on it once and reports: VmHWM (the process's peak), RSS
after the load (after a collection and `malloc_trim`, as `run`'s `gc_watch.settle` does), both
also less the RSS after the imports, and the wall and CPU time of the one call. `--trace` adds
tracemalloc's totals and its largest lines (this slows the load several times).
`--distinct-urls` gives every probe its own URL, as a real plan has (the bench's plan has 100).
`--source DIR` measures the `monitor` of another checkout (before/after). Local files only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, loadavg, plan_toml

CHILD = r"""
import ctypes, gc, json, resource, sys, time

def status():
    found = {}
    with open("/proc/self/status") as lines:
        for line in lines:
            key, value = line.split(":", 1)
            if key in ("VmHWM", "VmRSS"):
                found[key] = int(value.split()[0]) / 1024
    return found

from monitor.plan.load import load_config

trace = sys.argv[2] == "1"
if trace:
    import tracemalloc
    tracemalloc.start()
imported = status()
before = resource.getrusage(resource.RUSAGE_SELF)
started = time.perf_counter()
config = load_config(sys.argv[1])
wall = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF)
report = {"wall": wall, "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime}
if trace:
    current, peak = tracemalloc.get_traced_memory()
    lines = tracemalloc.take_snapshot().statistics("lineno")[:5]
    report["traced"] = [current / 2**20, peak / 2**20, [str(line) for line in lines]]
    tracemalloc.stop()
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
report.update(imported=imported["VmRSS"], peak=status()["VmHWM"], kept=status()["VmRSS"])
print(json.dumps(report))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=100_000)
    parser.add_argument("--distinct-urls", action="store_true")
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--source", type=Path, default=REPO)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    bases = [f"http://127.0.0.{i + 2}:18080" for i in range(50)]
    text = plan_toml(args.services, bases, "60s", per_channel=100)
    if args.distinct_urls:
        numbers = iter(range(args.services))
        text = re.sub(r'url = "([^"]+)"', lambda m: f'url = "{m[1]}?s={next(numbers)}"', text)
    env = {**os.environ, "PYTHONPATH": str(args.source.resolve())}
    print(f"load average before: {loadavg()}")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "channels.toml"
        path.write_text(text, encoding="utf-8")
        print(f"{args.services:,} services, {path.stat().st_size / 2**20:.1f} MiB of TOML")
        for _ in range(args.repeat):
            command = [sys.executable, "-c", CHILD, str(path), "1" if args.trace else "0"]
            out = subprocess.run(
                command, env=env, cwd=directory, capture_output=True, text=True, check=True
            )
            r = json.loads(out.stdout)
            print(
                f"  peak {r['peak']:.0f} MiB ({r['peak'] - r['imported']:.0f} over the imports), "
                f"kept {r['kept']:.0f} MiB ({r['kept'] - r['imported']:.0f}), "
                f"{r['wall']:.2f} s ({r['cpu']:.2f} s CPU)"
            )
            if "traced" in r:
                current, peak, lines = r["traced"]
                print(f"  traced: {current:.0f} MiB kept, {peak:.0f} MiB at the peak")
                for line in lines:
                    print(f"    {line}")
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
