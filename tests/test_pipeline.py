"""The probe -> judge -> store path on a replay clock, against a real local server: incidents
open and resolve, survive a restart without being opened twice, broken listeners are contained,
and a service is never probed twice at once."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from helpers import MAINTENANCE_PATTERN, ChannelServer, async_wait_for, load_plan, query

from monitor.clock import ReplayClock
from monitor.judge import Verdict
from monitor.kinds.http import Prober
from monitor.pipeline import Pipeline, Result
from monitor.plan import Plan
from monitor.store import Store

TZ = ZoneInfo("Asia/Shanghai")
START = datetime(2022, 7, 1, 12, 0, tzinfo=TZ)  # inside the freeze, far from its edges
STEP = timedelta(minutes=1)

PLAN = """
[monitor]
timezone = "Asia/Shanghai"
interval = "1m"
timeout = "3s"
grace = "5m"
failure_threshold = 2
success_threshold = 2

[periods.freeze]
start = 2022-06-22T18:00:00
end = 2022-07-25T08:30:00

[[channels]]
id = "portal"
name = "门户"
kind = "web"
group = "online"

[[channels.services]]
id = "pension"
name = "养老保险"
expect = [{{ during = "freeze", state = "down" }}]
probe = {{ url = "{url}pension", body_not_matches = "{pattern}" }}

[[channels.services]]
id = "card"
name = "社保卡"
probe = {{ url = "{url}card", body_not_matches = "{pattern}" }}

[[channels.services]]
id = "slow"
name = "慢服务"
probe = {{ url = "{url}slow", timeout = "10s" }}

[[channels.services]]
id = "b1"
name = "服务一"
probe = {{ url = "{url}b1" }}

[[channels.services]]
id = "b2"
name = "服务二"
probe = {{ url = "{url}b2" }}

[[channels.services]]
id = "b3"
name = "服务三"
probe = {{ url = "{url}b3" }}

[[channels.services]]
id = "b4"
name = "服务四"
probe = {{ url = "{url}b4" }}

[[channels]]
id = "hall"
name = "办事大厅"
kind = "offline"
group = "offline"

