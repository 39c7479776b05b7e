"""The real scheduler (APScheduler's AsyncIOScheduler) on the wall clock: repeated probes spread
over the interval, one probe per service at a time, a job at each planned transition, and a
`stop` that is quick and loses nothing."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from helpers import ChannelServer, async_wait_for, load_plan

from monitor.clock import RealClock
from monitor.kinds.http import Prober
from monitor.pipeline import Pipeline, Result
from monitor.scheduler import WORKERS_PER_SLOT, Scheduler
from monitor.store import Store

TZ = ZoneInfo("Asia/Shanghai")

HEAD = """
[monitor]
timezone = "Asia/Shanghai"
interval = "1s"
timeout = "2s"
grace = "0s"
"""

CHANNEL = """
[[channels]]
id = "portal"
name = "门户"
kind = "web"
group = "online"
"""


def service(sid: str, url: str, extra: str = "", probe_extra: str = "") -> str:
    return f"""
[[channels.services]]
id = "{sid}"
name = "服务 {sid}"
{extra}
[channels.services.probe]
url = "{url}"
{probe_extra}
"""


class Recorder:
    """Keeps every judged observation and every transition, with the wall time it arrived."""

    def __init__(self) -> None:
        self.results: list[Result] = []
        self.by_service: dict[str, list[Result]] = defaultdict(list)
        self.transitions: list[tuple[datetime, datetime]] = []

    async def observed(self, result: Result) -> None:
        self.results.append(result)
        self.by_service[result.ref.service.id].append(result)

    async def transition(self, at: datetime) -> None:
        self.transitions.append((at, datetime.now(UTC)))


class Running:
    """Plan, store, prober, pipeline and scheduler; `close` stops whatever still runs."""

    def __init__(self, tmp_path: Path, toml: str) -> None:
        self.plan = load_plan(tmp_path / "plan.toml", toml)
        self.store = Store(tmp_path / "monitor.db")
        self.prober = Prober()
        self.recorder = Recorder()
        self.pipeline = Pipeline(self.plan, self.store, RealClock(), self.prober, (self.recorder,))
        self.scheduler = Scheduler(self.pipeline)
        self.stopped = False

    async def stop(self) -> float:
        """Stop the scheduler; return how long `stop` took (seconds)."""
        started = time.monotonic()
        await self.scheduler.stop()
        self.stopped = True
        return time.monotonic() - started

    async def close(self) -> None:
        if not self.stopped:
            await self.stop()
        await self.prober.close()
        self.store.close()

    def stored(self) -> int:
        return self.store.db.execute("SELECT coalesce(sum(count), 0) FROM observations").fetchone()[
            0
        ]


@pytest.fixture
async def ten(tmp_path: Path, server: ChannelServer) -> AsyncIterator[Running]:
    toml = HEAD + CHANNEL
    for i in range(10):
        toml += service(f"s{i}", server.url(f"/s{i}"))
    running = Running(tmp_path, toml)
    yield running
    await running.close()


async def test_services_are_probed_repeatedly_and_spread_over_the_interval(
    ten: Running, server: ChannelServer
) -> None:
    ten.scheduler.start()
    names = [f"s{i}" for i in range(10)]

    # the first round: ten slots, one per service, spread over the one-second interval
    slots = await async_wait_for(
        lambda: len(ten.scheduler.slots()) == 10 and ten.scheduler.slots(),
        what="the first round's slots",
    )
    due = sorted(slots.values())
    assert 0.5 <= due[-1] - due[0] < 1.0
    gaps = [b - a for a, b in itertools.pairwise(due)]
    assert min(gaps) == pytest.approx(0.1, abs=0.01), "evenly spread"

    # every service is probed again and again
    await async_wait_for(
        lambda: all(len(ten.recorder.by_service[n]) >= 3 for n in names),
        timeout=20,
        what="three probes of every service",
    )
    first = sorted(ten.recorder.by_service[n][0].observation.at for n in names)
    # 0.9 s on an idle machine; timers that fire late on a loaded one shrink it
    assert (first[-1] - first[0]).total_seconds() >= 0.3, "the first round's starts are spread"
    for name in names:
        starts = [r.observation.at for r in ten.recorder.by_service[name][:3]]
        spacing = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
        assert all(s > 0.5 for s in spacing), f"{name} is probed once per interval: {spacing}"
    assert ten.scheduler.last_tick is not None
    assert len(ten.scheduler.lags) >= 30

    elapsed = await ten.stop()
    assert elapsed < 5
    seen = len(ten.recorder.results)
    assert ten.stored() == seen, "stop wrote every observation"
    assert server.hit_count() == seen


def held_and_quick(tmp_path: Path, server: ChannelServer, held_timeout: str) -> Running:
    """Two services: `held`, whose answers the server holds until released, and `quick`."""
    server.set("hold", "/held")
    toml = (
        HEAD
        + CHANNEL
        + service("held", server.url("/held"), probe_extra=f'timeout = "{held_timeout}"')
        + service("quick", server.url("/quick"))
    )
    return Running(tmp_path, toml)


async def test_no_second_probe_of_a_service_while_its_last_one_runs(
    tmp_path: Path, server: ChannelServer
) -> None:
    running = held_and_quick(tmp_path, server, held_timeout="20s")
    try:
        running.scheduler.start()
        # three rounds have passed for the quick service ...
        await async_wait_for(lambda: server.hit_count("/quick") >= 4, timeout=15)
        await async_wait_for(lambda: len(running.recorder.by_service["quick"]) >= 4)
        # ... and the held one was asked once: its later slots were skipped
        assert server.hit_count("/held") == 1
        assert running.recorder.by_service["held"] == []
        server.release()
        await async_wait_for(lambda: running.recorder.by_service["held"], what="held result")
        assert running.recorder.by_service["held"][0].observation.serving is True
        # and it is probed again afterwards
        await async_wait_for(lambda: server.hit_count("/held") >= 2, timeout=10)
    finally:
        await running.close()


def at_whole_second(delay: float) -> datetime:
    now = datetime.now(UTC)
    return datetime.fromtimestamp(math.ceil(now.timestamp()) + delay, UTC).astimezone(TZ)


async def test_a_planned_transition_fires_at_its_instant(
    tmp_path: Path, server: ChannelServer
) -> None:
    start = at_whole_second(2)
    end = start + timedelta(seconds=1)
    toml = (
        HEAD
        + f"""
