"""10,000 services at a 30 s interval: scheduling lag, probe rate, CPU and peak memory.

    python bench/scale.py [--services 10000] [--interval 30] [--intervals 3] [--target-workers 1]
                          [--loop run|asyncio] [--no-gc-freeze]

The monitor runs in this process as `run` wires it (plan loaded from TOML, `gc.freeze()`, Store on
a temporary SQLite file, Prober, Pipeline, and the Scheduler on APScheduler's AsyncIOScheduler
with its interval, flush and prune jobs, on the event loop `run` uses: uvloop where it is
installed) without the web server and the downstream listeners; a counting listener stands in
for them. `--loop asyncio` runs it on asyncio's own loop, `--no-gc-freeze` without the freeze.
The target is a local aiohttp server in `--target-workers` separate processes: on a 2-core
machine it competes with the monitor for the same cores, so the numbers are for monitor and
target together on this machine.

Reports the lag between when each probe was due and when it started (p50, p99, max), probes
completed per second, the monitor's CPU (per probe and as a share of one core), its peak RSS
(ru_maxrss), the start-up time, and the target's CPU. Loopback only; bounded in time; every
process it starts is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import logging
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import Target, load_plan, loadavg, machine, plan_toml, proc_cpu_seconds

from monitor.cli import loop_factory
from monitor.clock import RealClock
from monitor.pipeline import Pipeline, Result
from monitor.probe import Prober
from monitor.scheduler import Scheduler
from monitor.store import Store


class Tally:
    """A listener that counts judged observations and their outcomes."""

    def __init__(self) -> None:
        self.count = 0
        self.verdicts: collections.Counter[str] = collections.Counter()
        self.reasons: collections.Counter[str] = collections.Counter()
        self.durations: list[float] = []

    async def observed(self, result: Result) -> None:
        self.count += 1
        self.verdicts[str(result.verdict)] += 1
        self.reasons[result.observation.reason.split(" (")[0]] += 1
        self.durations.append(result.observation.duration_seconds)

    async def transition(self, at) -> None:
        pass


class GcPauses:
    """How long the cyclic garbage collector held the process, per generation."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = collections.defaultdict(list)
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)

    def summary(self) -> str:
        return ", ".join(
            f"gen{gen} {len(p)}x max {max(p) * 1e3:.0f} ms"
            for gen, p in sorted(self.pauses.items())
        )


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace, target: Target, directory: Path) -> dict:
    out: dict = {"rss_before_plan_kib": rss_kib()}
    started = time.perf_counter()
    plan = load_plan(plan_toml(args.services, target.bases, f"{args.interval}s"), directory)
    out["plan_load_s"] = time.perf_counter() - started
    store = Store(directory / "monitor.db")
    prober = Prober()
    tally = Tally()
    pipeline = Pipeline(plan, store, RealClock(), prober, [tally])
    scheduler = Scheduler(pipeline)
    scheduler.lags = collections.deque(maxlen=args.services * (args.intervals + 2))
    out["rss_after_plan_kib"] = rss_kib()
    if not args.no_gc_freeze:  # as `run` does
        gc.collect()
        gc.freeze()

    cpu0, target0 = time.process_time(), sum(proc_cpu_seconds(p.pid) for p in target.procs)
    started = time.perf_counter()
    await pipeline.resume()
    scheduler.start()
    out["start_s"] = time.perf_counter() - started
    out["start_cpu_s"] = time.process_time() - cpu0

    # Measure whole intervals after the first round has begun; a bounded run in all cases.
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    begin, count1 = time.monotonic(), tally.count
    cpu1, target1 = time.process_time(), sum(proc_cpu_seconds(p.pid) for p in target.procs)
    await asyncio.sleep(args.intervals * args.interval)
    end, count2 = time.monotonic(), tally.count
    gc.callbacks.remove(pauses)
    cpu2, target2 = time.process_time(), sum(proc_cpu_seconds(p.pid) for p in target.procs)

    stopped = time.perf_counter()
    await scheduler.stop(timeout=10)
    await prober.close()
    store.close()
    out["stop_s"] = time.perf_counter() - stopped

    seconds = end - begin
    completed = count2 - count1
    lags = list(scheduler.lags)
    out.update(
        {
            "window_s": seconds,
            "completed_in_window": completed,
            "probes_per_s": completed / seconds,
            "expected_per_s": args.services / args.interval,
            "completed_total": tally.count,
            "lag_count": len(lags),
            "lag_p50_ms": percentile(lags, 0.50) * 1e3,
            "lag_p99_ms": percentile(lags, 0.99) * 1e3,
            "lag_max_ms": max(lags) * 1e3,
            "cpu_share": (cpu2 - cpu1) / seconds,
            "cpu_per_probe_us": (cpu2 - cpu1) / max(1, completed) * 1e6,
            "target_cpu_share": (target2 - target1) / seconds,
            "startup_target_cpu_s": target1 - target0,
            "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "gc": pauses.summary(),
            "verdicts": dict(tally.verdicts),
            "reasons": dict(tally.reasons),
            "duration_p50_ms": statistics.median(tally.durations) * 1e3,
            "duration_p99_ms": percentile(tally.durations, 0.99) * 1e3,
        }
    )
    return out


