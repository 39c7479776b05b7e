"""`check`, `run`, `rehearse`, `render`, `demo` and `alerts test`: the commands that observe
channels, publish the page or send messages."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from datetime import datetime
from pathlib import Path

from monitor.cli.common import (
    EXIT_MISMATCH,
    EXIT_OK,
    UsageError,
    check_site,
    config_dir,
    demo_notices,
    instant,
    load_plan,
    local,
    notices_file,
    run_async,
    store_incidents,
)
from monitor.clock import RealClock
from monitor.plan import Plan, report
from monitor.plan.load import load_config
from monitor.table import render_table


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
    data["unobserved"] = sum(1 for s in data["services"] if _unobserved(s))
    data["push_not_checked"] = sum(
        1 for s in data["services"] if s["observed_by"] == "push" and not s["not_configured"]
    )
    return data


def _unobserved(entry: dict) -> bool:
    """A service `check` should have observed and could not: a probe that could not tell
    (unreachable in a way that says nothing, a browser missing, an unset variable), or a push
    whose token is unset (no channel can ever push it). A configured push is not one: its
    pushes arrive at `run`, never at a one-shot `check`."""
    if entry["observed_by"] == "push":
        return bool(entry["not_configured"])
    return entry["observed_by"] != "schedule" and entry["verdict"] == "unknown"


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
        print(_summary(data, args.allow_unknown))
    failed = data["mismatches"] or (data["unobserved"] and not args.allow_unknown)
    return EXIT_MISMATCH if failed else EXIT_OK


def _summary(data: dict, allow_unknown: bool) -> str:
    """The last line of `check`: mismatches, and the services that could not be observed,
    which fail the check unless `--allow-unknown` (a gate must not pass a plan whose probes
    were never able to look)."""
    line = f"{data['mismatches']} mismatch(es), {data['unobserved']} not observed (unknown)"
    if data["unobserved"]:
        line += (
            " allowed by --allow-unknown" if allow_unknown else ": exit 1 (--allow-unknown to pass)"
        )
    if data["push_not_checked"]:
        line += f"; {data['push_not_checked']} push service(s) not checked (pushes arrive at `run`)"
    zh = f"{data['mismatches']} 项不符，{data['unobserved']} 项无法观测"
    if data["push_not_checked"]:
        zh += f"，{data['push_not_checked']} 项推送服务不在 check 中检查"
    return f"{line} / {zh}"


# --- run -------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from monitor.daemon import Daemon, parse_listen, serve
    from monitor.gc_watch import settle
    from monitor.notices import load_notices
    from monitor.plan.load import gc_paused

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
    from monitor.subscriptions.keys import KeyProblem

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
    except KeyProblem as exc:  # [subscriptions] without its key: a sentence, not a traceback
        raise UsageError(f"{args.config}: [subscriptions]: {exc}") from None
    settle()  # the plan lives as long as the process: full GCs need not walk it (lag tail)
    try:
        run_async(serve(daemon))
    except OSError as exc:  # e.g. the listen address is in use: bad input, not a mismatch
        raise UsageError(f"run: {exc.strerror or exc}") from None
    return EXIT_OK


# --- rehearse --------------------------------------------------------------------------------

#: The store of a rehearsal beside the plan when `--db` is not given (never `run`'s monitor.db).
REHEARSAL_DB = "rehearsal.db"
#: Its page, beside `run`'s site/ (never over it).
REHEARSAL_SITE = "site-rehearsal"


def speed_argument(text: str) -> float:
    """`--speed`: plan seconds per real second, above 0 and at most a million."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'"{text}" is not a number such as 60') from None
    if not 0 < value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{text}: expected a speed above 0, at most 1000000")
    return value


def _fresh_store(db: Path, named: bool) -> None:
    """A rehearsal starts from an empty store, so its report and incidents are its own: the
    default store of an earlier rehearsal is replaced (unless one is still running on it); a
    store named with `--db` that already exists is refused rather than touched."""
    from monitor.store import StoreBusy, StoreError
    from monitor.store.lock import lock_store

    if not db.exists():
        return
    if named:
        raise UsageError(
            f"--db {db}: already exists; a rehearsal starts from an empty store "
            "(remove it or name another)"
        )
    try:
        lock = lock_store(db)
    except (StoreBusy, StoreError) as exc:
        raise UsageError(f"--db {exc}") from None
    try:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    finally:
        lock.release()
    print(f"channel-monitor rehearse: the earlier rehearsal's store {db} was replaced")