[periods.soon]
start = {start.isoformat()}
end = {end.isoformat()}
"""
        + CHANNEL
        # probed once a minute: only the transition job can probe it again within the test
        + service(
            "pension",
            server.url("/pension"),
            extra='expect = [{ during = "soon", state = "down" }]',
            probe_extra='interval = "1m"',
        )
    )
    running = Running(tmp_path, toml)
    try:
        running.scheduler.start()
        await async_wait_for(
            lambda: len(running.recorder.transitions) >= 2,
            timeout=15,
            what="both transitions",
        )
        (first_at, first_wall), (second_at, second_wall) = running.recorder.transitions[:2]
        assert first_at == start
        assert second_at == end
        # never before the instant, and not a probe interval later either
        assert start <= first_wall < start + timedelta(seconds=1)
        assert end <= second_wall < end + timedelta(seconds=1)

        # the service the transition concerns is probed right away, against the new plan
        def after(at: datetime) -> list[Result]:
            return [r for r in running.recorder.by_service["pension"] if r.observation.at >= at]

        await async_wait_for(lambda: after(end), timeout=10, what="probe after the end")
        states = [(r.observation.at >= end, r.expectation.state) for r in after(start)]
        assert states[0] == (False, "down"), "probed at the start of the period, expected down"
        assert states[-1] == (True, "up"), "probed at its end, expected up again"
        assert len(running.recorder.by_service["pension"]) == 3, "start-up, start, end"
    finally:
        await running.close()


async def test_stop_is_quick_and_writes_everything(tmp_path: Path, server: ChannelServer) -> None:
    running = held_and_quick(tmp_path, server, held_timeout="2s")
    try:
        running.scheduler.start()
        await async_wait_for(lambda: server.hit_count("/held") == 1, timeout=10)
        await async_wait_for(lambda: running.recorder.by_service["quick"], what="a quick probe")
        # one probe is still in flight: stop waits for it (bounded by its timeout)
        elapsed = await running.stop()
        assert elapsed < 5
        (held,) = running.recorder.by_service["held"]
        assert held.observation.reason == "timeout after 2s"
        assert running.stored() == len(running.recorder.results)
        hits_at_stop = server.hit_count()
        assert running.scheduler.slots() == {}
        assert not running.scheduler.tasks
        # a round APScheduler had already submitted when `stop` came starts nothing
        ((interval, refs),) = running.scheduler.groups().items()
        await running.scheduler._round(refs, interval)
        assert running.scheduler.slots() == {}
        # nothing is probed after stop: wait out more than an interval by polling the server
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert server.hit_count() == hits_at_stop
            await asyncio.sleep(0.05)
    finally:
        await running.close()


async def test_a_monitor_that_is_behind_skips_due_probes_rather_than_queue_them(
    ten: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probes that cannot start wait; past MAX_WAITING a due probe is skipped and counted, so
    a monitor that cannot keep up holds bounded memory (100,000 waiting probes held gigabytes
    and made each full garbage collection seconds long)."""
    import monitor.scheduler

    monkeypatch.setattr(monitor.scheduler, "MAX_WAITING", 3)
    gate = asyncio.Event()

    async def stuck(_ref: object) -> None:
        await gate.wait()

    monkeypatch.setattr(ten.pipeline, "probe", stuck)
    ten.scheduler.start()
    try:
        await async_wait_for(lambda: ten.scheduler.skipped >= 7, what="seven skipped probes")
        assert ten.scheduler.pending() == 3
    finally:
        gate.set()


