"""CPU per probe of the whole `run` path, side by side with Prometheus' blackbox_exporter.

    python bench/probe_cpu.py [--probes 3000] [--concurrency 50] [--rounds 5] [--profile]
                              [--loop both|run|asyncio] [--only floor|ours|blackbox]

Three measurements, interleaved round by round (the order rotates), each `--probes` probes of
the same local aiohttp target (a separate process, so its CPU is not counted; listening on
`--hosts` loopback addresses, one per service in turn, as channels live on different hosts), in
rounds of `--concurrency` probes at once. Floor and ours are measured on two event loops side by
side: the one `run` uses (`monitor.cli.loop_factory`: uvloop where it is installed) and
asyncio's own; `--loop` picks one. Everything is set up before `gc.freeze()`, as `run` freezes
what it has loaded.

- floor: a bare aiohttp GET over one shared session whose connector has `force_close=True`
  (a fresh connection per probe), body read. CPU of this process.
- ours: the `run` path. A plan of `--concurrency` probed services (written as TOML, loaded and
  validated as `run` does) at the target; the real Prober, Pipeline (plan judge) and Store (a
  temporary SQLite file, flushed every second by a background task as the scheduler's flush job
  does, and once more inside the measured window). Each round is started by the Scheduler's
  own `_round` (event-loop timers, `_launch`, lag bookkeeping, no second probe of a running
  service). APScheduler itself is not started: its job fires once per interval for all the
  services of that interval, so its cost per probe is negligible (DESIGN.md). CPU of this
  process, all threads (the store's writer thread included).
- blackbox: the Debian `prometheus-blackbox-exporter` on 127.0.0.1 with an `http_2xx` module,
  driven through `/probe?target=...&module=http_2xx` by a lean aiohttp client (kept-alive
  connections to the exporter). CPU of the exporter process from /proc/<pid>/stat.

Prints the median of every measurement over the rounds and the ratio ours/blackbox per loop.
Loopback only; every process it starts is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import logging
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import aiohttp
from common import (
    Target,
    load_plan,
    loadavg,
    machine,
    plan_toml,
    proc_cpu_seconds,
    start_blackbox,
    stop_processes,
    urls_of,
)

from monitor.cli import loop_factory
from monitor.clock import RealClock
from monitor.kinds.http import Prober
from monitor.pipeline import Pipeline, Result
from monitor.scheduler import FLUSH_EVERY, Scheduler
from monitor.store import Store

# --- the three ways of probing -----------------------------------------------------------------


async def in_rounds(n: int, concurrency: int, one) -> None:
    """`n` calls of `one(i)`, `concurrency` at a time, round by round."""
    for start in range(0, n, concurrency):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + concurrency))))


class Floor:
    """The bare request: one shared session, a fresh connection per probe, body read."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        self.failures = 0

    async def one(self, i: int) -> None:
        async with self.session.get(self.urls[i % len(self.urls)]) as response:
            await response.read()
            if response.status != 200:
                self.failures += 1

    async def run(self, n: int, concurrency: int) -> float:
        started = time.process_time()
        await in_rounds(n, concurrency, self.one)
        return time.process_time() - started

    async def close(self) -> None:
        await self.session.close()


class Counter:
    """A pipeline listener that counts judged observations and wakes the driver per round."""

    def __init__(self) -> None:
        self.seen = 0
        self.not_ok = 0
        self.target = 0
        self.done = asyncio.Event()

    async def observed(self, result: Result) -> None:
        self.seen += 1
        if result.verdict != "ok":
            self.not_ok += 1
        if self.seen >= self.target:
            self.done.set()

    async def transition(self, at) -> None:
        pass


