"""The judge: thresholds, grace at both ends of a planned window, `any`, flapping, direction
switches and stale data. Pure: no sockets, no clock; the plan is a real Plan from TOML."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from helpers import load_plan

from monitor.judge import (
    Judgement,
    ServiceState,
    Thresholds,
    Verdict,
    current_verdict,
    ended_by_plan,
    judge,
    mismatch,
    single_verdict,
    with_incident_id,
)
from monitor.observation import Observation
from monitor.plan import Expectation, Plan, ServiceRef

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2022, 7, 1, 12, 0, tzinfo=TZ)
UP = Expectation("up")
DOWN = Expectation("down", rule=0, period="freeze")
ANY = Expectation("any", rule=1, period="window")
MINUTE = timedelta(minutes=1)

PLAN = """
[monitor]
timezone = "Asia/Shanghai"
grace = "5m"

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
expect = [{ during = "freeze", state = "down" }]
"""

FREEZE_START = datetime(2022, 6, 22, 18, 0, tzinfo=TZ)
FREEZE_END = datetime(2022, 7, 25, 8, 30, tzinfo=TZ)


def obs(at: datetime, serving: bool) -> Observation:
    return Observation(at=at, serving=serving, reason="HTTP 200" if serving else "HTTP 503")


class Run:
    """Feeds observations one by one and keeps what the judge said."""

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.thresholds = thresholds or Thresholds(failure=2, success=2)
        self.state = ServiceState()
        self.events: list[tuple[int, str, Verdict]] = []
        self.steps = 0

    def feed(
        self, expectation: Expectation, serving: bool, at: datetime, in_grace: bool = False
    ) -> Judgement:
        result = judge(self.state, expectation, in_grace, obs(at, serving), self.thresholds)
        self.steps += 1
        for event in result.events:
            self.events.append((self.steps, event.kind, event.direction))
        self.state = result.state
        if any(e.kind == "opened" for e in result.events):
            # as the pipeline does once the store assigned an id
            self.state = with_incident_id(self.state, 1000 + self.steps)
        return result


@pytest.fixture
def plan(tmp_path: Path) -> Plan:
    return load_plan(tmp_path / "plan.toml", PLAN)


@pytest.fixture
def ref(plan: Plan) -> ServiceRef:
    return plan.service("portal", "pension")


# --- single observations ---------------------------------------------------------------------


def test_mismatch_directions() -> None:
    assert mismatch(DOWN, serving=True) is Verdict.UNEXPECTED_UP
    assert mismatch(UP, serving=False) is Verdict.UNEXPECTED_DOWN
    assert mismatch(DOWN, serving=False) is None
    assert mismatch(UP, serving=True) is None
    assert mismatch(ANY, serving=True) is None
    assert mismatch(ANY, serving=False) is None


def test_single_verdict() -> None:
    assert single_verdict(DOWN, False, obs(T0, True)) is Verdict.UNEXPECTED_UP
    assert single_verdict(UP, False, obs(T0, False)) is Verdict.UNEXPECTED_DOWN
    assert single_verdict(UP, False, obs(T0, True)) is Verdict.OK
    assert single_verdict(DOWN, False, obs(T0, False)) is Verdict.OK
    assert single_verdict(ANY, False, obs(T0, True)) is Verdict.OK
    assert single_verdict(ANY, False, obs(T0, False)) is Verdict.OK
    # schedule-only (no observation) is unknown, whatever the plan says
    assert single_verdict(DOWN, False, None) is Verdict.UNKNOWN
    assert single_verdict(UP, True, None) is Verdict.UNKNOWN
    # inside grace a mismatch is not reported
    assert single_verdict(DOWN, True, obs(T0, True)) is Verdict.OK
    assert single_verdict(UP, True, obs(T0, False)) is Verdict.OK


def test_verdict_words_are_the_contract() -> None:
    assert [v.value for v in Verdict] == ["ok", "unexpected_up", "unexpected_down", "unknown"]


# --- thresholds ------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [1, 2, 3, 5])
def test_opens_exactly_at_failure_threshold(failure: int) -> None:
    run = Run(Thresholds(failure=failure, success=2))
    for step in range(1, failure + 3):
        result = run.feed(DOWN, True, T0 + step * MINUTE)
        if step < failure:
            assert result.events == ()
            assert result.verdict is Verdict.OK, "an unconfirmed mismatch is not a verdict yet"
            assert result.raw is Verdict.UNEXPECTED_UP
        elif step == failure:
            (event,) = result.events
            assert event.kind == "opened"
            assert event.direction is Verdict.UNEXPECTED_UP
            assert event.at == T0 + step * MINUTE
            assert event.expected == "down"
            assert event.period == "freeze"
            assert event.reason == "HTTP 200"
            assert result.verdict is Verdict.UNEXPECTED_UP
        else:
            assert result.events == (), "an open incident is not opened again"
            assert result.verdict is Verdict.UNEXPECTED_UP
    assert run.events == [(failure, "opened", Verdict.UNEXPECTED_UP)]


@pytest.mark.parametrize("success", [1, 2, 3, 4])
def test_resolves_exactly_at_success_threshold(success: int) -> None:
    run = Run(Thresholds(failure=2, success=success))
    run.feed(UP, False, T0)
    run.feed(UP, False, T0 + MINUTE)
    assert run.events == [(2, "opened", Verdict.UNEXPECTED_DOWN)]
    incident_id = run.state.incident.id
    for step in range(1, success + 2):
        result = run.feed(UP, True, T0 + (1 + step) * MINUTE)
        if step < success:
            assert result.events == ()
            assert result.verdict is Verdict.UNEXPECTED_DOWN
        elif step == success:
            (event,) = result.events
            assert event.kind == "resolved"
            assert event.direction is Verdict.UNEXPECTED_DOWN
            assert event.incident.id == incident_id, "the resolution names the open incident"
            assert event.reason == "HTTP 200"
            assert result.verdict is Verdict.OK
            assert result.state.incident is None
        else:
            assert result.events == ()
    assert [e[1] for e in run.events] == ["opened", "resolved"]


def test_a_match_breaks_the_streak() -> None:
    run = Run(Thresholds(failure=3, success=2))
    pattern = [True, True, False, True, True, False, True, True]  # never 3 in a row
    for i, serving in enumerate(pattern):
        run.feed(DOWN, serving, T0 + i * MINUTE)
    assert run.events == []
    run.feed(DOWN, True, T0 + 10 * MINUTE)
    assert run.events == [(9, "opened", Verdict.UNEXPECTED_UP)]


def test_a_mismatch_breaks_the_recovery() -> None:
    run = Run(Thresholds(failure=1, success=3))
    run.feed(UP, False, T0)
    assert run.events == [(1, "opened", Verdict.UNEXPECTED_DOWN)]
    for i, serving in enumerate([True, True, False, True, True], start=1):
        run.feed(UP, serving, T0 + i * MINUTE)
    assert len(run.events) == 1, "two matches, a mismatch, two matches: not three in a row"
    run.feed(UP, True, T0 + 9 * MINUTE)
    assert run.events[-1] == (7, "resolved", Verdict.UNEXPECTED_DOWN)


# --- flapping --------------------------------------------------------------------------------


def test_flapping_never_opens() -> None:
    run = Run(Thresholds(failure=2, success=2))
    for i in range(200):
        result = run.feed(DOWN, i % 2 == 0, T0 + i * MINUTE)
        assert result.verdict is Verdict.OK
    assert run.events == []


def test_flapping_never_resolves_an_open_incident() -> None:
    run = Run(Thresholds(failure=2, success=2))
    run.feed(DOWN, True, T0)
    run.feed(DOWN, True, T0 + MINUTE)
    assert run.events == [(2, "opened", Verdict.UNEXPECTED_UP)]
    for i in range(2, 200):
        result = run.feed(DOWN, i % 2 == 1, T0 + i * MINUTE)  # not serving, serving, ...
        assert result.verdict is Verdict.UNEXPECTED_UP
    assert len(run.events) == 1, "one incident for the whole flapping stretch"


# --- `any` -----------------------------------------------------------------------------------


def test_any_never_opens() -> None:
    run = Run(Thresholds(failure=1, success=1))
    for i in range(50):
        result = run.feed(ANY, i % 3 != 0, T0 + i * MINUTE)
        assert result.events == ()
        assert result.verdict is Verdict.OK
    assert run.state.streak == 0


def test_any_resolves_an_open_incident() -> None:
    """When the plan stops caring, the service no longer breaks it."""
    run = Run(Thresholds(failure=2, success=2))
    run.feed(DOWN, True, T0)
    run.feed(DOWN, True, T0 + MINUTE)
    run.feed(ANY, True, T0 + 2 * MINUTE)
    run.feed(ANY, True, T0 + 3 * MINUTE)
    assert [e[1] for e in run.events] == ["opened", "resolved"]


# --- direction switch ------------------------------------------------------------------------


def test_direction_switch_resolves_the_old_and_opens_the_new() -> None:
    run = Run(Thresholds(failure=2, success=2))
    run.feed(DOWN, True, T0)
    run.feed(DOWN, True, T0 + MINUTE)
    assert run.events == [(2, "opened", Verdict.UNEXPECTED_UP)]
    old_id = run.state.incident.id
    # the plan flips to up, and the service goes down at the same time
    run.feed(UP, False, T0 + 2 * MINUTE)
    assert run.state.incident.direction is Verdict.UNEXPECTED_UP
    result = run.feed(UP, False, T0 + 3 * MINUTE)
    kinds = [(e.kind, e.direction) for e in result.events]
    assert kinds == [
        ("resolved", Verdict.UNEXPECTED_UP),
        ("opened", Verdict.UNEXPECTED_DOWN),
    ], "the old one resolves before the new one opens"
    assert result.events[0].incident.id == old_id
    assert result.verdict is Verdict.UNEXPECTED_DOWN
    assert run.state.incident.direction is Verdict.UNEXPECTED_DOWN
    assert run.state.incident.id != old_id


# --- stale data ------------------------------------------------------------------------------


def test_no_data_is_unknown() -> None:
    assert current_verdict(ServiceState(), T0, Thresholds()) is Verdict.UNKNOWN


def test_stale_data_is_unknown() -> None:
    thresholds = Thresholds(failure=2, success=2, stale_after=timedelta(minutes=3))
    run = Run(thresholds)
    run.feed(UP, True, T0)
    assert current_verdict(run.state, T0 + timedelta(minutes=3), thresholds) is Verdict.OK
    assert current_verdict(run.state, T0 + timedelta(minutes=3, seconds=1), thresholds) is (
        Verdict.UNKNOWN
    )
    # an open incident with stale data is unknown too: we no longer know it still holds
    run.feed(UP, False, T0 + MINUTE)
    run.feed(UP, False, T0 + 2 * MINUTE)
    later = T0 + 2 * MINUTE
    assert current_verdict(run.state, later, thresholds) is Verdict.UNEXPECTED_DOWN
    assert current_verdict(run.state, later + timedelta(hours=1), thresholds) is Verdict.UNKNOWN
    assert run.state.incident is not None, "stale data does not resolve the incident"


def test_resumed_incident_is_not_opened_twice() -> None:
    """The state a restart rebuilds from the store: only the open incident."""
    run = Run(Thresholds(failure=2, success=2))
    run.feed(DOWN, True, T0)
    run.feed(DOWN, True, T0 + MINUTE)
    resumed = ServiceState(incident=run.state.incident)
    run.state = resumed
    assert current_verdict(resumed, T0, run.thresholds) is Verdict.UNKNOWN
    for i in range(2, 10):
        result = run.feed(DOWN, True, T0 + i * MINUTE)
        assert result.verdict is Verdict.UNEXPECTED_UP
    assert len(run.events) == 1
    run.feed(DOWN, False, T0 + 10 * MINUTE)
    run.feed(DOWN, False, T0 + 11 * MINUTE)
    assert run.events[-1][1] == "resolved"


# --- grace, with the real plan ---------------------------------------------------------------


def test_plan_grace_covers_five_minutes_after_each_end(plan: Plan, ref: ServiceRef) -> None:
    tick = timedelta(microseconds=1)
    for edge in (FREEZE_START, FREEZE_END):
        assert not plan.in_grace(ref, edge - tick)
        assert plan.in_grace(ref, edge)
        assert plan.in_grace(ref, edge + timedelta(minutes=5) - tick)
        assert not plan.in_grace(ref, edge + timedelta(minutes=5))
    assert plan.expected(ref, FREEZE_START).state == "down"
    assert plan.expected(ref, FREEZE_START - tick).state == "up"
    assert plan.expected(ref, FREEZE_END - tick).state == "down"
    assert plan.expected(ref, FREEZE_END).state == "up"


def feed_plan(run: Run, plan: Plan, ref: ServiceRef, at: datetime, serving: bool) -> Judgement:
    return run.feed(plan.expected(ref, at), serving, at, plan.in_grace(ref, at))


def test_grace_at_the_start_of_the_freeze(plan: Plan, ref: ServiceRef) -> None:
    """The channel is still up when the freeze begins: no incident while it has grace."""
    run = Run(Thresholds(failure=2, success=2))
    at = FREEZE_START
    while at < FREEZE_START + timedelta(minutes=5):
        result = feed_plan(run, plan, ref, at, serving=True)
        assert result.raw is Verdict.UNEXPECTED_UP
        assert result.events == ()
        assert result.verdict is Verdict.OK
        at += timedelta(seconds=30)
    assert run.steps == 10, "ten mismatches inside grace, far past the threshold"
    # grace is over: counting starts from one
    result = feed_plan(run, plan, ref, FREEZE_START + timedelta(minutes=5), serving=True)
    assert result.events == ()
    assert run.state.streak == 1
    result = feed_plan(run, plan, ref, FREEZE_START + timedelta(minutes=6), serving=True)
    assert [(e.kind, e.direction, e.period) for e in result.events] == [
        ("opened", Verdict.UNEXPECTED_UP, "freeze")
    ]


def test_grace_at_the_end_of_the_freeze(plan: Plan, ref: ServiceRef) -> None:
    """The channel stays down when the freeze ends: grace first, then an unexpected_down."""
    run = Run(Thresholds(failure=3, success=2))
    # before the end the channel is wrongly up for two probes (one short of the threshold)
    feed_plan(run, plan, ref, FREEZE_END - 2 * MINUTE, serving=True)
    feed_plan(run, plan, ref, FREEZE_END - MINUTE, serving=True)
    assert run.state.streak == 2
    assert run.events == []
    # the plan flips to up at 08:30; the channel stays down, inside grace
    at = FREEZE_END
    while at < FREEZE_END + timedelta(minutes=5):
        result = feed_plan(run, plan, ref, at, serving=False)
        assert result.raw is Verdict.UNEXPECTED_DOWN
        assert result.events == ()
        assert run.state.streak == 0, "nothing inside grace counts, the old streak is gone"
        at += MINUTE
    # counting restarts after grace: one, two, three
    for minutes, streak in ((5, 1), (6, 2)):
        result = feed_plan(run, plan, ref, FREEZE_END + minutes * MINUTE, serving=False)
        assert result.events == ()
        assert run.state.streak == streak
    result = feed_plan(run, plan, ref, FREEZE_END + 7 * MINUTE, serving=False)
    (event,) = result.events
    assert (event.kind, event.direction, event.expected, event.period) == (
        "opened",
        Verdict.UNEXPECTED_DOWN,
        "up",
        None,
    )


def test_grace_does_not_hide_a_mismatch_far_from_a_transition(plan: Plan, ref: ServiceRef) -> None:
    run = Run(Thresholds(failure=2, success=2))
    mid = datetime(2022, 7, 1, 12, 0, tzinfo=TZ)
    assert not plan.in_grace(ref, mid)
    feed_plan(run, plan, ref, mid, serving=True)
    result = feed_plan(run, plan, ref, mid + MINUTE, serving=True)
    assert [e.kind for e in result.events] == ["opened"]


def test_incident_resolves_inside_grace_when_the_plan_catches_up(
    plan: Plan, ref: ServiceRef
) -> None:
    """Up during the freeze (incident), then the freeze ends: the channel now matches."""
    run = Run(Thresholds(failure=2, success=2))
    feed_plan(run, plan, ref, FREEZE_END - 2 * MINUTE, serving=True)
    feed_plan(run, plan, ref, FREEZE_END - MINUTE, serving=True)
    assert run.events == [(2, "opened", Verdict.UNEXPECTED_UP)]
    feed_plan(run, plan, ref, FREEZE_END, serving=True)
    result = feed_plan(run, plan, ref, FREEZE_END + MINUTE, serving=True)
    assert [(e.kind, e.direction) for e in result.events] == [("resolved", Verdict.UNEXPECTED_UP)]
    assert result.verdict is Verdict.OK


# --- incidents the plan ended, not the channel --------------------------------------------------


def _resolved_reason(run: Run, expectation: Expectation, serving: bool, at: datetime) -> str:
    """Feed until the open incident resolves; the reason its `resolved` event gives."""
    for step in range(5):
        result = run.feed(expectation, serving, at + step * MINUTE)
        for event in result.events:
            if event.kind == "resolved":
                return event.reason
    raise AssertionError("the incident did not resolve")


@pytest.mark.parametrize(
    ("opened_under", "serving", "ends_under", "reason"),
    [
        (DOWN, True, UP, "plan now expects up; the channel never closed"),
        (DOWN, True, ANY, "plan no longer expects down; the channel never closed"),
        (UP, False, DOWN, "plan now expects down; the channel never opened"),
        (UP, False, ANY, "plan no longer expects up; the channel never opened"),
    ],
)
def test_an_incident_the_plan_ends_says_the_plan_ended_it(
    opened_under: Expectation, serving: bool, ends_under: Expectation, reason: str
) -> None:
    # The portal keeps answering through the freeze and after it: the incident ends because
    # the plan changed, and its resolve reason says so instead of the probe's "HTTP 200".
    run = Run()
    run.feed(opened_under, serving, T0)
    run.feed(opened_under, serving, T0 + MINUTE)
    assert run.state.incident is not None
    assert _resolved_reason(run, ends_under, serving, T0 + 2 * MINUTE) == reason
    assert ended_by_plan(reason)
    assert run.state.unchanged is False and run.state.recovering == 0


def test_an_incident_the_channel_ends_keeps_the_observations_reason() -> None:
    run = Run()
    run.feed(DOWN, True, T0)
    run.feed(DOWN, True, T0 + MINUTE)
    assert _resolved_reason(run, DOWN, False, T0 + 2 * MINUTE) == "HTTP 503"
    assert not ended_by_plan("HTTP 503")


def test_a_channel_that_closed_during_the_recovery_is_a_recovery_not_a_plan_change() -> None:
    # Closed once while the freeze still held, answering again after it ended: the incident
    # was ended by the channel, so its reason is the observation's, not "never closed".
    run = Run()
    run.feed(DOWN, True, T0)
    run.feed(DOWN, True, T0 + MINUTE)
    run.feed(DOWN, False, T0 + 2 * MINUTE)
    result = run.feed(UP, True, T0 + 3 * MINUTE)
    assert [e.reason for e in result.events if e.kind == "resolved"] == ["HTTP 200"]


def test_a_mismatch_in_the_recovery_restarts_the_plan_change_run() -> None:
    # A closed observation, then the mismatch again, then the plan moves: the run that
    # resolves it saw only the unchanged channel, so the plan ended it.
    run = Run()
    run.feed(DOWN, True, T0)
    run.feed(DOWN, True, T0 + MINUTE)
    run.feed(DOWN, False, T0 + 2 * MINUTE)
    run.feed(DOWN, True, T0 + 3 * MINUTE)
    assert run.state.recovering == 0 and run.state.incident is not None
    assert _resolved_reason(run, UP, True, T0 + 4 * MINUTE).startswith("plan now expects up")
