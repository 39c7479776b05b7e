"""What the commands share: exit codes, reading `--at` and `--config`, the event loop, and
the checks of arguments that are not the plan's."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from monitor.clock import RealClock, parse_instant
from monitor.net.resolver import OwnLookups
from monitor.plan import Plan
from monitor.plan.load import gc_paused, load_config

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT = 0, 1, 2
#: The longest range `plan --transitions` lists and `plan diff` compares: ten years, which a
#: recurring period is walked across in about a second.
MAX_TRANSITIONS_SPAN = timedelta(days=3653)

T = TypeVar("T")


class UsageError(Exception):
    """Bad input on the command line; the message is shown as it is."""


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop of the long-running commands (`run`, `demo`): uvloop where it is
    installed (a dependency except on Windows), which spends less CPU per probe than asyncio's
    own loop (bench/RESULTS.md); else asyncio's own. Either way its host name lookups run on
    `monitor.net.resolver`'s threads, so a hung one holds back no other (`OwnLookups`)."""
    base: type[asyncio.AbstractEventLoop]
    try:
        import uvloop

        base = uvloop.Loop
    except ImportError:
        base = asyncio.ProactorEventLoop if sys.platform == "win32" else asyncio.SelectorEventLoop
    return type("Loop", (OwnLookups, base), {})


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop of `loop_factory`."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def load_plan(path: str) -> Plan:
    """Load and validate the plan file named on the command line, its warnings on stderr."""
    return load_plan_warned(path)[0]


def load_plan_warned(path: str) -> tuple[Plan, list[str]]:
    """The plan and its warnings (`monitor.plan.hints`), printed on stderr as they are found.

    The commands that read the plan but send no alert (all but `run`) accept an alert sink
    whose `${NAME}` is unset and warn about it: a plan is checked, listed and reported on
    machines that do not hold the secrets; only `run` needs them, and refuses without."""
    warnings: list[str] = []
    with gc_paused():  # millions of objects that all live on (as `run` loads it)
        plan = Plan(load_config(path, unset_secrets=True, warnings=warnings))
    for warning in warnings:
        print(warning, file=sys.stderr)
    return plan, warnings


def instant(args: argparse.Namespace, plan: Plan, name: str = "at") -> datetime:
    """The `--at` (or other) option as an aware instant, now when it is absent."""
    text = getattr(args, name, None)
    if not text:
        return RealClock().now()
    return parse_option(text, plan, f"--{name.rstrip('_').replace('_', '-')}")


def parse_option(text: str, plan: Plan, option: str) -> datetime:
    """An instant from the command line (naive: the plan's zone); bad input names the option."""
    try:
        return parse_instant(text, plan.zone)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def local(plan: Plan, value: str | None) -> str:
    """An ISO instant from a report, shortened to `YYYY-MM-DD HH:MM` for tables."""
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone(plan.zone).strftime("%Y-%m-%d %H:%M")


# --- validate --------------------------------------------------------------------------------


def notices_file(args: argparse.Namespace) -> Path:
    """`--notices`, else `notices.toml` in the plan's folder (which need not exist yet)."""
    from monitor.notices import default_path

    if getattr(args, "notices", None):
        return Path(args.notices)
    return default_path(getattr(args, "config", None) or "channels.toml")


def demo_notices(args: argparse.Namespace) -> Path:
    """The demo's notices: `--notices` or `notices.toml` beside the plan as elsewhere, else
    the ones shipped with the demo (the team's words during the replayed cutover)."""
    from monitor.demo import NOTICES

    path = notices_file(args)
    return path if args.notices or path.exists() else NOTICES


_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_UNITS |= {f"{u}ib": n for u, n in _UNITS.items() if u not in ("", "b")}
_UNITS |= {f"{u}b": 1000 ** (i + 1) for i, u in enumerate("kmgt")}
#: A smaller store limit would drop the day's history as soon as it is written.
MIN_STORE_LIMIT = 16 * 1024**2


def size_argument(text: str) -> int:
    """`--store-limit`: bytes, or a number with a unit (KiB/MiB/GiB/TiB, K/M/G/T the same,
    KB/MB/GB/TB in thousands), of at least MIN_STORE_LIMIT."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 2GiB, 500MB or a number of bytes, got {text!r} / "
            "应为存储大小，例如 2GiB、500MB 或字节数"
        )
    size = int(float(match.group(1)) * unit)
    if size < MIN_STORE_LIMIT:
        raise argparse.ArgumentTypeError(
            f"{text!r} is less than the smallest limit, 16MiB / 小于最小限制 16MiB"
        )
    return size


def count_argument(text: str) -> int:
    """`--count`: a whole number of at least 0."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 0, got {text!r}")
    return int(text)


def check_site(site: Path) -> None:
    """Refuse, before anything starts, a --site that publishing would destroy."""
    from monitor.site.publish import SiteError, check_target

    try:
        check_target(site)
    except SiteError as exc:
        raise UsageError(str(exc)) from None


def config_dir(args: argparse.Namespace) -> Path:
    """The folder of the plan file: default home of the store and the site."""
    return Path(args.config).resolve().parent


def store_incidents(db: Path) -> set[int] | None:
    """Incident numbers in the store at `db` (None when there is no store to check against)."""
    from monitor.store import SQLiteError, StoreError, StoreReader

    if not db.exists():
        return None
    try:
        store = StoreReader(db, leave_no_files=True)  # a one-shot look: no files left
        try:
            return {record.id for record in store.incidents(limit=1_000_000)}
        finally:
            store.close()
    except StoreError as exc:
        raise UsageError(f"--db {exc}") from None
    except SQLiteError as exc:
        raise UsageError(f"--db {db}: not a channel-monitor store ({exc})") from None