class Ours:
    """The `run` path: scheduler round -> prober -> plan judge -> store, listeners told."""

    def __init__(self, services: int, bases: list[str], directory: Path) -> None:
        self.plan = load_plan(plan_toml(services, bases), directory)
        self.store = Store(directory / "monitor.db")
        self.prober = Prober()
        self.counter = Counter()
        self.pipeline = Pipeline(
            self.plan, self.store, RealClock(), self.prober, [self.counter], concurrency=services
        )
        self.scheduler = Scheduler(self.pipeline)
        self.refs = self.pipeline.probed

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY.total_seconds())
            await self.pipeline.flush()

    async def run(self, n: int, concurrency: int) -> float:
        assert concurrency == len(self.refs)
        started = time.process_time()
        flusher = asyncio.create_task(self._flusher())
        for _ in range(n // len(self.refs)):
            self.counter.done.clear()
            self.counter.target = self.counter.seen + len(self.refs)
            await self.scheduler._round(self.refs, timedelta(0))
            await self.counter.done.wait()
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await self.pipeline.flush()
        return time.process_time() - started

    async def close(self) -> None:
        await self.scheduler.stop()
        await self.prober.close()
        self.store.close()


class Blackbox:
    """blackbox_exporter in its own process, driven over loopback by a lean client."""

    def __init__(self, urls: list[str], directory: Path) -> None:
        self.proc, base = start_blackbox(directory)
        self.probe_urls = [f"{base}/probe?module=http_2xx&target={url}" for url in urls]
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.failures = 0

    async def one(self, i: int) -> None:
        async with self.session.get(self.probe_urls[i % len(self.probe_urls)]) as response:
            body = await response.read()
            if b"\nprobe_success 1\n" not in body:
                self.failures += 1

    async def run(self, n: int, concurrency: int) -> float:
        before = proc_cpu_seconds(self.proc.pid)
        await in_rounds(n, concurrency, self.one)
        await asyncio.sleep(0.05)  # let the exporter finish writing its last answers
        return proc_cpu_seconds(self.proc.pid) - before

    async def close(self) -> None:
        await self.session.close()
        stop_processes([self.proc])


# --- the run -----------------------------------------------------------------------------------


def us(seconds: float, n: int) -> float:
    return seconds / n * 1e6


async def made(make: Callable[[], object]) -> object:
    """`make()` inside a running loop (aiohttp sessions and asyncio events belong to one)."""
    return make()


def event_loops(choice: str) -> dict[str, asyncio.Runner]:
    """The loops to measure on, by name: the one `run` uses, asyncio's own, or both."""
    factory = loop_factory()
    uvloop = any(base.__module__.startswith("uvloop") for base in factory.__mro__)
    run_name = "uvloop" if uvloop else "asyncio"
    loops: dict[str, asyncio.Runner] = {}
    if choice in ("both", "run"):
        loops[run_name] = asyncio.Runner(loop_factory=factory)
    if choice in ("both", "asyncio") and "asyncio" not in loops:
        loops["asyncio"] = asyncio.Runner()
    return loops


def measure(args: argparse.Namespace, target: Target, directory: Path) -> dict:
    """Every measurement `--rounds` times, interleaved; each loop runs only its own parts."""
    urls = urls_of(args.concurrency, target.bases)
    loops = event_loops(args.loop)
    #: name -> (loop name, object with `run(n, concurrency)` and `close()`)
    runners: dict[str, tuple[str, object]] = {}

    def on(loop: str, call: Awaitable):
        return loops[loop].run(call)

    try:
        for loop in loops:
            if args.only in (None, "floor"):
                runners[f"floor/{loop}"] = (loop, on(loop, made(lambda: Floor(urls))))
            if args.only in (None, "ours"):
                (directory / loop).mkdir()
                ours = on(
                    loop,
                    made(lambda: Ours(args.concurrency, target.bases, directory / loop)),  # noqa: B023
                )
                runners[f"ours/{loop}"] = (loop, ours)
        if args.only in (None, "blackbox"):
            first = next(iter(loops))  # its client's CPU is not counted, only the exporter's
            runners["blackbox"] = (first, on(first, made(lambda: Blackbox(urls, directory))))
        gc.collect()
        gc.freeze()  # as `run` does once the plan is loaded
        samples: dict[str, list[float]] = {name: [] for name in runners}
        warm = max(args.concurrency * 4, args.probes // 10)
        for loop, runner in runners.values():
            on(loop, runner.run(warm - warm % args.concurrency, args.concurrency))
        order = list(runners)
        for index in range(args.rounds):
            for name in order[index % len(order) :] + order[: index % len(order)]:
                loop, runner = runners[name]
                seconds = on(loop, runner.run(args.probes, args.concurrency))
                samples[name].append(us(seconds, args.probes))
            print(
                f"round {index + 1}/{args.rounds}: "
                + "  ".join(f"{name} {samples[name][-1]:.0f} us" for name in runners),
                flush=True,
            )
        profile = None
        ours_names = [name for name in runners if name.startswith("ours/")]
        if args.profile and ours_names:
            loop, runner = runners[ours_names[0]]  # on the loop `run` uses
            profiler = cProfile.Profile()
            profiler.enable()
            on(loop, runner.run(args.probes, args.concurrency))
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(40)
            profile = out.getvalue()
        return {
            "loops": list(loops),
            "samples": samples,
            "not_ok": sum(runners[name][1].counter.not_ok for name in ours_names),
            "seen": sum(runners[name][1].counter.seen for name in ours_names),
            "failures": {
                name: runner.failures
                for name, (_, runner) in runners.items()
                if not name.startswith("ours/")
            },
            "profile": profile,
        }
    finally:
        for loop, runner in runners.values():
            on(loop, runner.close())
        for runner in loops.values():
            runner.close()


def report(args: argparse.Namespace, result: dict) -> None:
    samples = result["samples"]
    med = {name: statistics.median(values) for name, values in samples.items()}
    info = machine()
    loops = result["loops"]
    print()
    print(
        f"{args.probes} probes x {args.rounds} rounds at concurrency {args.concurrency}, "
        f"{args.hosts} target addresses; event loops: {', '.join(loops)} (`run` uses "
        f"{loops[0] if args.loop != 'asyncio' else 'another'}); "
        f"{info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"aiohttp {info['aiohttp']}"
    )
    print(f"load average (1 min) before / after: {result['load'][0]} / {result['load'][1]}")
    print(f"{'CPU per probe (us)':<52}{'median':>8}{'min':>8}{'max':>8}")
    labels = {
        "floor": "bare aiohttp, fresh connection (floor)",
        "ours": "ours: schedule + probe + judge + store",
    }
    rows = [
        (f"{kind}/{loop}", f"{label}, {loop}") for loop in loops for kind, label in labels.items()
    ]
    rows.append(("blackbox", "blackbox_exporter (exporter process)"))
    for name, label in rows:
        if name in samples:
            values = samples[name]
            print(f"{label:<52}{med[name]:>8.0f}{min(values):>8.0f}{max(values):>8.0f}")
    goal = None
    for loop in loops:
        ours, floor = f"ours/{loop}", f"floor/{loop}"
        if ours in samples and "blackbox" in samples:
            ratios = [o / b for o, b in zip(samples[ours], samples["blackbox"], strict=True)]
            ratio = med[ours] / med["blackbox"]
            label = f"ratio ours / blackbox, {loop} (medians; min, max)"
            print(f"{label:<52}{ratio:>8.2f}{min(ratios):>8.2f}{max(ratios):>8.2f}")
            if goal is None:  # the loop `run` uses comes first
                goal = (loop, ratio)
        if floor in samples and "blackbox" in samples:
            label = f"ratio floor / blackbox, {loop}"
            print(f"{label:<52}{med[floor] / med['blackbox']:>8.2f}")
        if ours in samples and floor in samples:
            print(f"{'ours above the floor, ' + loop:<52}{med[ours] - med[floor]:>8.0f}")
    print(
        f"checks: {result['seen']} judged observations, {result['not_ok']} not ok; "
        f"failed probes {result['failures']}"
    )
    if goal is not None:
        loop, ratio = goal
        verdict = "met" if ratio <= 0.5 else "missed"
        print(f"goal (ours at most half of blackbox_exporter), on {loop}: {verdict} ({ratio:.2f})")
    if result["profile"]:
        print()
        print(result["profile"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=3000, help="probes per measurement")
    parser.add_argument("--concurrency", type=int, default=50, help="probes at once")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--hosts", type=int, default=50, help="target loopback addresses")
    parser.add_argument("--profile", action="store_true", help="cProfile one more run of ours")
    parser.add_argument("--only", choices=["floor", "ours", "blackbox"], help="measure one")
    parser.add_argument(
        "--loop",
        choices=["both", "run", "asyncio"],
        default="both",
        help="event loop(s) for floor and ours: the one `run` uses, asyncio's own, or both",
    )
    args = parser.parse_args()
    args.probes -= args.probes % args.concurrency
    logging.basicConfig(level=logging.WARNING)
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="probe-cpu-") as tmp, Target(1, args.hosts) as target:
        result = measure(args, target, Path(tmp))
    result["load"] = (load_before, loadavg())
    report(args, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
