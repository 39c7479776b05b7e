"""10,000 services at a 30 s interval: scheduling lag, probe rate, CPU and peak memory.

    python bench/scale.py [--services 10000] [--interval 30] [--intervals 3] [--target-workers 1]
                          [--loop run|asyncio] [--no-gc-freeze]
    python bench/scale.py --process [--services 100000] [--interval 60] [--intervals 2] ...

With `--process`, `channel-monitor run` itself runs as a process (everything it starts: web
server, metrics, alerts, the page worker, the store) against the bare target of `common.py`
(`BENCH_RAW`) on `--hosts` addresses, and the benchmark watches it from outside, as an operator
and Prometheus would: how long until `/healthz` answers (ready), `/healthz` every half second
(its latency; the observations judged, the scheduler's lag p99 and the collector's pauses it
reports), `/metrics` every `--scrape-every` seconds with gzip as Prometheus asks (the time to
the whole body), the peak RSS (VmHWM) summed over the process tree, the tree's CPU, the store's
files, and the time from SIGTERM to exit. Warnings in its log that APScheduler skipped a run
(a job still running when due: the store's flush falling behind) are counted.

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
import contextlib
import gc
import logging
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import common
from aiohttp import ClientTimeout
from common import (
    Target,
    free_port,
    load_plan,
    loadavg,
    machine,
    plan_toml,
    proc_cpu_seconds,
    process_tree,
    run_command,
    stop_processes,
    tree_cpu_seconds,
    vm_hwm_kib,
)

from monitor.cli import loop_factory
from monitor.clock import RealClock
from monitor.kinds.http import Prober
from monitor.pipeline import Pipeline, Result
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
    pipeline = Pipeline(plan, store, RealClock(), prober, (tally,))
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


class Watch:
    """`channel-monitor run` as a process, watched from outside (see the module's docstring)."""

    def __init__(self, args: argparse.Namespace, target: Target, directory: Path) -> None:
        self.args = args
        self.directory = directory
        config = directory / "channels.toml"
        text = plan_toml(
            args.services, target.bases, f"{args.interval}s", per_channel=100, hung=args.hung
        )
        config.write_text(text, encoding="utf-8")
        self.db = directory / "monitor.db"
        self.log = directory / "run.log"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            run_command(config, self.port, "--db", str(self.db), "--site", str(directory / "site")),
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "wb"),  # noqa: SIM115 (closed with the process)
        )
        self.hwm: dict[int, int] = {}
        #: The resident set at the last sample: what the tree holds once running, beside its peak.
        self.rss: dict[int, int] = {}
        self.healthz: list[tuple[float, float, dict | None]] = []  # (at, seconds, body)
        self.scrapes: list[tuple[float, float, int]] = []  # (at, seconds, bytes)

    def sample_tree(self) -> None:
        for pid in process_tree(self.proc.pid):
            self.hwm[pid] = max(self.hwm.get(pid, 0), vm_hwm_kib(pid))
            self.rss[pid] = vm_hwm_kib(pid, "VmRSS")

    async def ready(self, session: aiohttp.ClientSession) -> float:
        deadline = self.started + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"run exited with {self.proc.returncode}: {self.log}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(f"{self.base}/healthz", timeout=ClientTimeout(2)) as r:
                    if r.status == 200:
                        return time.monotonic() - self.started
            await asyncio.sleep(0.05)
        raise RuntimeError("run was not ready within 300 s")

    async def poll_healthz(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            began = time.monotonic()
            body = None
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                async with session.get(f"{self.base}/healthz", timeout=ClientTimeout(30)) as r:
                    body = await r.json()
            self.healthz.append((began, time.monotonic() - began, body))
            self.sample_tree()
            await asyncio.sleep(max(0.0, 0.5 - (time.monotonic() - began)))

    async def scrape(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        headers = {"Accept-Encoding": "gzip"}
        while not stop.is_set():
            began = time.monotonic()
            size = -1
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(
                    f"{self.base}/metrics",
                    headers=headers,
                    auto_decompress=False,
                    timeout=ClientTimeout(120),
                ) as response:
                    size = len(await response.read())
            self.scrapes.append((began, time.monotonic() - began, size))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.args.scrape_every)

    def last_health(self, before: float) -> tuple[float, dict]:
        """The last `/healthz` answer asked for at or before `before`, and when it was asked."""
        return next((at, b) for at, _, b in reversed(self.healthz) if at <= before and b)

    def store_bytes(self) -> int:
        return sum(
            path.stat().st_size
            for path in self.directory.glob("monitor.db*")
            if path.suffix != ".lock"
        )

    def stop(self) -> float:
        self.sample_tree()
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            stop_processes([self.proc], timeout=1)
            return float("inf")
        return time.monotonic() - began


async def run_process(args: argparse.Namespace, target: Target, directory: Path) -> dict:
    """The whole `run` at scale; see the module's docstring."""
    out: dict = {}
    watch = Watch(args, target, directory)
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = []
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            out["ready_s"] = await watch.ready(session)
            tasks = [
                asyncio.create_task(watch.poll_healthz(session, stop)),
                asyncio.create_task(watch.scrape(session, stop)),
            ]
            await asyncio.sleep(args.warmup)
            begin = time.monotonic()
            cpu0 = sum(tree_cpu_seconds(watch.proc.pid))
            target0 = sum(proc_cpu_seconds(p.pid) for p in target.procs)
            store0 = watch.store_bytes()
            await asyncio.sleep(args.intervals * args.interval)
            end = time.monotonic()
            cpu1 = sum(tree_cpu_seconds(watch.proc.pid))
            target1 = sum(proc_cpu_seconds(p.pid) for p in target.procs)
            store1 = watch.store_bytes()
            await asyncio.sleep(1.0)  # one more /healthz after the window
            stop.set()
            await asyncio.gather(*tasks)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        out["stop_s"] = watch.stop() if watch.proc.poll() is None else float("nan")
    (first_at, first), (last_at, last) = watch.last_health(begin), watch.last_health(end)
    seconds = end - begin
    # the rate between the two answers, over the time between them (each is up to a poll
    # before its end of the window: divided by the window, the rate read 0.2 % low)
    judged = last["observations_judged"] - first["observations_judged"]
    judged_per_s = judged / (last_at - first_at)
    inside = [(at, s, b) for at, s, b in watch.healthz if begin <= at <= end]
    # each sample's "last minute" covers the minute before it: those from `begin` + 60 s on
    # cover the window (the window is at least a minute long)
    late = [b for at, _, b in watch.healthz if begin + 60 <= at <= end + 1 and b]
    recent = {
        gen: (
            max(b["gc"][gen]["longest_last_minute_seconds"] for b in late),
            max(b["gc"][gen]["longest_last_minute_cpu_seconds"] for b in late),
        )
        for gen in last["gc"]
    }
    lag_p99 = [b["scheduler_lag_p99_seconds"] for _, _, b in inside if b]
    scrapes = [(s, n) for at, s, n in watch.scrapes if at >= begin - args.warmup]
    log = watch.log.read_text(errors="replace")
    stopped = re.search(r"stopped in [0-9.]+ s \((.*)\)", log)  # the daemon's steps
    out.update(
        {
            "stop_steps": stopped.group(1) if stopped else "not logged",
            "window_s": seconds,
            "judged_per_s": judged_per_s,
            "due_per_s": args.services / args.interval,
            "lag_p99_ms": (statistics.median(lag_p99) * 1e3, max(lag_p99) * 1e3),
            "healthz": (
                statistics.median(s for _, s, _ in inside) * 1e3,
                max(s for _, s, _ in inside) * 1e3,
                sum(1 for _, s, _ in inside if s > 1),
                len(inside),
            ),
            "scrapes": scrapes,
            "gc": {
                gen: (
                    last["gc"][gen]["collections"] - first["gc"][gen]["collections"],
                    recent[gen],
                    last["gc"][gen]["longest_seconds"],
                )
                for gen in last["gc"]
            },
            "cpu_share": (cpu1 - cpu0) / seconds,
            "cpu_per_probe_us": (cpu1 - cpu0) / max(1, judged_per_s * seconds) * 1e6,
            "target_cpu_share": (target1 - target0) / seconds,
            "hwm_mib": sum(watch.hwm.values()) / 1024,
            "hwm_parts": sorted((v / 1024 for v in watch.hwm.values()), reverse=True),
            "rss_parts": [
                watch.rss.get(pid, 0) / 1024
                for pid in sorted(watch.hwm, key=watch.hwm.__getitem__, reverse=True)
            ],
            "store_growth_per_min_mib": (store1 - store0) / seconds * 60 / 2**20,
            "store_mib": store1 / 2**20,
            "skipped": log.count("maximum number of running instances"),
            # APScheduler names the job in the line: the store's flush is `Scheduler._flush`
            "skipped_flush": sum(
                "_flush" in line
                for line in log.splitlines()
                if "maximum number of running instances" in line
            ),
            "tracebacks": log.count("Traceback"),
            "pending": last["store"]["pending_observations"],
            "probes_skipped": last["probes_skipped"] - first["probes_skipped"],
            # a run from before the slots has no `probes_lent`
            "lent_max": max((b.get("probes_lent", -1) for _, _, b in inside if b), default=-1),
        }
    )
    return out


def report_process(args: argparse.Namespace, r: dict) -> None:
    info = machine()
    print(
        f"channel-monitor run, {args.services} services at a {args.interval} s interval, "
        f"measured for {r['window_s']:.0f} s after {args.warmup:.0f} s; {info['cpus']} CPUs "
        f"({info['cpu']}), Python {info['python']}; bare target, 1 process on {args.hosts} "
        f"addresses" + (f"; {args.hung:.0%} of the services at a hung target" if args.hung else "")
    )
    scrape_s = [s for s, n in r["scrapes"] if n >= 0]
    lag, health = r["lag_p99_ms"], r["healthz"]
    rows = [
        ("ready (/healthz answers) after start", f"{r['ready_s']:.1f} s"),
        ("observations judged per second", f"{r['judged_per_s']:.0f} (due {r['due_per_s']:.0f})"),
        ("scheduling lag p99 (median / max of samples)", "{:.1f} / {:.1f} ms".format(*lag)),
        ("/healthz p50 / max / >1 s / polls", "{:.1f} ms / {:.0f} ms / {} / {}".format(*health)),
        (
            "/metrics whole body (gzip): median / max",
            f"{statistics.median(scrape_s):.2f} / {max(scrape_s):.2f} s, "
            f"{len(scrape_s)} of {len(r['scrapes'])} answered, "
            f"{max(n for _, n in r['scrapes']) / 2**20:.1f} MiB",
        )
        if scrape_s
        else ("/metrics", "never answered"),
        ("process tree CPU, share of one core", f"{r['cpu_share'] * 100:.0f} %"),
        ("process tree CPU per observation", f"{r['cpu_per_probe_us']:.0f} us"),
        ("target CPU, share of one core", f"{r['target_cpu_share'] * 100:.0f} %"),
        (
            "peak RSS, VmHWM summed over the tree",
            f"{r['hwm_mib']:.0f} MiB ({', '.join(f'{v:.0f}' for v in r['hwm_parts'])})",
        ),
        (
            "RSS at the end of the window, same order",
            f"{sum(r['rss_parts']):.0f} MiB ({', '.join(f'{v:.0f}' for v in r['rss_parts'])})",
        ),
        (
            "store files: growth a minute / size at the end",
            f"{r['store_growth_per_min_mib']:.1f} MiB / {r['store_mib']:.0f} MiB",
        ),
        (
            "skipped runs (APScheduler; of them the flush) / tracebacks",
            f"{r['skipped']} ({r['skipped_flush']}) / {r['tracebacks']}",
        ),
        ("observations waiting to be written at the end", f"{r['pending']}"),
        (
            "due probes skipped (behind) / most probes lent at once",
            f"{r['probes_skipped']} / {r['lent_max'] if r['lent_max'] >= 0 else 'n/a'}",
        ),
        ("stop: SIGTERM to exit", f"{r['stop_s']:.1f} s ({r['stop_steps']})"),
    ]
    rows.append(("load average (1 min) before / after", " / ".join(r["load"])))
    for label, value in rows:
        print(f"  {label:<52}{value}")
    gc_line = ", ".join(
        f"{g} {n}x, longest {m[0] * 1e3:.0f} ms wall / {m[1] * 1e3:.0f} ms CPU "
        f"({ever * 1e3:.0f} ms wall since start)"
        for g, (n, m, ever) in r["gc"].items()
    )
    print(f"  collector pauses in the window: {gc_line}")


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
    parser.add_argument("--process", action="store_true", help="run `channel-monitor run`")
    parser.add_argument("--warmup", type=float, default=60, help="--process: seconds before")
    parser.add_argument("--scrape-every", type=float, default=15, help="--process: /metrics")
    parser.add_argument(
        "--keep", help="--process: keep the run's folder (log, store) in this folder"
    )
    parser.add_argument(
        "--no-office-hours", action="store_true", help="three kinds of service, not four"
    )
    parser.add_argument(
        "--hung",
        type=float,
        default=0.0,
        help="--process: this share of the services at a target that never answers",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.no_office_hours:  # the plan of `common.py` without its fourth kind of service
        common.SERVICE_KINDS = common.SERVICE_KINDS[:3]
    if args.process:
        load_before = loadavg()
        with (
            contextlib.nullcontext(tempfile.mkdtemp(prefix="scale-run-", dir=args.keep))
            if args.keep
            else tempfile.TemporaryDirectory(prefix="scale-run-") as tmp,
            Target(args.target_workers, args.hosts, raw=True) as t,
        ):
            result = asyncio.run(run_process(args, t, Path(tmp)))
            result["load"] = (load_before, loadavg())
            report_process(args, result)  # before the folder (100,000 badges) is removed
        return 0
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
