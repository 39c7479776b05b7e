"""The `channel-monitor` command: validate, plan, check, run, render, demo.

Exit codes are a contract: 0 fine, 1 a mismatch was found (`check`), 2 bad input. Every error
the user can cause is printed as a sentence, never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from monitor.clock import RealClock, parse_instant
from monitor.config import ConfigError, load_config
from monitor.daemon import DEFAULT_PORT
from monitor.plan import Plan, report
from monitor.table import render_table

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT = 0, 1, 2

T = TypeVar("T")


class UsageError(Exception):
    """Bad input on the command line; the message is shown as it is."""


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop of the long-running commands (`run`, `demo`): uvloop where it is
    installed (a dependency except on Windows), which spends less CPU per probe than asyncio's
    own loop (bench/RESULTS.md); else None, asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop of `loop_factory`."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def load_plan(path: str) -> Plan:
    """Load and validate the plan file named on the command line."""
    return Plan(load_config(path))


def instant(args: argparse.Namespace, plan: Plan, name: str = "at") -> datetime:
    """The `--at` (or other) option as an aware instant, now when it is absent."""
    text = getattr(args, name, None)
    if not text:
        return RealClock().now()
    try:
        return parse_instant(text, plan.zone)
    except ValueError as exc:
        raise UsageError(f"--{name.rstrip('_').replace('_', '-')}: {exc}") from None


def local(plan: Plan, value: str | None) -> str:
    """An ISO instant from a report, shortened to `YYYY-MM-DD HH:MM` for tables."""
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone(plan.zone).strftime("%Y-%m-%d %H:%M")


# --- validate --------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    plan = load_plan(args.config)
    probed = sum(1 for ref in plan.services if ref.service.probe)
    config = plan.config
    print(
        f"{args.config}: OK: {len(config.channels)} channels, {len(plan.services)} services "
        f"({probed} probed), {len(config.periods)} periods, {len(config.milestones)} milestones"
    )
    return EXIT_OK


# --- plan ------------------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    plan = load_plan(args.config)
    if args.transitions:
        return _transitions(args, plan)
    data = report(plan, instant(args, plan))
    if args.format == "json":
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return EXIT_OK
    print(f"{plan.config.monitor.title} @ {local(plan, data['at'])} ({plan.zone.key})")
    rows = [
        [
            s["channel_name"],
            s["service_name"],
            s["expected"] + (" (grace)" if s["in_grace"] else ""),
            s["period"] or "default",
            local(plan, s["next_change"]),
        ]
        for s in data["services"]
    ]
    print(render_table(["channel", "service", "expected", "decided by", "next change"], rows))
    return EXIT_OK


def _transitions(args: argparse.Namespace, plan: Plan) -> int:
    if not args.from_ or not args.until:
        raise UsageError("--transitions needs --from and --until")
    start, end = instant(args, plan, "from_"), instant(args, plan, "until")
    if end <= start:
        raise UsageError("--until must be after --from")
    names = {ref.key: ref for ref in plan.services}
    items = [
        {
            "at": t.at.astimezone(plan.zone).isoformat(),
            "channel": t.channel,
            "service": t.service,
            "from": t.from_state,
            "to": t.to_state,
            "period": t.period,
        }
        for t in plan.transitions(start, end)
    ]
    if args.format == "json":
        print(json.dumps({"transitions": items}, ensure_ascii=False, indent=2))
        return EXIT_OK
    rows = []
    for item in items:
        ref = names[(item["channel"], item["service"])]
        rows.append(
            [
                local(plan, item["at"]),
                ref.channel.name,
                ref.service.name,
                f"{item['from']} -> {item['to']}",
                item["period"] or "-",
            ]
        )
    print(render_table(["at", "channel", "service", "change", "period"], rows))
    return EXIT_OK


# --- check ---------------------------------------------------------------------------------


async def check(plan: Plan, at: datetime) -> dict:
    """Probe every probed service once, concurrently, and judge each single observation
    against the expectation at `at`. The whole run takes about one timeout."""
    from monitor.judge import Verdict, single_verdict
    from monitor.probe import Prober

    data = report(plan, at)
    async with Prober() as prober:
        probed = [ref for ref in plan.services if ref.service.probe is not None]
        observations = await asyncio.gather(
            *(prober.probe(ref.service.probe, plan.timeout(ref)) for ref in probed)
        )
    by_key = {ref.key: obs for ref, obs in zip(probed, observations, strict=True)}
    for entry in data["services"]:
        ref = plan.service(entry["channel"], entry["service"])
        observation = by_key.get(ref.key)
        expectation = plan.expected(ref, at)
        entry["observed"] = (
            None
            if observation is None
            else {
                "serving": observation.serving,
                "reason": observation.reason,
                "status_code": observation.status_code,
                "duration_seconds": round(observation.duration_seconds, 6),
            }
        )
        verdict = single_verdict(expectation, entry["in_grace"], observation)
        entry["verdict"] = verdict.value
    data["mismatches"] = sum(
        1
        for s in data["services"]
        if s["verdict"] in (Verdict.UNEXPECTED_UP, Verdict.UNEXPECTED_DOWN)
    )
    return data


def cmd_check(args: argparse.Namespace) -> int:
    plan = load_plan(args.config)
    data = asyncio.run(check(plan, instant(args, plan)))
    if args.format == "json":
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print(f"{plan.config.monitor.title} @ {local(plan, data['at'])} ({plan.zone.key})")
        rows = []
        for s in data["services"]:
            observed = s["observed"]
            seen = (
                "-" if observed is None else ("serving" if observed["serving"] else "not serving")
            )
            reason = "" if observed is None else observed["reason"]
            rows.append(
                [s["channel_name"], s["service_name"], s["expected"], seen, reason, s["verdict"]]
            )
        print(
            render_table(["channel", "service", "expected", "observed", "reason", "verdict"], rows)
        )
        print(f"{data['mismatches']} mismatch(es)")
    return EXIT_MISMATCH if data["mismatches"] else EXIT_OK


# --- run -------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from monitor.daemon import Daemon, parse_listen, serve

    plan = load_plan(args.config)
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    from monitor.store import StoreError

    home = config_dir(args)
    try:
        daemon = Daemon(
            plan,
            db_path=Path(args.db) if args.db else home / "monitor.db",
            site_dir=Path(args.site) if args.site else home / "site",
            host=host,
            port=port,
        )
    except StoreError as exc:
        raise UsageError(f"--db {exc}") from None
    gc.collect()
    gc.freeze()  # the plan lives as long as the process: full GCs need not walk it (lag tail)
    try:
        run_async(serve(daemon))
    except OSError as exc:  # e.g. the listen address is in use: bad input, not a mismatch
        raise UsageError(f"run: {exc.strerror or exc}") from None
    return EXIT_OK


# --- render ----------------------------------------------------------------------------------


def cmd_render(args: argparse.Namespace) -> int:
    import sqlite3

    from monitor.site.render import render_from
    from monitor.store import StoreError

    plan = load_plan(args.config)
    at = instant(args, plan)
    home = config_dir(args)
    db = Path(args.db) if args.db else home / "monitor.db"
    site = Path(args.site) if args.site else home / "site"
    try:
        result = render_from(plan, site, at, db)
    except StoreError as exc:
        raise UsageError(f"--db {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise UsageError(f"--db {db}: not a channel-monitor store ({exc})") from None
    except OSError as exc:
        raise UsageError(f"--site {site}: {exc.strerror or exc}") from None
    size = result.files["index.html"] + result.files["style.css"]
    print(
        f"{site}: {len(result.files)} files as of {local(plan, at.isoformat())} "
        f"({plan.zone.key}); index.html + style.css {size / 1024:.1f} KB; "
        f"rendered in {result.seconds:.2f} s"
        + ("" if db.exists() else f" (no store at {db}: no history yet)")
    )
    return EXIT_OK


# --- demo ----------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from monitor.daemon import parse_listen
    from monitor.demo.replay import Cadence
    from monitor.demo.run import DemoOptions, run_demo

    config = load_config(args.config)
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    options = DemoOptions(
        config=config,
        site=Path(args.site),
        db=Path(args.db) if args.db else None,
        host=host,
        port=port,
        serve=not args.no_serve,
        linger=args.linger,
        cadence=Cadence(),
    )
    from monitor.store import StoreError

    try:
        run_async(run_demo(options))
    except StoreError as exc:
        raise UsageError(f"--db {exc}") from None
    except OSError as exc:
        raise UsageError(f"demo: {exc.strerror or exc}") from None
    return EXIT_OK


# --- alerts --------------------------------------------------------------------------------


def cmd_alerts_test(args: argparse.Namespace) -> int:
    """Send one clearly marked test message to every configured sink; report each answer."""
    from monitor.alerts.test import send_test

    plan = load_plan(args.config)
    if not plan.config.alerts:
        print(f"{args.config}: no [[alerts]] sinks are configured; nothing was sent.")
        return EXIT_OK
    results = asyncio.run(send_test(plan))
    rows = [[r.name, r.type, "ok" if r.ok else "FAILED", r.answer] for r in results]
    print(render_table(["sink", "type", "result", "answer"], rows))
    failed = sum(1 for r in results if not r.ok)
    print(f"{len(results) - failed} of {len(results)} sink(s) accepted the test message")
    return EXIT_MISMATCH if failed else EXIT_OK


# --- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", default="channels.toml", help="plan file (default: channels.toml)"
    )
    parser = argparse.ArgumentParser(
        prog="channel-monitor",
        description="Hold every service channel to a published cutover plan.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", parents=[common], help="check the plan file, list every error")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", parents=[common], help="what the plan expects of every service")
    p.add_argument("--at", help="ISO 8601 instant (naive = plan time zone); default now")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--transitions", action="store_true", help="list planned changes instead")
    p.add_argument("--from", dest="from_", metavar="T", help="with --transitions: start")
    p.add_argument("--until", metavar="T", help="with --transitions: end (exclusive)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("check", parents=[common], help="probe every service once and judge it")
    p.add_argument("--at", help="judge against the plan at this instant; default now")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("run", parents=[common], help="the monitor: probe, judge, store, serve")
    p.add_argument("--db", help="SQLite store (default: monitor.db beside the config)")
    p.add_argument("--site", help="output folder of the page (default: site/ beside the config)")
    p.add_argument(
        "--listen",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        help=f"HOST:PORT for /healthz, /metrics and the page (default 127.0.0.1:{DEFAULT_PORT})",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("render", parents=[common], help="write the public page (site/) once")
    p.add_argument("--db", help="SQLite store (default: monitor.db beside the config)")
    p.add_argument("--site", help="output folder of the page (default: site/ beside the config)")
    p.add_argument("--at", help="render the page as of this instant; default now")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser(
        "demo", parents=[common], help="replay the 2022 cutover on simulated channels"
    )
    p.add_argument(
        "--listen",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        help=f"HOST:PORT for /metrics and the site (default 127.0.0.1:{DEFAULT_PORT})",
    )
    p.add_argument("--site", default="site", help="output folder of the page (default: site/)")
    p.add_argument("--db", help="SQLite store to keep (default: a fresh temporary one)")
    p.add_argument("--no-serve", action="store_true", help="do not serve /metrics and the site")
    p.add_argument(
        "--linger", action="store_true", help="keep serving after the replay until Ctrl-C"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("alerts", help="alert sinks: send a test message")
    alerts = p.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    p = alerts.add_parser(
        "test", parents=[common], help="send a test message to every [[alerts]] sink"
    )
    p.set_defaults(func=cmd_alerts_test)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        count = len(exc.problems)
        print(
            f"{count} problem{'s' if count != 1 else ''} found; nothing was done.", file=sys.stderr
        )
        return EXIT_BAD_INPUT
    except UsageError as exc:
        print(f"channel-monitor: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


def config_dir(args: argparse.Namespace) -> Path:
    """The folder of the plan file: default home of the store and the site."""
    return Path(args.config).resolve().parent
