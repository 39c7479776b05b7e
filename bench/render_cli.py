"""`channel-monitor render` at 10,000 services: the wall time of the whole command.

    python bench/render_cli.py [--services 10000] [--per-channel 100] [--runs 5] [--days 0]
                               [--before DIR] [--cache DIR]

What a cron job or an operator pays for one `render`: a fresh Python process that imports the
package, reads the plan (`common.plan_toml`: channels of `--per-channel`, the four kinds), opens
the store, renders every file and publishes the folder (`site/publish.py`), then removes the
work folder. Each run is a subprocess; its wall time is measured around it and its user and
system CPU from the kernel's accounting of the child (`os.wait4`). The machine is shared by
several engineers on two cores, so the wall time moves with their load; the CPU moves less,
and the load average before and after is printed with the figures.

Two cases, `--runs` of each, medians and ranges:
- **fresh**: no `site/` yet (a new folder each run), so every file is created; beside it, the
  same files created by a plain loop in the same minutes (`create_copy`): what the disk alone
  costs for them then;
- **again**: `site/` holds the previous run's page, 30 s earlier, as when `render` runs from
  cron: most files (the badges) are the same, the page, feeds and JSON are not.

`--days N` writes a store with N days of hourly rollups as `page_scale.py` does (its `fill`,
kept in `--cache`); the default, 0, renders without a store (no history yet), the case the
issue measured (10,215 files). `--before DIR` also runs the command from the code at DIR (a
checkout of an older commit) on the same plan and instants, alternating run by run with this
tree's code so both see the same minutes of load, and compares the last sites file by file.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import loadavg, plan_toml

HERE = Path(__file__).resolve().parent.parent


def run_once(code: Path, config: Path, db: Path, site: Path, at: datetime) -> dict:
    """One `channel-monitor render` from the code at `code`: wall, user and system seconds.

    With compiled modules, as an installed package has them: this machine's environment sets
    PYTHONDONTWRITEBYTECODE, which made every run compile the package again (0.15 s); they are
    kept under the bench's cache (`PYTHONPYCACHEPREFIX`), not in the tree."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(config.parent / "pycache" / code.name)
    command = [sys.executable, "-m", "monitor", "render", "--config", str(config)]
    command += ["--db", str(db), "--site", str(site), "--at", at.isoformat()]
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=code, stdout=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    out = proc.stdout.read().decode() if proc.stdout else ""
    proc.stdout and proc.stdout.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"render failed ({proc.returncode}) from {code}: {out}")
    return {"wall": wall, "user": usage.ru_utime, "system": usage.ru_stime, "out": out.strip()}


def create_copy(site: Path, into: Path) -> dict:
    """The files of `site` created again under `into` by a plain loop (`os.open`, `os.write`,
    no flush): what creating that many files costs on this disk at this moment, to set a fresh
    render's time beside. The file system's cost to create a file moved from 20 us to 800 us
    between minutes here (ext4 on a shared virtual disk), whatever wrote the files."""
    pairs = []
    for root, _dirs, names in os.walk(site):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                pairs.append((os.path.relpath(path, site), f.read()))
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    made = set()
    for rel, data in pairs:
        path = os.path.join(into, rel)
        folder = os.path.dirname(path)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": wall, "user": after.ru_utime - before.ru_utime,
            "system": after.ru_stime - before.ru_stime}  # fmt: skip


def site_files(site: Path) -> tuple[int, int]:
    count = size = 0
    for root, _dirs, names in os.walk(site):
        for name in names:
            count += 1
            size += os.path.getsize(os.path.join(root, name))
    return count, size


def same_sites(a: Path, b: Path) -> list[str]:
    """Relative paths that differ between two sites (missing on one side, or other bytes)."""
    differ = []
    for root, _dirs, names in os.walk(a):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), a)
            other = b / rel
            if not other.is_file() or not filecmp.cmp(a / rel, other, shallow=False):
                differ.append(rel)
    for root, _dirs, names in os.walk(b):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), b)
            if not (a / rel).is_file():
                differ.append(rel)
    return differ