def report(args: argparse.Namespace, r: dict) -> None:
    info = machine()
    print(
        f"{args.services} services at a {args.interval} s interval, measured for "
        f"{args.intervals} intervals ({r['window_s']:.0f} s); {info['cpus']} CPUs "
        f"({info['cpu']}), Python {info['python']}, aiohttp {info['aiohttp']}; "
        f"target: {args.target_workers} process(es) on {args.hosts} addresses"
        f"{'; no gc.freeze()' if args.no_gc_freeze else ''}; loop: {r['loop']}"
    )
    rows = [
        ("plan load (10k services, TOML + validation)", f"{r['plan_load_s']:.2f} s"),
        ("scheduler start (resume, jobs, next transition)", f"{r['start_s']:.2f} s"),
        ("scheduling lag p50", f"{r['lag_p50_ms']:.1f} ms"),
        ("scheduling lag p99", f"{r['lag_p99_ms']:.1f} ms"),
        ("scheduling lag max", f"{r['lag_max_ms']:.1f} ms"),
        ("lags recorded", f"{r['lag_count']}"),
        (
            "probes completed per second",
            f"{r['probes_per_s']:.0f} (due: {r['expected_per_s']:.0f})",
        ),
        ("probe duration p50 / p99", f"{r['duration_p50_ms']:.1f} / {r['duration_p99_ms']:.1f} ms"),
        ("monitor CPU, share of one core", f"{r['cpu_share'] * 100:.0f} %"),
        ("monitor CPU per probe", f"{r['cpu_per_probe_us']:.0f} us"),
        ("target CPU, share of one core", f"{r['target_cpu_share'] * 100:.0f} %"),
        ("monitor RSS after plan load", f"{r['rss_after_plan_kib'] / 1024:.0f} MiB"),
        ("monitor peak RSS (ru_maxrss)", f"{r['maxrss_kib'] / 1024:.0f} MiB"),
        ("stop (running probes finish, flush)", f"{r['stop_s']:.2f} s"),
    ]
    rows.append(("load average (1 min) before / after", " / ".join(r["load"])))
    for label, value in rows:
        print(f"  {label:<50}{value}")
    print(f"  GC pauses while measured: {r['gc']}")
    print(f"  verdicts: {r['verdicts']}")
    print(f"  reasons: {r['reasons']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--interval", type=int, default=30, help="probe interval, seconds")
    parser.add_argument("--intervals", type=int, default=3, help="intervals to measure")
    parser.add_argument("--target-workers", type=int, default=1, help="target processes")
    parser.add_argument("--hosts", type=int, default=50, help="target loopback addresses")
    parser.add_argument(
        "--no-gc-freeze", action="store_true", help="no gc.freeze() after loading the plan"
    )
    parser.add_argument(
        "--loop",
        choices=["run", "asyncio"],
        default="run",
        help="the loop `run` uses, or asyncio's",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    budget = args.intervals * args.interval + 120  # start-up and stop included
    load_before = loadavg()
    with (
        tempfile.TemporaryDirectory(prefix="scale-") as tmp,
        Target(args.target_workers, args.hosts) as t,
    ):
        factory = loop_factory() if args.loop == "run" else None
        with asyncio.Runner(loop_factory=factory) as runner:
            result = runner.run(asyncio.wait_for(run(args, t, Path(tmp)), budget))
        result["loop"] = "asyncio" if factory is None else factory.__module__.split(".")[0]
    result["load"] = (load_before, loadavg())
    report(args, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
