"""The `channel-monitor` command: validate, plan (and plan diff), check, run, render, report,
demo, notice, push, alerts test.

Exit codes are a contract: 0 fine, 1 a mismatch was found (`check`) or a push was not
accepted (`push`), 2 bad input. Every error the user can cause is printed as a sentence, never
as a traceback. Here is the parser and `main`; each family of commands is a module beside it
(`plan`, `run`, `report`, `notice`, `push`), and what they share is in `common`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from monitor import DEFAULT_PORT
from monitor.cli.common import (
    EXIT_BAD_INPUT,
    UsageError,
    count_argument,
    loop_factory,
    run_async,
    size_argument,
)
from monitor.cli.notice import cmd_notice
from monitor.cli.plan import cmd_plan, cmd_plan_diff, cmd_validate
from monitor.cli.push import PUSH_TOKEN_VARIABLE, cmd_push
from monitor.cli.report import cmd_report
from monitor.cli.run import (
    cmd_alerts_test,
    cmd_check,
    cmd_demo,
    cmd_rehearse,
    cmd_render,
    cmd_run,
    speed_argument,
)
from monitor.cli.subscription import add_parser as add_subscription_parser
from monitor.notices import Status
from monitor.plan.errors import ConfigError
from monitor.store import DEFAULT_SIZE_LIMIT

__all__ = ["loop_factory", "main", "run_async", "size_argument"]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", default="channels.toml", help="plan file (default: channels.toml)"
    )
    notices = argparse.ArgumentParser(add_help=False)
    notices.add_argument(
        "--notices",
        metavar="PATH",
        help="operators' notices (default: notices.toml beside the plan, if it exists)",
    )
    parser = argparse.ArgumentParser(
        prog="channel-monitor",
        description="Hold every service channel to a published cutover plan.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", parents=[common], help="check the plan file, list every error")
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 2 while any ${NAME} a probe or push needs is unset",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", parents=[common], help="what the plan expects of every service")
    p.add_argument("--at", help="ISO 8601 instant (naive = plan time zone); default now")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--transitions", action="store_true", help="list planned changes instead")
    p.add_argument("--from", dest="from_", metavar="T", help="with --transitions: start")
    p.add_argument("--until", metavar="T", help="with --transitions: end (exclusive)")
    p.add_argument(
        "--example",
        action="store_true",
        help="print the shipped 2022 plan, to start a plan of your own "
        "(channel-monitor plan --example > channels.toml)",
    )
    p.set_defaults(func=cmd_plan)
    actions = p.add_subparsers(dest="plan_action", metavar="ACTION")
    d = actions.add_parser(
        "diff", help="what changing the plan OLD to NEW changes (exit 1 if expectations differ)"
    )
    d.add_argument("old", metavar="OLD", help="the plan file in force")
    d.add_argument("new", metavar="NEW", help="the changed plan file")
    d.add_argument(
        "--from",
        dest="diff_from",
        metavar="T",
        help="start (default: a day before the first instant either plan names)",
    )
    d.add_argument(
        "--until",
        dest="diff_until",
        metavar="T",
        help="end, exclusive (default: a day after the last instant either plan names)",
    )
    d.add_argument("--format", dest="diff_format", choices=["table", "json"], default="table")
    d.set_defaults(func=cmd_plan_diff)

    p = sub.add_parser("check", parents=[common], help="probe every service once and judge it")
    p.add_argument("--at", help="judge against the plan at this instant; default now")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument(
        "--allow-unknown",
        action="store_true",
        help="exit 0 even when a probed service, or a push whose token is unset, could not be "
        "observed (default: exit 1)",
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "run", parents=[common, notices], help="the monitor: probe, judge, store, serve"
    )
    p.add_argument("--db", help="SQLite store (default: monitor.db beside the config)")
    p.add_argument("--site", help="output folder of the page (default: site/ beside the config)")
    p.add_argument(
        "--listen",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        help=f"HOST:PORT for /healthz, /metrics and the page (default 127.0.0.1:{DEFAULT_PORT})",
    )
    p.add_argument(
        "--no-alerts",
        action="store_true",
        help="send no alerts and ignore [[alerts]]: one location of several, judged centrally "
        "through Prometheus",
    )
    p.add_argument(
        "--store-limit",
        type=size_argument,
        default=DEFAULT_SIZE_LIMIT,
        help="past this size the store drops its oldest history, a day at a time (e.g. 2GiB, "
        "500MB; default 4GiB)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "rehearse",
        parents=[common, notices],
        help="run the plan against real or staging channels on its own time, sped up (演练)",
        description="Run the plan as `run` does, against the channels' real (or staging) "
        "addresses, with the plan's time starting at --from now and running --speed times "
        "faster. Probe intervals, timeouts, grace, thresholds and push `within` stay in real "
        "seconds. The page, alerts and metrics say it is a rehearsal; the store is its own; "
        "the report on it is printed at the end (--until, or Ctrl-C).",
    )
    p.add_argument(
        "--from",
        dest="start",
        required=True,
        metavar="INSTANT",
        help="the plan's instant the rehearsal starts at, e.g. 2026-12-18T16:30 (plan's zone)",
    )
    p.add_argument(
        "--speed",
        type=speed_argument,
        default=60.0,
        help="plan seconds per real second (default 60: a plan hour a real minute)",
    )
    p.add_argument("--until", metavar="INSTANT", help="the plan's instant it ends at")
    p.add_argument("--db", help="SQLite store (default: rehearsal.db beside the config)")
    p.add_argument(
        "--site", help="output folder of the page (default: site-rehearsal/ beside the config)"
    )
    p.add_argument(
        "--listen",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        help=f"HOST:PORT for /healthz, /metrics, /push and the page (default 127.0.0.1:"
        f"{DEFAULT_PORT})",
    )
    p.add_argument("--no-alerts", action="store_true", help="send no alerts")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_rehearse)

    p = sub.add_parser(
        "render", parents=[common, notices], help="write the public page (site/) once"
    )
    p.add_argument("--db", help="SQLite store (default: monitor.db beside the config)")
    p.add_argument("--site", help="output folder of the page (default: site/ beside the config)")
    p.add_argument("--at", help="render the page as of this instant; default now")
    p.set_defaults(func=cmd_render, leave_at_once=True)

    p = sub.add_parser(
        "report", parents=[common], help="planned against observed per service and channel"
    )
    p.add_argument(
        "--db", help="SQLite store, opened read-only (default: monitor.db beside the config)"
    )
    p.add_argument(
        "--from", dest="from_", metavar="T", help="start (default: the first stored hour)"
    )
    p.add_argument(
        "--until", metavar="T", help="end, exclusive (default: the end of the last stored hour)"
    )
    p.add_argument("--format", choices=["table", "csv", "json", "html"], default="table")
    p.add_argument(
        "--cover",
        metavar="DURATION",
        help="how long one observation stands at most (default: twice the service's interval)",
    )
    p.add_argument(
        "--resolution",
        choices=["auto", "raw", "hourly"],
        default="auto",
        help="raw observations where kept, else hourly rollups (auto); or force one",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "demo",
        parents=[notices],
        help="replay a plan (by default the 2022 cutover) on simulated channels",
    )
    p.add_argument(  # not `common`'s: its default would change for every command
        "--config",
        help="plan file (default: channels.toml if there is one here, else the 2022 plan "
        "shipped with channel-monitor)",
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
    p.add_argument(
        "--faults",
        metavar="FILE",
        help="TOML of faults to play ([[faults]] service, from, until, behaviour = up|down|"
        "slow|silent); default: the 2022 faults for the shipped plan, none for any other",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("notice", help="operators' notices: add, update, list, validate")
    actions = p.add_subparsers(dest="notice_command", required=True, metavar="ACTION")
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--db", help="store whose incident numbers `incident` may name (default: monitor.db)"
    )
    both = [common, notices, store]
    p = actions.add_parser("validate", parents=both, help="check the notices file")
    p.set_defaults(func=cmd_notice)
    p = actions.add_parser("list", parents=both, help="every notice and its latest update")
    p.set_defaults(func=cmd_notice)
    p = actions.add_parser("add", parents=both, help="add a notice (then post its updates)")
    p.add_argument("--id", required=True, help="a new id: lower-case letters, digits, hyphens")
    p.add_argument("--title", required=True, help="title in Chinese")
    p.add_argument("--title-en", required=True, help="title in English")
    p.add_argument(
        "--service", action="append", metavar="CHANNEL/SERVICE", help="a service it is about"
    )
    p.add_argument("--incident", type=int, help="the number of an incident it is about")
    p.add_argument(
        "--notify", action="store_true", help="send each update to the robots and webhooks"
    )
    p.set_defaults(func=cmd_notice)
    p = actions.add_parser("update", parents=both, help="post an update of a notice")
    p.add_argument("--id", required=True, help="the notice's id")
    p.add_argument(
        "--status",
        required=True,
        choices=get_args(Status),
    )
    p.add_argument("--text", required=True, help="what to say, in Chinese")
    p.add_argument("--text-en", required=True, help="what to say, in English")
    p.add_argument("--at", help="when it was posted (default now; naive = plan time zone)")
    p.set_defaults(func=cmd_notice)

    p = sub.add_parser(
        "push",
        help=f"send the monitor one push for a service (token from ${PUSH_TOKEN_VARIABLE})",
    )
    p.add_argument(
        "--url",
        required=True,
        help=f"the monitor's base address, e.g. http://127.0.0.1:{DEFAULT_PORT}",
    )
    p.add_argument("--channel", required=True, help="channel id in the plan")
    p.add_argument("--service", required=True, help="service id in the plan")
    p.add_argument("--down", action="store_true", help="report not serving (default: serving)")
    p.add_argument("--reason", help="a short reason, at most 200 characters")
    p.add_argument("--count", type=count_argument, help="business taken since the last push (>= 0)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("alerts", help="alert sinks: send a test message")
    alerts = p.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    p = alerts.add_parser(
        "test", parents=[common], help="send a test message to every [[alerts]] sink"
    )
    p.set_defaults(func=cmd_alerts_test)
    add_subscription_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code.

    Output piped into a reader that stops early (`validate | head -1`, `--help | head`) ends
    the command quietly: what was asked for has been read, so it is no error of the user's
    and no traceback (the exit code is the one Python's own tools use, 120)."""
    try:
        args = build_parser().parse_args(argv)
        code = _main(args)
        if argv is None and getattr(args, "leave_at_once", False):
            _leave(code)
        return code
    except BrokenPipeError:
        return _reader_left()


def _leave(code: int) -> None:
    """End the process now, without the interpreter tearing down every object: after
    `render` of 10,000 services that took 0.15 s of a command meant to take under 2 s, and
    nothing is left to do (the store is closed, the helper reaped, the site published).
    Only for a command run as a process (`argv` None): in-process callers get their code."""
    import logging
    import os

    sys.stdout.flush()  # a reader gone away raises BrokenPipeError here, as at shutdown
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


#: The exit code when the reader of our output went away (as Python does at shutdown).
EXIT_READER_LEFT = 120


def _reader_left() -> int:
    """Point stdout at /dev/null, so the interpreter's last flush meets no closed pipe."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (captured in tests)
        pass
    return EXIT_READER_LEFT


def _main(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        count = len(exc.problems)
        print(
            f"{count} problem{'s' if count != 1 else ''} found; nothing was done.", file=sys.stderr
        )
        config = getattr(args, "config", None)
        if config and not Path(config).exists():  # a first run in an empty folder
            print(
                f"To start from the 2022 plan shipped with channel-monitor: "
                f"channel-monitor plan --example > {config}",
                file=sys.stderr,
            )
        return EXIT_BAD_INPUT
    except UsageError as exc:
        print(f"channel-monitor: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
