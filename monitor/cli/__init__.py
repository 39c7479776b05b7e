"""The `channel-monitor` command: validate, plan (and plan diff), check, run, render, report,
demo, notice, push, alerts test.

Exit codes are a contract: 0 fine, 1 a mismatch was found (`check`) or a push was not
accepted (`push`), 2 bad input. Every error
the user can cause is printed as a sentence, never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import typing
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, get_args

from monitor import DEFAULT_PORT
from monitor.clock import RealClock, parse_instant
from monitor.net.resolver import OwnLookups
from monitor.notices import Status
from monitor.plan import Plan, report
from monitor.plan.schema import ConfigError, ObservedBy, check_probe_url, load_config
from monitor.store import DEFAULT_SIZE_LIMIT
from monitor.table import render_table

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
    """Load and validate the plan file named on the command line."""
    return Plan(load_config(path))


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


def cmd_validate(args: argparse.Namespace) -> int:
    plan = load_plan(args.config)
    probed = sum(1 for ref in plan.services if ref.service.probe)
    config = plan.config
    print(
        f"{args.config}: OK: {len(config.channels)} channels, {len(plan.services)} services "
        f"({probed} probed), {len(config.periods)} periods, {len(config.milestones)} milestones"
    )
    unset = coverage(plan)
    warn_browser(plan)
    if unset and args.strict:
        print(
            f"{args.config}: --strict: {len(unset)} environment variable(s) not set; "
            "set them or remove the references / 有环境变量未设置",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    return EXIT_OK


def coverage(plan: Plan) -> dict[str, int]:
    """Print how the plan's services are observed, kind by kind, and which environment
    variables are unset; return those variables with how many services each keeps unobserved.
    """
    kinds = dict.fromkeys(typing.get_args(ObservedBy), 0)
    unset: dict[str, int] = {}
    for ref in plan.services:
        kinds[ref.service.observed_by] += 1
        for name in ref.service.unset:
            unset[name] = unset.get(name, 0) + 1
    counts = ", ".join(f"{kind} {count}" for kind, count in kinds.items())
    print(f"coverage 观测方式: {counts} (schedule = not observed 仅按计划)")
    if unset:
        waiting = sum(1 for ref in plan.services if ref.service.unset)
        names = ", ".join(
            f"{name} ({count} service{'s' if count != 1 else ''})" for name, count in unset.items()
        )
        print(
            f"not configured 未配置: {waiting} service(s) stay unknown until these environment "
            f"variables are set 设置以下环境变量之前这些服务判定为 unknown: {names}"
        )
    return unset


def warn_browser(plan: Plan) -> None:
    """Say (on stderr, exit code unchanged) when browser probes cannot run on this machine:
    those services would stay `unknown` until the missing part is installed."""
    from monitor.kinds.browser import missing_parts

    browsers = sum(1 for ref in plan.services if ref.service.observed_by == "browser")
    what = missing_parts(plan.config.monitor.chromium) if browsers else None
    if what is not None:
        print(
            f"warning: {browsers} browser service(s) will stay unknown here: {what} / "
            f"警告：{browsers} 个浏览器观测的服务在装好 Playwright 和 Chromium 之前判定为 unknown",
            file=sys.stderr,
        )


# --- plan ------------------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    if args.example:
        from monitor.plan.shipped import shipped_text

        sys.stdout.write(shipped_text())
        return EXIT_OK
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
    if end - start > MAX_TRANSITIONS_SPAN:
        raise UsageError(
            f"--from and --until are more than {MAX_TRANSITIONS_SPAN.days:,} days (ten years) "
            "apart; ask for a shorter range (recurring periods are walked day by day)"
        )
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


def cmd_plan_diff(args: argparse.Namespace) -> int:
    """Compare two plan files; both are validated first and every error of either is listed."""
    from monitor.plan.diff import as_json, as_text, default_range, diff_plans

    plans, problems = [], []
    for path in (args.old, args.new):
        try:
            plans.append(load_plan(path))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    old, new = plans
    start, end = default_range(old.config, new.config, RealClock().now())
    if args.diff_from:
        start = parse_option(args.diff_from, new, "--from")
    if args.diff_until:
        end = parse_option(args.diff_until, new, "--until")
    if end <= start:
        raise UsageError("--until must be after --from")
    if end - start > MAX_TRANSITIONS_SPAN:
        given = (
            "--from and --until are"
            if args.diff_from and args.diff_until
            else (
                "the range (from a day before the first to a day after the last date the plans "
                "name, or --from/--until where given) is"
            )
        )
        raise UsageError(
            f"{given} more than {MAX_TRANSITIONS_SPAN.days:,} days (ten years) apart; give "
            "--from and --until for a shorter range (recurring periods are walked day by day) "
            "(比较范围超过十年，请用 --from 和 --until 缩小范围)"
        )
    result = diff_plans(old, new, start, end)
    if args.diff_format == "json":
        print(json.dumps(as_json(result), ensure_ascii=False, indent=2))
    else:
        print(as_text(result))
    return EXIT_OK if result.same_expectations else EXIT_MISMATCH


# --- check ---------------------------------------------------------------------------------


async def check(plan: Plan, at: datetime) -> dict:
    """Observe every probed service once, concurrently, with the prober of its kind, and judge
    each single observation against the expectation at `at`. The whole run takes about one
    timeout. Services observed by push or not at all have no observation here."""
    from monitor.judge import Verdict, single_verdict
    from monitor.pipeline import make_probers, observe

    data = report(plan, at)
    probers = make_probers(chromium=plan.config.monitor.chromium)
    try:
        probed = [ref for ref in plan.services if ref.service.probe is not None]
        now = RealClock().now()
        observations = await asyncio.gather(
            *(observe(probers, ref, plan.timeout(ref), now) for ref in probed)
        )
    finally:
        for prober in probers.values():
            await prober.close()
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


_SEEN = {True: "serving", False: "not serving", None: "unknown"}


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
            seen = "-" if observed is None else _SEEN[observed["serving"]]
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
    from monitor.gc_watch import settle
    from monitor.notices import load_notices
    from monitor.plan.schema import gc_paused

    with gc_paused():  # millions of objects that all live on (see gc_watch.settle)
        plan = Plan(load_config(args.config, alerts=not args.no_alerts))
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    from monitor.net.slots import raise_fd_limit
    from monitor.pipeline import Pipeline
    from monitor.store import StoreError

    raise_fd_limit(Pipeline.concurrency)  # room for the probes of hung targets (slots.py)
    home = config_dir(args)
    notices = notices_file(args)
    load_notices(notices, plan)  # a broken notices file stops the start, as a broken plan does
    site = Path(args.site) if args.site else home / "site"
    check_site(site)
    try:
        with gc_paused():  # the per-service counters, states and caches: they live on too
            daemon = Daemon(
                plan,
                notices_path=notices,
                plan_path=Path(args.config),
                db_path=Path(args.db) if args.db else home / "monitor.db",
                site_dir=site,
                host=host,
                port=port,
                alerts=not args.no_alerts,
                store_limit=args.store_limit,
            )
    except StoreError as exc:
        raise UsageError(f"--db {exc}") from None
    settle()  # the plan lives as long as the process: full GCs need not walk it (lag tail)
    try:
        run_async(serve(daemon))
    except OSError as exc:  # e.g. the listen address is in use: bad input, not a mismatch
        raise UsageError(f"run: {exc.strerror or exc}") from None
    return EXIT_OK


# --- render ----------------------------------------------------------------------------------


def cmd_render(args: argparse.Namespace) -> int:
    from monitor.notices import load_notices
    from monitor.site.render import render_from
    from monitor.store import SQLiteError, StoreError

    plan = load_plan(args.config)
    at = instant(args, plan)
    home = config_dir(args)
    db = Path(args.db) if args.db else home / "monitor.db"
    site = Path(args.site) if args.site else home / "site"
    check_site(site)
    notices = load_notices(notices_file(args), plan, store_incidents(db))
    try:
        result = render_from(plan, site, at, db, notices)
    except StoreError as exc:
        raise UsageError(f"--db {exc}") from None
    except SQLiteError as exc:
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


# --- report --------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    """Planned against observed from the store, read-only; every format to standard output."""
    from monitor.plan.schema import parse_duration
    from monitor.report import MAX_COVER, ReportError, build_report, open_readonly
    from monitor.report.formats import render
    from monitor.store import SQLiteError

    plan = load_plan(args.config)
    db_path = Path(args.db) if args.db else config_dir(args) / "monitor.db"
    start = parse_option(args.from_, plan, "--from") if args.from_ else None
    end = parse_option(args.until, plan, "--until") if args.until else None
    cover = None
    if args.cover:
        try:
            cover = parse_duration(args.cover)
        except ValueError as exc:
            raise UsageError(f"--cover: {exc}") from None
        if cover.total_seconds() <= 0:
            raise UsageError("--cover: expected a duration above zero")
        if cover > MAX_COVER:
            raise UsageError(
                f"--cover: expected at most {MAX_COVER.days}d "
                f"(一次观测最多代表 {MAX_COVER.days} 天)"
            )
    try:
        db = open_readonly(db_path)
        try:
            result = build_report(plan, db, start, end, cover=cover, resolution=args.resolution)
        finally:
            db.close()
    except ReportError as exc:
        raise UsageError(str(exc)) from None
    except SQLiteError as exc:
        raise UsageError(f"--db {db_path}: cannot read the store ({exc})") from None
    print(render(result, args.format))
    return EXIT_OK


# --- demo ----------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from monitor.daemon import parse_listen
    from monitor.demo.replay import Cadence
    from monitor.demo.run import DemoOptions, run_demo
    from monitor.plan.shipped import LABEL, load_shipped

    # --config wins, then a channels.toml here, then the plan shipped inside the package
    if args.config is None and not Path("channels.toml").exists():
        config, source, plan_path = load_shipped(), LABEL, None
    else:
        source = plan_path = args.config or "channels.toml"
        config = load_config(source)
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    check_site(Path(args.site))
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
        notices=demo_notices(args),
        plan_path=plan_path,
    )
    from monitor.store import StoreError

    print(f"channel-monitor demo: {source}")
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


# --- notice --------------------------------------------------------------------------------


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


def store_incidents(db: Path) -> set[int] | None:
    """Incident numbers in the store at `db` (None when there is no store to check against)."""
    from monitor.store import SQLiteError, StoreError, StoreReader

    if not db.exists():
        return None
    try:
        store = StoreReader(db)
        try:
            return {record.id for record in store.incidents(limit=1_000_000)}
        finally:
            store.close()
    except StoreError as exc:
        raise UsageError(f"--db {exc}") from None
    except SQLiteError as exc:
        raise UsageError(f"--db {db}: not a channel-monitor store ({exc})") from None


def cmd_notice(args: argparse.Namespace) -> int:
    """Validate, list, add to or update the notices file; nothing is written unless the
    result validates."""
    from monitor import notices

    plan = load_plan(args.config)
    path = notices_file(args)
    db = Path(args.db) if args.db else config_dir(args) / "monitor.db"
    incidents = store_incidents(db)
    if args.notice_command == "add":
        incident = args.incident
        notices.add_notice(
            path,
            plan,
            ident=args.id,
            title=args.title,
            title_en=args.title_en,
            services=args.service or (),
            incident=incident,
            notify=args.notify,
            incidents=incidents,
        )
        print(f"{path}: notice {args.id} added; it shows once `notice update` posts an update")
        return EXIT_OK
    if args.notice_command == "update":
        at = instant(args, plan)
        item, kept = notices.add_update(
            path,
            plan,
            ident=args.id,
            status=args.status,
            text=args.text,
            text_en=args.text_en,
            at=at,
            incidents=incidents,
        )
        print(
            f"{path}: notice {args.id}: update {len(item.updates)} ({args.status}) at "
            f"{local(plan, at.isoformat())}"
        )
        if not kept:
            print(
                f"{path}: the file was not laid out as [[notices]] tables, so it was written "
                "anew: its comments were not kept",
                file=sys.stderr,
            )
        return EXIT_OK
    loaded = notices.load_notices(path, plan, incidents)
    if args.notice_command == "validate":
        print(f"{path}: OK: {len(loaded.notices)} notice(s)")
        return EXIT_OK
    now = RealClock().now()
    rows = []
    for item in loaded.notices:
        latest = item.latest(now)
        rows.append(
            [
                item.id,
                item.title,
                latest.status if latest else "(not posted)",
                local(plan, latest.at.isoformat()) if latest else "-",
                "active" if item.active(now) else "-",
                "yes" if item.notify else "no",
            ]
        )
    print(render_table(["id", "title", "status", "latest", "shown", "notify"], rows))
    return EXIT_OK


# --- push ----------------------------------------------------------------------------------

PUSH_TOKEN_VARIABLE = "CHANNEL_MONITOR_PUSH_TOKEN"


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


def cmd_push(args: argparse.Namespace) -> int:
    """Send one push (cron jobs, kiosk scripts): exit 0 when the monitor accepted it, else 1.

    The standard library's client, so a push costs no import of aiohttp or httpx."""
    import os
    import urllib.error
    import urllib.request
    from urllib.parse import quote, urlsplit

    token = os.environ.get(PUSH_TOKEN_VARIABLE, "").strip()
    if not token:
        raise UsageError(
            f"set {PUSH_TOKEN_VARIABLE} to the service's push token "
            f"(请在环境变量 {PUSH_TOKEN_VARIABLE} 中设置该服务的推送令牌)"
        )
    if not all("!" <= c <= "~" for c in token):  # what a header can carry, nothing else
        raise UsageError(
            f"{PUSH_TOKEN_VARIABLE}: expected printable ASCII without spaces or line breaks "
            "(the token is not repeated here) (推送令牌只能包含可打印的 ASCII 字符)"
        )
    expected = f"--url: expected the monitor's address, e.g. http://127.0.0.1:{DEFAULT_PORT}"
    try:
        check_probe_url(args.url)  # the check probe URLs get: parses, a host, a port that exists
        base = urlsplit(args.url)
    except ValueError as exc:  # its messages never quote the URL
        raise UsageError(f"{expected}; {exc} (监测服务地址无效)") from None
    if base.scheme not in ("http", "https") or not base.netloc:
        raise UsageError(expected)
    body: dict[str, Any] = {}
    if args.down:
        body["serving"] = False
    if args.reason is not None:
        body["reason"] = args.reason
    if args.count is not None:
        body["count"] = args.count
    path = f"/push/{quote(args.channel, safe='')}/{quote(args.service, safe='')}"
    request = urllib.request.Request(
        args.url.rstrip("/") + path,
        data=json.dumps(body, ensure_ascii=False).encode("utf-8") if body else b"",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    where = base.netloc.rpartition("@")[2]  # never echo credentials written into the URL
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            status, answer = response.status, response.read(65536)
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read(65536)
    except (ValueError, UnicodeError):  # what the URL checks above let through and http refuses
        raise UsageError(
            f"--url: cannot be sent as written (characters HTTP cannot carry?); {expected[7:]} "
            "(监测服务地址无法发送)"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        cause = getattr(exc, "reason", exc)
        text = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        print(
            f"channel-monitor push: cannot reach {where}: {text} (无法连接监测服务)",
            file=sys.stderr,
        )
        return EXIT_MISMATCH
    try:
        data = json.loads(answer)
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    if 200 <= status < 300:
        verdict = data.get("verdict", "?")
        print(f"{args.channel}/{args.service}: accepted (HTTP {status}), verdict {verdict}")
        return EXIT_OK
    error = data.get("error") or "not accepted"
    error_zh = data.get("error_zh") or "未被接受"
    print(
        f"channel-monitor push: {args.channel}/{args.service}: HTTP {status}: {error} ({error_zh})",
        file=sys.stderr,
    )
    return EXIT_MISMATCH


# --- parser ----------------------------------------------------------------------------------


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
        "render", parents=[common, notices], help="write the public page (site/) once"
    )
    p.add_argument("--db", help="SQLite store (default: monitor.db beside the config)")
    p.add_argument("--site", help="output folder of the page (default: site/ beside the config)")
    p.add_argument("--at", help="render the page as of this instant; default now")
    p.set_defaults(func=cmd_render)

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
        "demo", parents=[notices], help="replay the 2022 cutover on simulated channels"
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
