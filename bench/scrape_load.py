"""Many concurrent `/metrics` scrapes against a real `run`: do probes and `/healthz` keep up?

    python bench/scrape_load.py [--services 20000] [--interval 60s] [--scrapes 500]
                                [--seconds 60] [--warmup 30] [--source DIR]

Starts the local target (bench/common.py), writes a plan of `--services` services probing it,
and starts `python -m monitor run` on it as a separate process (from `--source`, a checkout,
this one by default: so an older version can be measured the same way). After `--warmup`
seconds and one scrape it measures two phases of `--seconds` each: quiet, then with
`--scrapes` requests to `/metrics` always in flight (gzip, as Prometheus asks; from a
separate process). For each phase: probes written to the store against those due,
`/healthz` latency (polled every 0.25 s, 30 s timeout), incidents opened (every service is
judged ok against the target, so any incident is a false one, caused by late probes), and
scrapes completed. Loopback only; bounded in time; every process it starts is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import REPO, Target, free_port, loadavg, machine, plan_toml, stop_processes


async def scrape_forever(url: str, concurrency: int, seconds: float) -> None:
    """Keep `concurrency` GETs of `url` in flight for `seconds`; print how many completed."""
    import aiohttp

    done = failed = 0
    end = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=max(seconds, 1.0) + 60)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:

        async def worker() -> None:
            nonlocal done, failed
            while time.monotonic() < end:
                try:
                    async with session.get(url, headers={"Accept-Encoding": "gzip"}) as response:
                        await response.read()
                        done += response.status == 200
                        failed += response.status != 200
                except (aiohttp.ClientError, TimeoutError):
                    failed += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    print(json.dumps({"scrapes": done, "failed": failed}), flush=True)


def healthz_ms(port: int) -> float:
    """One /healthz round trip in milliseconds (30 s counts as a timeout)."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as r:
            r.read()
    except OSError:
        return 30_000.0
    return (time.monotonic() - started) * 1000


def stored(db: Path) -> tuple[int, int]:
    """(observations, incidents) in the store so far."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        observations = conn.execute("SELECT coalesce(sum(count), 0) FROM observations").fetchone()[
            0
        ]
        incidents = conn.execute("SELECT count(*) FROM incidents").fetchone()[0]
    finally:
        conn.close()
    return observations, incidents


def phase(port: int, db: Path, seconds: float, due_per_second: float) -> dict:
    before, incidents_before = stored(db)
    latencies = []
    end = time.monotonic() + seconds
    started = time.monotonic()
    while time.monotonic() < end:
        latencies.append(healthz_ms(port))
        time.sleep(0.25)
    elapsed = time.monotonic() - started
    after, incidents_after = stored(db)
    latencies.sort()
    return {
        "probes_per_s": round((after - before) / elapsed, 1),
        "due_per_s": round(due_per_second, 1),
        "healthz_ms_p50": round(statistics.median(latencies), 1),
        "healthz_ms_max": round(latencies[-1], 1),
        "healthz_over_1s": sum(1 for v in latencies if v > 1000),
        "healthz_polls": len(latencies),
        "incidents_opened": incidents_after - incidents_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=20_000)
    parser.add_argument("--interval", default="60s")
    parser.add_argument("--scrapes", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=30)
    parser.add_argument("--source", type=Path, default=REPO, help="checkout to run")
    parser.add_argument("--load", help=argparse.SUPPRESS)  # the scraping process
    args = parser.parse_args()
    if args.load:
        asyncio.run(scrape_forever(args.load, args.scrapes, args.seconds))
        return

    interval = float(args.interval.rstrip("s"))
    print(json.dumps({**machine(), "loadavg": loadavg(), "source": str(args.source)}))
    with Target(workers=1, hosts=4) as target, tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "channels.toml").write_text(
            plan_toml(args.services, target.bases, args.interval), "utf-8"
        )
        db = home / "monitor.db"
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(args.source)}
        run = subprocess.Popen(
            [
                *(sys.executable, "-m", "monitor", "run", "--config", str(home / "channels.toml")),
                *("--db", str(db), "--listen", f"127.0.0.1:{port}"),
            ],
            cwd=home,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        load = None
        try:
            deadline = time.monotonic() + 120
            while healthz_ms(port) >= 30_000:
                if run.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("run did not start")
                time.sleep(0.5)
            time.sleep(args.warmup)
            # one scrape first, as Prometheus would have done long before: the plan's
            # expectations are cached from then on, in both versions
            started = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=600) as r:
                size = len(r.read())
            first = {"first_scrape_s": round(time.monotonic() - started, 1), "bytes": size}
            print(json.dumps(first), flush=True)
            due = args.services / interval
            quiet = phase(port, db, args.seconds, due)
            print(json.dumps({"phase": "quiet", **quiet}), flush=True)
            load = subprocess.Popen(
                [
                    *(sys.executable, __file__, "--load", f"http://127.0.0.1:{port}/metrics"),
                    *("--scrapes", str(args.scrapes), "--seconds", str(args.seconds)),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            loaded = phase(port, db, args.seconds, due)
            out, _ = load.communicate(timeout=args.seconds + 120)
            print(json.dumps({"phase": f"{args.scrapes} scrapes in flight", **loaded}))
            print(out.strip())
        finally:
            stop_processes([p for p in (load, run) if p is not None], timeout=15)


if __name__ == "__main__":
    main()