[[channels.services]]
id = "window"
name = "窗口"
expect = [{{ during = "freeze", state = "down" }}]
"""


class Recorder:
    """A listener that keeps what it is told."""

    def __init__(self) -> None:
        self.results: list[Result] = []
        self.transitions: list[datetime] = []

    async def observed(self, result: Result) -> None:
        self.results.append(result)

    async def transition(self, at: datetime) -> None:
        self.transitions.append(at)


class Broken:
    """A listener that fails on everything."""

    def __init__(self) -> None:
        self.calls = 0

    async def observed(self, result: Result) -> None:
        self.calls += 1
        raise RuntimeError("listener bug")

    async def transition(self, at: datetime) -> None:
        self.calls += 1
        raise RuntimeError("listener bug")


@pytest.fixture
def plan(tmp_path: Path, server: ChannelServer) -> Plan:
    return load_plan(
        tmp_path / "plan.toml", PLAN.format(url=server.url("/"), pattern=MAINTENANCE_PATTERN)
    )


@pytest.fixture
def clock() -> ReplayClock:
    return ReplayClock(START, speed=0)


class Stack:
    """Store, prober and pipeline, opened and closed together (a `run` in miniature)."""

    def __init__(self, plan: Plan, db: Path, clock: ReplayClock, **kwargs) -> None:
        self.store = Store(db)
        self.prober = Prober()
        self.pipeline = Pipeline(plan, self.store, clock, self.prober, **kwargs)

    async def close(self) -> None:
        await self.pipeline.flush()
        await self.prober.close()
        self.store.close()


@pytest.fixture
async def stack(plan: Plan, tmp_path: Path, clock: ReplayClock) -> AsyncIterator[Stack]:
    stack = Stack(plan, tmp_path / "monitor.db", clock)
    yield stack
    await stack.close()


def incident_rows(db: Path) -> list[tuple]:
    return query(db, "SELECT id, channel, business, direction, resolved_at FROM incidents")


async def step(stack: Stack, clock: ReplayClock, key: tuple[str, str]) -> Result:
    clock.advance(STEP)
    result = await stack.pipeline.probe(stack.pipeline.plan.service(*key))
    assert result is not None
    return result


PENSION = ("portal", "pension")
CARD = ("portal", "card")


async def test_incident_opens_is_stored_and_resolves(
    stack: Stack, server: ChannelServer, clock: ReplayClock, tmp_path: Path
) -> None:
    db = tmp_path / "monitor.db"
    server.set("serving", "/pension")  # up during the freeze: unexpected_up

    first = await step(stack, clock, PENSION)
    assert first.observation.serving is True
    assert first.observation.reason == "HTTP 200"
    assert first.observation.at == clock.now()
    assert first.expectation.state == "down"
    assert first.judgement.raw is Verdict.UNEXPECTED_UP
    assert first.verdict is Verdict.OK, "one mismatch is not an incident yet"
    assert first.incidents == ()
    assert incident_rows(db) == []

    second = await step(stack, clock, PENSION)
    assert second.verdict is Verdict.UNEXPECTED_UP
    assert second.previous_verdict is Verdict.OK
    (opened,) = second.incidents
    assert (opened.direction, opened.opened_at, opened.expected, opened.period) == (
        "unexpected_up",
        clock.now(),
        "down",
        "freeze",
    )
    assert incident_rows(db) == [(opened.id, "portal", "pension", "unexpected_up", None)]
    assert stack.pipeline.states[PENSION].incident.id == opened.id
    assert stack.pipeline.verdict(stack.pipeline.plan.service(*PENSION)) is Verdict.UNEXPECTED_UP

    server.set("maintenance", "/pension")  # the maintenance notice is up: as planned
    third = await step(stack, clock, PENSION)
    assert third.observation.serving is False
    assert third.observation.reason == "body matches maintenance notice"
    assert third.verdict is Verdict.UNEXPECTED_UP, "one match does not resolve"
    assert third.incidents == ()

    fourth = await step(stack, clock, PENSION)
    (resolved,) = fourth.incidents
    assert resolved.id == opened.id
    assert resolved.resolved_at == clock.now()
    assert resolved.resolve_reason == "body matches maintenance notice"
    assert fourth.verdict is Verdict.OK
    assert stack.store.open_incidents() == []

    await stack.pipeline.flush()
    rows = stack.store.observations("portal", "pension", START)
    assert [(r[1], r[3], r[4]) for r in rows] == [
        (1, "down", "unexpected_up"),
        (1, "down", "unexpected_up"),
        (0, "down", None),
        (0, "down", None),
    ]
    assert server.hit_count("/pension") == 4


async def test_an_expected_up_service_going_down(
    stack: Stack, server: ChannelServer, clock: ReplayClock
) -> None:
    server.set("error", "/card")
    await step(stack, clock, CARD)
    result = await step(stack, clock, CARD)
    assert result.observation.reason == "HTTP 503"
    assert result.observation.status_code == 503
    assert [r.direction for r in result.incidents] == ["unexpected_down"]
    assert result.verdict is Verdict.UNEXPECTED_DOWN


async def test_restart_resumes_the_open_incident(
    plan: Plan, server: ChannelServer, clock: ReplayClock, tmp_path: Path
) -> None:
    db = tmp_path / "monitor.db"
    server.set("serving", "/pension")
    first = Stack(plan, db, clock)
    try:
        await step(first, clock, PENSION)
        (opened,) = (await step(first, clock, PENSION)).incidents
    finally:
        await first.close()

    second = Stack(plan, db, clock)
    try:
        assert await second.pipeline.resume() == 1
        ref = plan.service(*PENSION)
        assert second.pipeline.states[PENSION].incident.id == opened.id
        # nothing seen since the restart: the verdict waits for data
        assert second.pipeline.verdict(ref) is Verdict.UNKNOWN
        for _ in range(5):  # the mismatch goes on, far past the threshold
            result = await step(second, clock, PENSION)
            assert result.incidents == ()
            assert result.verdict is Verdict.UNEXPECTED_UP
        assert incident_rows(db) == [(opened.id, "portal", "pension", "unexpected_up", None)]

        server.set("maintenance", "/pension")
        await step(second, clock, PENSION)
        (resolved,) = (await step(second, clock, PENSION)).incidents
        assert resolved.id == opened.id
        rows = incident_rows(db)
        assert len(rows) == 1
        assert rows[0][4] == clock.now().timestamp()
    finally:
        await second.close()

    third = Stack(plan, db, clock)
    try:
        assert await third.pipeline.resume() == 0, "a resolved incident is not resumed"
    finally:
        await third.close()


async def test_resume_resolves_incidents_of_services_the_plan_no_longer_has(
    plan: Plan, clock: ReplayClock, tmp_path: Path
) -> None:
    db = tmp_path / "monitor.db"
    Store(db).close()  # create the schema
    query(
        db,
        "INSERT INTO incidents (channel, business, direction, opened_at, reason, expected) "
        "VALUES ('gone', 'old', 'unexpected_up', 0, 'HTTP 200', 'down')",
    )
    stack = Stack(plan, db, clock)
    try:
        assert await stack.pipeline.resume() == 0
        assert ("gone", "old") not in stack.pipeline.states
        # a plan edited while the monitor was stopped ends as a reload would have ended it
        assert stack.store.open_incidents() == []
        assert query(db, "SELECT resolve_reason FROM incidents") == [("removed from the plan",)]
    finally:
        await stack.close()


async def test_a_broken_listener_does_not_stop_the_pipeline(
    plan: Plan, server: ChannelServer, clock: ReplayClock, tmp_path: Path
) -> None:
    broken, recorder = Broken(), Recorder()
    stack = Stack(plan, tmp_path / "monitor.db", clock, listeners=[broken, recorder])
    try:
        server.set("serving", "/pension")
        await step(stack, clock, PENSION)
        result = await step(stack, clock, PENSION)
        assert len(result.incidents) == 1, "the incident is still opened and stored"
        assert broken.calls == 2
        assert [r.verdict for r in recorder.results] == [Verdict.OK, Verdict.UNEXPECTED_UP]
        await stack.pipeline.planned_transition(clock.now())
        assert recorder.transitions == [clock.now()]
        assert broken.calls == 3
    finally:
        await stack.close()


async def test_no_second_probe_while_the_first_runs(
    stack: Stack, server: ChannelServer, clock: ReplayClock
) -> None:
    ref = stack.pipeline.plan.service("portal", "slow")
    server.set("hold", "/slow")
    clock.advance(STEP)
    first = asyncio.create_task(stack.pipeline.probe(ref))
    await async_wait_for(lambda: server.hit_count("/slow") == 1, what="the first probe")
    assert ref.key in stack.pipeline.running
    assert await stack.pipeline.probe(ref) is None
    # another service is not held up by it
    other = await stack.pipeline.probe(stack.pipeline.plan.service(*CARD))
    assert other is not None
    server.release()
    result = await asyncio.wait_for(first, 10)
    assert result is not None
    assert result.observation.serving is True
    assert server.hit_count("/slow") == 1, "the refused probe never reached the server"
    assert ref.key not in stack.pipeline.running
    clock.advance(STEP)
    assert await stack.pipeline.probe(ref) is not None, "the next probe runs again"


async def test_two_concurrent_calls_probe_once(
    stack: Stack, server: ChannelServer, clock: ReplayClock
) -> None:
    ref = stack.pipeline.plan.service("portal", "slow")
    server.set("hold", "/slow")
    both = asyncio.gather(stack.pipeline.probe(ref), stack.pipeline.probe(ref))
    await async_wait_for(lambda: server.hit_count("/slow") == 1, what="the first probe")
    server.release()
    results = await asyncio.wait_for(both, 10)
    assert sorted(r is None for r in results) == [False, True]
    assert server.hit_count("/slow") == 1


async def test_schedule_only_services_are_not_probed(stack: Stack) -> None:
    ref = stack.pipeline.plan.service("hall", "window")
    assert ref not in stack.pipeline.probed
    assert await stack.pipeline.probe(ref) is None
    assert stack.pipeline.verdict(ref) is Verdict.UNKNOWN


async def test_probe_all_respects_the_concurrency_limit(
    plan: Plan, server: ChannelServer, clock: ReplayClock, tmp_path: Path
) -> None:
    stack = Stack(plan, tmp_path / "monitor.db", clock, concurrency=2)
    try:
        held = [f"/b{i}" for i in range(1, 5)]
        for path in held:
            server.set("hold", path)
        refs = [plan.service("portal", p.strip("/")) for p in held]
        clock.advance(STEP)
        task = asyncio.create_task(stack.pipeline.probe_all(refs))
        await async_wait_for(lambda: server.hit_count() == 2, what="two probes in flight")
        server.release()
        results = await asyncio.wait_for(task, 10)
        assert len(results) == 4
        assert all(r.observation.serving for r in results)
        assert server.max_in_flight == 2
    finally:
        await stack.close()


async def test_stale_data_turns_unknown(
    stack: Stack, server: ChannelServer, clock: ReplayClock
) -> None:
    ref = stack.pipeline.plan.service(*CARD)
    await step(stack, clock, CARD)
    assert stack.pipeline.verdict(ref) is Verdict.OK
    # stale after two intervals and a timeout without a probe
    clock.advance(2 * STEP + timedelta(seconds=3))
    assert stack.pipeline.verdict(ref) is Verdict.OK
    clock.advance(timedelta(seconds=1))
    assert stack.pipeline.verdict(ref) is Verdict.UNKNOWN


class RefusingStore(Store):
    """A store whose disk is full for incident writes while `full` is set."""

    full = False

    def record_event(self, channel, business, event):  # type: ignore[no-untyped-def]
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        return super().record_event(channel, business, event)


async def test_an_incident_the_store_cannot_write_is_retried_not_lost(
    plan: Plan,
    server: ChannelServer,
    clock: ReplayClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = tmp_path / "monitor.db"
    stack = Stack(plan, db, clock)
    stack.store.close()
    stack.store = RefusingStore(db)
    stack.pipeline.store = stack.store
    try:
        server.set("serving", "/pension")  # up during the freeze: unexpected_up
        RefusingStore.full = True
        for _ in range(3):  # the threshold is reached, but nothing can be written
            result = await step(stack, clock, PENSION)
            assert result.incidents == ()
        assert stack.pipeline.states.get(PENSION) is None or (
            stack.pipeline.states[PENSION].incident is None
        )
        assert incident_rows(db) == []
        deferred = [r for r in caplog.records if "not written" in r.getMessage()]
        assert len(deferred) == 1 and not any(r.exc_info for r in caplog.records)
        RefusingStore.full = False  # space is back: the next observation opens it, once
        result = await step(stack, clock, PENSION)
        (opened,) = result.incidents
        assert incident_rows(db) == [(opened.id, "portal", "pension", "unexpected_up", None)]
        assert stack.pipeline.states[PENSION].incident.id == opened.id
    finally:
        RefusingStore.full = False
        await stack.close()


async def test_a_services_state_is_one_object_updated_in_place(
    stack: Stack, server: ChannelServer, clock: ReplayClock
) -> None:
    """At 100,000 services a new state object each judgement was 100,000 more objects for
    every full collection to walk: the kept one takes the new values instead, and what
    listeners got stays as it was given."""
    server.set("serving", "/pension")  # up during the freeze: an incident after two
    first = await step(stack, clock, PENSION)
    kept = stack.pipeline.states[PENSION]
    second = await step(stack, clock, PENSION)
    assert stack.pipeline.states[PENSION] is kept
    assert kept.last_at == second.judgement.state.last_at == clock.now()
    assert kept.incident is not None and kept.incident.id == second.incidents[0].id
    assert first.judgement.state.incident is None, "a listener's state does not change"
    assert stack.pipeline.verdict(stack.pipeline.plan.service(*PENSION)) is Verdict.UNEXPECTED_UP


async def test_an_incident_the_freezes_end_resolves_says_the_channel_never_closed(
    plan: Plan, server: ChannelServer, tmp_path: Path
) -> None:
    # The portal answers 200 all through: an incident opens before the freeze ends and
    # resolves after it, because the plan moved. The store, the report and the alert all say
    # that the plan ended it and the portal never closed, not that it "recovered".
    from monitor.alerts.sender import alert_for
    from monitor.report import build_report
    from monitor.report.formats import as_html, as_json, as_text

    freeze_end = datetime(2022, 7, 25, 8, 30, tzinfo=TZ)
    clock = ReplayClock(freeze_end - 3 * STEP, speed=0)
    stack = Stack(plan, tmp_path / "monitor.db", clock)
    try:
        server.set("serving", "/pension")
        results = [await step(stack, clock, PENSION) for _ in range(4)]
        assert [r.expectation.state for r in results] == ["down", "down", "up", "up"]
        assert all(r.observation.reason == "HTTP 200" for r in results)
        (opened,) = results[1].incidents
        (resolved,) = results[3].incidents
        assert resolved.id == opened.id and resolved.resolved_at == freeze_end + STEP
        assert resolved.resolve_reason == "plan now expects up; the channel never closed"
        await stack.pipeline.flush()

        reason = resolved.resolve_reason or ""
        alert = alert_for(plan, resolved, "resolved", freeze_end + STEP, reason)
        assert alert.title_zh() == "【已结束】门户 · 养老保险"
        assert "结束原因：计划已改为开放，渠道始终未暂停" in alert.text()

        report = build_report(
            plan, stack.store, freeze_end - 3 * STEP, freeze_end + 2 * STEP, now=freeze_end
        )
        services = [s for c in as_json(report)["channels"] for s in c["services"]]
        (line,) = [i for s in services for i in s["incidents"]]
        assert line["ended_by_plan"] is True
        assert line["resolve_reason"] == "the plan now expects it up; the channel never closed"
        assert line["resolve_reason_zh"] == "计划已改为开放，渠道始终未暂停"
        assert "resolve reason" in as_text(report)
        assert "the plan now expects it up; the channel never closed" in as_text(report)
        assert "<strong>计划已改为开放，渠道始终未暂停 / the plan now expects" in as_html(report)
    finally:
        await stack.close()