async def rehearse(daemon: object, clock: object, until: datetime | None) -> datetime:
    """Serve the rehearsal until `until` (plan time), SIGINT or SIGTERM; return the plan's
    instant it reached."""
    import signal

    from monitor.clock import ShiftedClock
    from monitor.daemon import Daemon

    assert isinstance(daemon, Daemon) and isinstance(clock, ShiftedClock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await daemon.start()
    print(f"channel-monitor rehearse: listening on http://{daemon.host}:{daemon.port}", flush=True)
    timed_out = False
    try:
        if until is None:
            await stop.wait()
        else:
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, clock.real_seconds(until)))
            except TimeoutError:
                timed_out = True
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        # a timer may fire a little before the wall clock reaches `until` (at 3,600 times a
        # millisecond is plan seconds): reaching it by the timer is reaching `until`
        if until is not None and timed_out:
            reached = until
        else:
            reached = clock.now() if until is None else min(clock.now(), until)
        await daemon.stop()
    return reached


def cmd_rehearse(args: argparse.Namespace) -> int:
    """Run the plan against the real (or staging) channels with its time shifted to start at
    `--from` now and run `--speed` times faster, then print the report on what it saw.

    Everything that describes the channels stays in real seconds: the scheduler paces probes
    on the event loop's clock, timeouts and push silences (`within`) are real timers, and
    grace and staleness, which the plan and the judge measure between instants of the plan,
    count `speed` times as many plan seconds (`Plan.pace`). Only the plan's own instants (its
    periods, transitions, milestones) come sooner."""
    from datetime import UTC

    from monitor.clock import ShiftedClock, parse_instant
    from monitor.daemon import Daemon, parse_listen
    from monitor.notices import load_notices
    from monitor.plan.schema import Rehearsal
    from monitor.report import build_report, open_readonly
    from monitor.report.formats import as_text
    from monitor.store import StoreError

    config = load_config(args.config, alerts=not args.no_alerts)
    zone = config.monitor.tz
    try:
        start = parse_instant(args.start, zone)
        until = parse_instant(args.until, zone) if args.until else None
    except ValueError as exc:
        raise UsageError(f"--from/--until: {exc}") from None
    if until is not None and until <= start:
        raise UsageError("--until: expected an instant of the plan after --from")
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    plan = Plan(config.model_copy(update={"rehearsal": Rehearsal(speed=args.speed)}))
    home = config_dir(args)
    db = Path(args.db) if args.db else home / REHEARSAL_DB
    if db.resolve() == (home / "monitor.db").resolve():
        raise UsageError(f"--db {db}: that is `run`'s store; a rehearsal keeps its own")
    site = Path(args.site) if args.site else home / REHEARSAL_SITE
    check_site(site)
    notices = notices_file(args)
    load_notices(notices, plan)
    _fresh_store(db, named=bool(args.db))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    clock = ShiftedClock(datetime.now(UTC), start, args.speed)
    try:
        daemon = Daemon(
            plan,
            db_path=db,
            site_dir=site,
            host=host,
            port=port,
            clock=clock,
            alerts=not args.no_alerts,
            notices_path=notices,
        )
    except StoreError as exc:
        raise UsageError(f"--db {exc}") from None
    end = f" until {local(plan, until.isoformat())}" if until is not None else " until Ctrl-C"
    print(
        f"channel-monitor rehearse 演练: plan time {local(plan, start.isoformat())}{end} "
        f"({plan.zone.key}), {args.speed:g} times faster; store {db}, page {site}\n"
        f"  plan time {start.isoformat()} was real time {clock.origin_real.isoformat()}",
        flush=True,
    )
    try:
        reached = run_async(rehearse(daemon, clock, until))
    except OSError as exc:
        raise UsageError(f"rehearse: {exc.strerror or exc}") from None
    print(f"rehearsal ended at plan time {local(plan, reached.isoformat())}", flush=True)
    if reached > start:
        store = open_readonly(db)
        try:
            report = build_report(plan, store, start, reached)
        finally:
            store.close()
        print(as_text(report))
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


def cmd_demo(args: argparse.Namespace) -> int:
    from monitor.daemon import parse_listen
    from monitor.demo.faults import FaultsError
    from monitor.demo.replay import Cadence
    from monitor.demo.run import DemoOptions, faults_for, is_shipped, run_demo
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
    from monitor.demo import NOTICES

    notices = demo_notices(args)
    if notices == NOTICES and plan_path is not None and not is_shipped(config):
        notices = None  # the demo's own notices name the 2022 plan's services
    faults_path = Path(args.faults) if args.faults else None
    try:  # read before anything starts: a bad file is refused with every problem in it
        script = faults_for(config, faults_path, shipped=plan_path is None)
    except FaultsError as exc:
        raise UsageError(str(exc)) from None
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
        notices=notices,
        plan_path=plan_path,
        faults_path=faults_path,
        script=script,
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
