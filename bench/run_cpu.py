"""CPU per probe of `channel-monitor run` itself, whole process tree, beside blackbox_exporter.

    python bench/run_cpu.py [--rate 200] [--windows 4] [--window 20] [--warmup 40]
                            [--scheme both|http|https] [--before DIR] [--hosts 10] [--workers 2]

Both probe the same local target at the same time, at the same rate:

- ours: `channel-monitor run` as a process (plan loaded and validated, scheduler, prober,
  judge, store, metrics, the page worker: everything `run` starts), with a plan of
  `rate x 10 s` services at a 10 s interval. Its CPU is the sum over the process tree (the run
  process and every descendant, from /proc), and its probes are read from its own `/healthz`
  (`observations_judged`) at each window's ends.
- blackbox: the Debian `prometheus-blackbox-exporter`, driven by a scraper loop in this process
  that asks `/probe?target=...` `rate` times a second, evenly spaced (its module checks the body
  as our plan does). CPU of the exporter process.

For HTTPS the target serves a certificate from a CA made here (with `cryptography`, as the tests
do); `run` trusts it through `SSL_CERT_FILE` (its default SSL context reads that file), the
exporter through its module's `tls_config.ca_file`.

`--before DIR` also runs `run` from another checkout (for example `git archive main | tar -x -C
DIR`), as a third process at the same time, so old and new are measured side by side against
the same exporter.

Prints per window: CPU per probe of each, the ratios and the 1-minute load average; then the
median and range. Loopback only; every process it starts is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from common import (
    REPO,
    Target,
    free_port,
    loadavg,
    machine,
    plan_toml,
    proc_cpu_seconds,
    run_command,
    start_blackbox,
    stop_processes,
    tree_cpu_seconds,
    urls_of,
    wait_http,
)

#: The exporter checks the body as our plan does (and, over HTTPS, trusts the benchmark's CA).
BODY_CHECK = '      fail_if_body_matches_regexp: ["系统维护|暂停办理"]\n'
INTERVAL_SECONDS = 10


class Run:
    """`channel-monitor run` from the source tree `source`, as its own process."""

    def __init__(self, name: str, source: Path, plan: str, directory: Path, env: dict) -> None:
        self.name = name
        directory.mkdir()
        config = directory / "channels.toml"
        config.write_text(plan, encoding="utf-8")
        self.port = free_port()
        self.proc = subprocess.Popen(
            run_command(config, self.port),
            cwd=directory,
            env={**env, "PYTHONPATH": str(source)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(directory / "stderr.log", "wb"),  # noqa: SIM115 (closed with the process)
        )
        wait_http(f"http://127.0.0.1:{self.port}/healthz", [self.proc], timeout=60)

    async def probes(self, session: aiohttp.ClientSession) -> int:
        """Probes done so far: the observations judged, from its own `/healthz`, which counts
        live (`/metrics` answers at once with the last exposition while a slow build runs, and
        one such answer made a window read no probes and the next twice as many)."""
        async with session.get(f"http://127.0.0.1:{self.port}/healthz") as response:
            return int((await response.json())["observations_judged"])

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far: (the run process, its descendants: the page worker)."""
        return tree_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        stop_processes([self.proc], timeout=15)