def summary(label: str, runs: list[dict]) -> str:
    def part(key: str) -> str:
        values = [r[key] for r in runs]
        return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"

    return f"  {label:<22} wall {part('wall')}, user {part('user')}, system {part('system')}"


def prepare(args: argparse.Namespace, cache: Path) -> tuple[Path, Path, datetime]:
    """The plan and store: `page_scale.prepare`'s with `--days`, else a plan alone."""
    if args.days:
        import page_scale

        plan, db, at = page_scale.prepare(
            cache, args.services // args.per_channel, args.per_channel, True, args.days
        )
        del plan
        return cache / "channels.toml", db, at
    cache.mkdir(parents=True, exist_ok=True)
    config = cache / "channels.toml"
    meta = cache / "meta.json"
    sizes = [args.services, args.per_channel]
    if not (meta.exists() and json.loads(meta.read_text())["services"] == sizes):
        config.write_text(plan_toml(args.services, ["http://127.0.0.1:9"], "60s", args.per_channel))
        at = datetime.now(UTC).replace(microsecond=0)
        meta.write_text(json.dumps({"services": sizes, "at": at.isoformat()}))
    at = datetime.fromisoformat(json.loads(meta.read_text())["at"])
    return config, cache / "no-store.db", at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--per-channel", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--days", type=int, default=0, help="days of rollups; 0: no store")
    parser.add_argument("--before", type=Path, help="a checkout of the code to compare with")
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    cache = args.cache or Path(tempfile.gettempdir()) / (
        f"channel-monitor-render-cli-{args.services}x{args.per_channel}-{args.days}d"
    )
    config, db, at = prepare(args, cache)
    codes = {"after": HERE}
    if args.before:
        codes = {"before": args.before.resolve(), "after": HERE}
    results: dict[tuple[str, str], list[dict]] = {(n, c): [] for n in codes for c in ("f", "a")}
    results["disk", "f"] = []
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="render-cli-", dir=cache) as tmp:
        sites = {name: Path(tmp) / name / "site" for name in codes}
        for name, code in codes.items():  # untimed: compiles the modules once
            sites[name].parent.mkdir()
            run_once(code, config, db, sites[name], at)
            shutil.rmtree(sites[name].parent)
        for run in range(args.runs):
            when = at + timedelta(seconds=60 * run)
            for name, code in codes.items():  # alternating: both in the same minutes
                # a new folder each run, the old ones removed at the end (untimed)
                sites[name] = Path(tmp) / f"{name}-{run}" / "site"
                sites[name].parent.mkdir()
                results[name, "f"].append(run_once(code, config, db, sites[name], when))
                again = run_once(code, config, db, sites[name], when + timedelta(seconds=30))
                results[name, "a"].append(again)
            # what the disk alone costs for the files of a fresh render, in the same minutes
            results["disk", "f"].append(create_copy(sites[name], Path(tmp) / f"copy-{run}"))
        load_after = loadavg()
        print(f"services: {args.services:,}; store: "
              + (f"{args.days} days of rollups" if args.days else "none (no history)"))  # fmt: skip
        print(f"load average (1 min): {load_before} before, {load_after} after; "
              f"{os.cpu_count()} CPUs")  # fmt: skip
        for name in codes:
            count, size = site_files(sites[name])
            print(f"{name} ({codes[name].name}): {count:,} files, {size / 1e6:.1f} MB")
            print(summary("fresh (no site yet)", results[name, "f"]))
            print(summary("again (30 s later)", results[name, "a"]))
            print(f"    {results[name, 'a'][-1]['out']}")
        print(summary("the same files created by a plain loop", results["disk", "f"]))
        if args.before:
            differ = same_sites(sites["before"], sites["after"])
            print(f"files that differ between before and after: {len(differ)} {differ[:5]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