async def test_probes_waiting_for_a_worker_are_entries_of_a_queue_not_tasks(
    ten: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers (here one per slot of the concurrency) run the due probes; one waiting for a
    worker is an entry of a queue (a task of its own is about ten objects for every full
    collection to walk: 10,000 of them made those collections several times longer), and the
    time it waits counts as its lag."""
    import monitor.scheduler

    monkeypatch.setattr(monitor.scheduler, "WORKERS_PER_SLOT", 1)
    ten.pipeline.concurrency = 2
    gate = asyncio.Event()
    started: list[str] = []

    async def stuck(ref: object) -> None:
        started.append(ref.service.id)  # type: ignore[attr-defined]
        await gate.wait()

    monkeypatch.setattr(ten.pipeline, "probe", stuck)
    before = asyncio.all_tasks()
    ten.scheduler.start()
    try:
        await async_wait_for(lambda: ten.scheduler.pending() == 10, what="ten due probes")
        assert ten.scheduler.busy == 2 and len(started) == 2
        assert len(ten.scheduler.queued) == 8 and not ten.scheduler.tasks
        workers = set(ten.scheduler.workers)
        others = asyncio.all_tasks() - before - workers
        assert len(workers) == 2
        assert len(others) < 8, f"the waiting probes are not tasks: {others}"
        await asyncio.sleep(0.3)  # the eight wait this long at least (what is measured)
        gate.set()
        await async_wait_for(lambda: len(started) >= 10, what="every service probed")
        lags = list(ten.scheduler.lags)[:10]
        assert sum(1 for lag in lags if lag >= 0.3) >= 8, lags
        assert sorted(started[:10]) == [f"s{i}" for i in range(10)], "each once, none twice"
    finally:
        gate.set()


async def test_stop_drops_the_probes_waiting_for_a_worker_and_ends_the_workers(
    ten: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    import monitor.scheduler

    monkeypatch.setattr(monitor.scheduler, "WORKERS_PER_SLOT", 1)
    ten.pipeline.concurrency = 2
    started: list[str] = []

    async def stuck(ref: object) -> None:
        started.append(ref.service.id)  # type: ignore[attr-defined]
        await asyncio.Event().wait()  # never answers: stop's timeout ends it

    monkeypatch.setattr(ten.pipeline, "probe", stuck)
    ten.scheduler.start()
    await async_wait_for(lambda: ten.scheduler.pending() == 10, what="ten due probes")
    workers = list(ten.scheduler.workers)
    await ten.scheduler.stop(timeout=0.5)
    ten.stopped = True
    assert all(worker.done() for worker in workers)
    assert ten.scheduler.pending() == 0 and ten.scheduler.workers == []
    assert len(started) == 2, "the eight waiting were not started by the stop"


async def test_services_planned_alike_share_thresholds_and_keep_no_lock(ten: Running) -> None:
    """What the pipeline keeps per service once judged: its state, and no objects of its own
    that services planned alike can share (every full collection walks those made after the
    freeze)."""
    ten.scheduler.start()
    await async_wait_for(lambda: len(ten.pipeline.states) == 10, what="ten services judged")
    refs = ten.pipeline.probed
    assert len({id(ten.pipeline.thresholds(ref)) for ref in refs}) == 1
    await ten.stop()
    assert len(ten.pipeline._judging) == 0


def watch_the_freeze(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[int], list[tuple[int, bool]]]:
    """(the tries left at each check, (the check, collected first) of each freeze)."""
    import monitor.scheduler

    frozen: list[tuple[int, bool]] = []
    checks: list[int] = []

    def settle(collect: bool = False) -> None:
        frozen.append((len(checks), collect))

    monkeypatch.setattr(monitor.scheduler, "settle", settle)
    check = running.scheduler._settle

    def counted(longest: float, tries: int, again: bool = False) -> None:
        checks.append(tries)
        check(longest, tries, again)

    monkeypatch.setattr(running.scheduler, "_settle", counted)
    return checks, frozen


async def test_services_judged_after_the_freeze_are_frozen_once_more_when_judged(
    ten: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start that falls behind leaves services unjudged after its first round; their state,
    made later, would be walked by every full collection. The first freeze comes after the
    first round all the same; a second one (collecting first, so no garbage is frozen) once
    99 % are judged, three checks at most."""
    checks, frozen = watch_the_freeze(ten, monkeypatch)
    gate = asyncio.Event()
    real = ten.pipeline.probe

    async def held(ref: object) -> object:
        if ref.service.id != "s0":  # type: ignore[attr-defined]
            await gate.wait()  # nine of ten not judged before the first freeze
        return await real(ref)  # type: ignore[arg-type]

    monkeypatch.setattr(ten.pipeline, "probe", held)
    ten.scheduler.start()
    try:
        await async_wait_for(lambda: frozen, timeout=15, what="the first freeze")
        assert checks == [3] and frozen == [(1, False)]
        gate.set()
        await async_wait_for(lambda: len(frozen) == 2, timeout=15, what="the second freeze")
        assert checks == [3, 2] and frozen == [(1, False), (2, True)]
    finally:
        gate.set()


async def test_services_never_judged_stop_the_checks_after_three(
    ten: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks, frozen = watch_the_freeze(ten, monkeypatch)
    gate = asyncio.Event()

    async def stuck(_ref: object) -> None:
        await gate.wait()

    monkeypatch.setattr(ten.pipeline, "probe", stuck)
    ten.scheduler.start()
    try:
        await async_wait_for(lambda: len(frozen) == 2, timeout=20, what="two freezes")
        assert checks == [3, 2, 1] and frozen == [(1, False), (3, True)]
    finally:
        gate.set()


async def test_the_freeze_comes_once_after_one_round_when_every_service_is_judged(
    ten: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks, frozen = watch_the_freeze(ten, monkeypatch)
    ten.scheduler.start()
    await async_wait_for(lambda: frozen, timeout=15, what="the freeze")
    assert checks == [3] and frozen == [(1, False)]
    assert len(ten.pipeline.states) == 10


async def test_a_round_started_alone_has_workers_to_run_it(ten: Running) -> None:
    """`bench/probe_cpu.py` starts rounds itself, without `start`: the workers come with the
    first round."""
    ((interval, refs),) = ten.scheduler.groups().items()
    await ten.scheduler._round(refs, interval)
    await async_wait_for(lambda: len(ten.recorder.results) >= 10, what="ten services probed")
    assert len(ten.scheduler.workers) == ten.pipeline.concurrency * WORKERS_PER_SLOT


async def test_a_judgement_waiting_for_the_store_does_not_hold_the_probing_back(
    ten: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker holds its probe through judging, which waits for the store when an incident
    changes; the network slot is free by then, and other workers keep the slots busy."""
    ten.pipeline.concurrency = 1
    gate = asyncio.Event()
    judged: list[str] = []
    real = ten.pipeline.judge

    async def judge(ref: object, observation: object, plan: object = None) -> object:
        if ref.service.id == "s0":  # type: ignore[attr-defined]
            await gate.wait()  # as an incident's write waiting behind a long flush
        judged.append(ref.service.id)  # type: ignore[attr-defined]
        return await real(ref, observation, plan)  # type: ignore[arg-type]

    monkeypatch.setattr(ten.pipeline, "judge", judge)
    ten.scheduler.start()
    try:
        others = {f"s{i}" for i in range(1, 10)}
        await async_wait_for(lambda: others <= set(judged), what="the other nine judged")
        assert "s0" not in judged
    finally:
        gate.set()


async def test_services_due_between_two_wakes_of_the_pacer_start_together(
    tmp_path: Path, server: ChannelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty services a second, 25 ms apart: the pacer starts the ones due since it last woke in
    one turn of the loop (a wake per slot cost a sleep, a turn and a context switch per probe)
    and still spreads the round over the interval."""
    from monitor.scheduler import TICK

    toml = HEAD + CHANNEL + "".join(service(f"s{i}", server.url(f"/s{i}")) for i in range(40))
    running = Running(tmp_path, toml)
    starts: list[float] = []
    launch = running.scheduler._launch

    def recorded(ref: object, due: float) -> None:
        starts.append(time.monotonic())
        launch(ref, due)  # type: ignore[arg-type]

    monkeypatch.setattr(running.scheduler, "_launch", recorded)
    try:
        running.scheduler.start()
        await async_wait_for(lambda: len(starts) >= 80, timeout=15, what="two rounds started")
        # starts in the same turn are microseconds apart; separate wakes at least a tick
        turns = 1 + sum(1 for a, b in itertools.pairwise(starts[:80]) if b - a > TICK / 5)
        assert turns <= 80 / 1.6, f"{turns} turns of the pacer for 80 starts"
        # 0.975 s on an idle machine; timers that fire late on a loaded one shrink it
        assert starts[39] - starts[0] >= 0.3, "the round is still spread over its second"
    finally:
        await running.close()


async def test_hung_targets_do_not_hold_back_the_other_services(
    tmp_path: Path, server: ChannelServer
) -> None:
    """Six services whose target never answers (until their 20 s timeout) and two slots: the
    hung probes give their slots back after `linger`, other workers stand in for the ones they
    hold, and the quick services are probed round after round meanwhile."""
    from monitor.net.slots import Slots

    server.set("hold", "/held")
    toml = HEAD + CHANNEL
    toml += "".join(
        service(f"held{i}", server.url("/held"), probe_extra='timeout = "20s"') for i in range(6)
    )
    toml += "".join(service(f"quick{i}", server.url(f"/quick{i}")) for i in range(3))
    running = Running(tmp_path, toml)
    running.pipeline.concurrency = 2  # two slots, four workers
    running.pipeline.slots = Slots(2, linger=0.2, most_lent=10)
    running.pipeline.slots.on_lend = running.scheduler._stand_in
    try:
        running.scheduler.start()
        quick = [f"quick{i}" for i in range(3)]
        await async_wait_for(
            lambda: all(len(running.recorder.by_service[n]) >= 3 for n in quick),
            timeout=15,
            what="three rounds of the quick services while six targets hang",
        )
        assert server.hit_count("/held") == 6 and running.pipeline.slots.lent == 6
        assert running.recorder.by_service["held0"] == []
        assert len(running.scheduler.workers) == 4 + 6, "a stand-in for each lent probe"
        server.release()
        await async_wait_for(
            lambda: (
                running.pipeline.slots.lent == 0
                and all(running.recorder.by_service[f"held{i}"] for i in range(6))
            ),
            what="the hung probes answered",
        )
        await async_wait_for(
            lambda: len(running.scheduler.workers) == 4, what="the stand-ins gone again"
        )
    finally:
        await running.close()


def test_the_pacer_wakes_about_once_per_ten_due_services_within_its_bounds(ten: Running) -> None:
    """200 probes a second: a wake every 50 ms; 100,000 services a minute: every 6 ms (groups
    of 83 held 15-35 MiB more at their peaks); never more often than every 5 ms, and a plan of
    a few services is still looked at every 50 ms."""
    from monitor.scheduler import _Round

    def nap(*rates: float) -> float:
        ten.scheduler.rounds = {
            timedelta(seconds=index + 1): _Round([], 0.0, 0.0, 1 / rate)
            for index, rate in enumerate(rates)
        }
        return ten.scheduler._nap()

    assert nap(200) == pytest.approx(0.05)
    assert nap(100_000 / 60) == pytest.approx(0.006)
    assert nap(1_000, 2_000 / 3) == pytest.approx(0.006), "the rounds of every interval together"
    assert nap(100_000) == 0.005
    assert nap(73 / 60) == 0.05
    ten.scheduler.rounds = {}
    assert ten.scheduler._nap() == 0.05


async def test_a_reload_that_drops_an_interval_drops_its_round_and_its_pace(
    tmp_path: Path, server: ChannelServer
) -> None:
    """300 services moved from 1 s to 60 s: the 1 s round goes with its job, and the pacer's
    wakes follow the 60 s round alone (before, the dropped round set the pace until a
    restart, and kept the old plan's services alive)."""
    from monitor.plan.change import PlanChange

    before = HEAD + CHANNEL + "".join(service(f"s{i}", server.url(f"/s{i}")) for i in range(300))
    running = Running(tmp_path, before)
    try:
        running.scheduler.start()
        await async_wait_for(lambda: bool(running.scheduler.rounds), what="the first round")
        assert running.scheduler._nap() == pytest.approx(10 / 300)
        after = load_plan(
            tmp_path / "after.toml", before.replace('interval = "1s"', 'interval = "60s"')
        )
        change = PlanChange.between(running.plan, after, datetime.now(UTC))
        running.pipeline.use_plan(change)
        running.scheduler.use_plan(change)
        await async_wait_for(
            lambda: timedelta(seconds=60) in running.scheduler.rounds, what="the 60 s round"
        )
        assert set(running.scheduler.rounds) == {timedelta(seconds=60)}
        assert running.scheduler._nap() == 0.05
        # a run of the 1 s job that APScheduler had handed to the loop just before the reload
        old_refs = list(running.scheduler.rounds[timedelta(seconds=60)].refs)
        await running.scheduler._round(old_refs, timedelta(seconds=1))
        assert set(running.scheduler.rounds) == {timedelta(seconds=60)}, "no round of a gone job"
        assert running.scheduler._nap() == 0.05
    finally:
        await running.close()


async def test_every_service_is_started_once_a_round_even_the_last_of_a_round(
    tmp_path: Path, server: ChannelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty services a second: the pacer wakes every 50 ms, so the last slots of a round often
    come after its last wake. A new round used to replace the old one then, and the services
    of those slots went unprobed that round: the same ones round after round, whose verdicts
    went stale (in `bench/run_cpu.py`, five services of 2,000 went 39 s without a probe at a
    10 s interval)."""
    toml = HEAD + CHANNEL + "".join(service(f"s{i}", server.url(f"/s{i}")) for i in range(40))
    running = Running(tmp_path, toml)
    started: dict[str, int] = defaultdict(int)
    launch = running.scheduler._launch

    def recorded(ref: object, due: float) -> None:
        started[ref.service.id] += 1  # type: ignore[attr-defined]
        launch(ref, due)  # type: ignore[arg-type]

    monkeypatch.setattr(running.scheduler, "_launch", recorded)
    try:
        running.scheduler.start()
        # the first service of a round starts with the round, so its count is the rounds begun;
        # the last of the round before may still be due (a round that began a little early)
        await async_wait_for(lambda: started["s0"] >= 12, timeout=30, what="twelve rounds")
        rounds_done = started["s0"] - 2
        short = {name: count for name, count in started.items() if count < rounds_done}
        assert len(started) == 40
        assert not short, f"started fewer times than the {rounds_done} rounds done: {short}"
    finally:
        await running.close()