class Blackbox:
    """The exporter, and a scraper loop that asks it for `rate` probes a second."""

    def __init__(self, urls: list[str], directory: Path, ca: Path | None) -> None:
        tls = f"      tls_config:\n        ca_file: {ca}\n" if ca else ""
        self.proc, base = start_blackbox(directory, BODY_CHECK + tls)
        self.urls = [f"{base}/probe?module=http_2xx&target={url}" for url in urls]
        self.done = 0
        self.errors = 0
        self.answered = 0

    async def one(self, session: aiohttp.ClientSession, url: str) -> None:
        try:
            async with session.get(url) as response:
                body = await response.read()
        except aiohttp.ClientError:
            self.errors += 1
            return
        self.done += 1
        if b"\nprobe_http_status_code 200\n" in body:
            self.answered += 1

    async def drive(self, session: aiohttp.ClientSession, rate: float, stop: asyncio.Event):
        """`rate` probes a second, evenly spaced, until `stop`."""
        tasks: set[asyncio.Task] = set()
        started = time.monotonic()
        index = 0
        while not stop.is_set():
            due = started + index / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))  # yields even when late
            task = asyncio.create_task(self.one(session, self.urls[index % len(self.urls)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        for task in list(tasks):  # still waiting after 15 s: given up, not left to the loop's end
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def cpu(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        stop_processes([self.proc])


async def measure(args, target: Target, directory: Path, ca: Path | None) -> dict:
    services = int(args.rate * INTERVAL_SECONDS)
    plan = plan_toml(services, target.bases, interval=f"{INTERVAL_SECONDS}s")
    env = dict(os.environ)
    if ca is not None:
        env["SSL_CERT_FILE"] = str(ca)
    runs: list[Run] = []
    blackbox: Blackbox | None = None
    stop = asyncio.Event()
    try:
        runs.append(Run("after", REPO, plan, directory / "after", env))
        if args.before:
            runs.append(Run("before", Path(args.before), plan, directory / "before", env))
        blackbox = Blackbox(urls_of(services, target.bases), directory, ca)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            driver = asyncio.create_task(blackbox.drive(session, args.rate, stop))
            await asyncio.sleep(args.warmup)
            windows: list[dict] = []
            # The count is read just outside each CPU window (the reading is the benchmark's
            # cost, not a probe's); probes counted between the two readings are scaled to the
            # CPU window's length (the rate is steady).
            for index in range(args.windows):
                counted0 = {run.name: (await run.probes(session), time.monotonic()) for run in runs}
                cpu0 = {run.name: run.cpu() for run in runs}
                bb_cpu0, bb_done0 = blackbox.cpu(), blackbox.done
                started = time.monotonic()
                await asyncio.sleep(args.window)
                cpu1 = {run.name: run.cpu() for run in runs}
                bb_cpu1, bb_done1 = blackbox.cpu(), blackbox.done
                length = time.monotonic() - started
                window = {"load": loadavg()}
                for run in runs:
                    count0, at0 = counted0[run.name]
                    rate = (await run.probes(session) - count0) / (time.monotonic() - at0)
                    probes = max(rate * length, 1)
                    own, others = (
                        b - a for a, b in zip(cpu0[run.name], cpu1[run.name], strict=True)
                    )
                    window[run.name] = (own + others) / probes * 1e6
                    window[f"{run.name} (descendants)"] = others / probes * 1e6
                    window[f"{run.name} probes/s"] = rate
                bb_probes = bb_done1 - bb_done0
                window["blackbox"] = (bb_cpu1 - bb_cpu0) / max(bb_probes, 1) * 1e6
                window["blackbox probes/s"] = bb_probes / length
                windows.append(window)
                shown = [
                    f"{name} {window[name]:.0f} us ({window[name + ' probes/s']:.0f}/s)"
                    for name in [*(run.name for run in runs), "blackbox"]
                ]
                line = "  ".join(shown)
                print(f"  window {index + 1}/{args.windows}: {line}  load {window['load']}")
            stop.set()
            await driver
        return {
            "windows": windows,
            "runs": [run.name for run in runs],
            "blackbox": (blackbox.done, blackbox.answered, blackbox.errors),
        }
    finally:
        stop.set()
        for run in runs:
            run.stop()
        if blackbox is not None:
            blackbox.stop()


def report(scheme: str, result: dict) -> None:
    windows = result["windows"]
    print(f"\n{scheme}: CPU per probe (us) and ratio to blackbox_exporter, over the windows")
    print(f"{'':<34}{'median':>8}{'min':>8}{'max':>8}")

    def row(label: str, values: list[float], fmt: str) -> None:
        numbers = (statistics.median(values), min(values), max(values))
        print(f"{label:<34}" + "".join(f"{v:>8{fmt}}" for v in numbers))

    for name in [*result["runs"], "blackbox"]:
        row(f"{name}", [w[name] for w in windows], ".0f")
        if name != "blackbox":
            row("  of which page worker", [w[f"{name} (descendants)"] for w in windows], ".0f")
    for name in result["runs"]:
        row(f"ratio {name} / blackbox", [w[name] / w["blackbox"] for w in windows], ".2f")
    print(f"load average (1 min) per window: {', '.join(w['load'] for w in windows)}")
    done, answered, errors = result["blackbox"]
    print(f"blackbox: {done} probes, {answered} answered 200, {errors} scraper errors")


def certificates(directory: Path, hosts: int) -> tuple[Path, tuple[Path, Path]]:
    """A CA and a server certificate for 127.0.0.1 .. 127.0.0.<hosts>, as the tests make them."""
    sys.path.insert(0, str(REPO / "tests"))
    from servers import make_ca, make_server_cert

    ca = make_ca(directory)
    ips = tuple(f"127.0.0.{index + 1}" for index in range(hosts))
    server = make_server_cert(directory, issuer=ca, ip_addresses=ips)
    return ca.cert_path, (server.cert_path, server.key_path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200, help="probes a second, each side")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--window", type=float, default=20, help="seconds per window")
    parser.add_argument("--warmup", type=float, default=40, help="seconds before the first")
    parser.add_argument("--hosts", type=int, default=10, help="target loopback addresses")
    parser.add_argument("--workers", type=int, default=2, help="target processes")
    parser.add_argument("--scheme", choices=["both", "http", "https"], default="both")
    parser.add_argument("--before", help="a second checkout whose `run` is measured alongside")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    info = machine()
    print(
        f"{args.rate:.0f} probes/s each, {args.windows} windows of {args.window:.0f} s after "
        f"{args.warmup:.0f} s; {args.hosts} target addresses; {info['cpus']} CPUs "
        f"({info['cpu']}), Python {info['python']}, load before {loadavg()}"
    )
    schemes = ["http", "https"] if args.scheme == "both" else [args.scheme]
    for scheme in schemes:
        with tempfile.TemporaryDirectory(prefix="run-cpu-") as tmp:
            directory = Path(tmp)
            ca, tls = certificates(directory, args.hosts) if scheme == "https" else (None, None)
            with Target(args.workers, args.hosts, tls=tls) as target:
                print(f"{scheme}:", flush=True)
                result = asyncio.run(measure(args, target, directory, ca))
            report(scheme, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
