"""Property tests: the plan's answers never disagree with its own list of transitions.

For random plans (absolute and recurring periods, rules in any order with states up, down and
any, time zones with and without DST) and random windows:

(a) just at each listed transition the expectation is its `to_state`, one microsecond before it
    is its `from_state`;
(b) between two consecutive listed transitions the expectation does not change;
(c) `next_change` finds exactly the first listed transition after an instant.

The same check (a) runs over the real `channels.toml` for the whole 2022 cutover season.
"""

from __future__ import annotations

import bisect
import itertools
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from helpers import real_plan
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from monitor.plan import TICK, Plan, ServiceRef, Transition
from monitor.plan.errors import ConfigError
from monitor.plan.load import validate_config
from monitor.plan.schema import WEEKDAYS

UTC = timezone.utc  # noqa: UP017
ZONES = ["Asia/Shanghai", "America/New_York", "Europe/London", "UTC"]
#: Zones with DST are drawn more often: that is where the arithmetic is hard.
WEIGHTED_ZONES = [*ZONES, "America/New_York", "Europe/London"]
STATES = ["up", "down", "any"]
QUARTER = timedelta(minutes=15)

#: The 2022 DST changes of the zones that have them (UTC instants): windows often start near one.
DST_CHANGES = {
    "America/New_York": [
        datetime(2022, 3, 13, 7, tzinfo=UTC),
        datetime(2022, 11, 6, 6, tzinfo=UTC),
    ],
    "Europe/London": [datetime(2022, 3, 27, 1, tzinfo=UTC), datetime(2022, 10, 30, 1, tzinfo=UTC)],
}
SEASON = datetime(2022, 1, 1, tzinfo=UTC)

PROPERTY_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- strategies --------------------------------------------------------------------------------


@st.composite
def base_instants(draw: st.DrawFn, zone: str) -> datetime:
    """An instant (minute resolution) shortly before a DST change of `zone`, or any day of 2022."""
    changes = DST_CHANGES.get(zone, [])
    if changes and draw(st.integers(0, 3)):
        pivot = draw(st.sampled_from(changes))
        return pivot - timedelta(minutes=draw(st.integers(0, 30 * 60)))
    return SEASON + timedelta(minutes=draw(st.integers(0, 365 * 24 * 60)))


def clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@st.composite
def time_ranges(draw: st.DrawFn) -> dict:
    """Quarter hours, often starting between 01:00 and 03:00 where the DST changes of New York
    and London lie, and often ending at 24:00."""
    start = draw(st.integers(0, 95) | st.integers(4, 12))
    end = draw(
        st.integers(start + 1, 96) | st.integers(start + 1, min(start + 8, 96)) | st.just(96)
    )
    return {"start_time": clock(start * 15), "end_time": clock(end * 15)}


@st.composite
def weekday_spans(draw: st.DrawFn) -> str:
    first = draw(st.integers(0, 6))
    last = draw(st.integers(first, 6))
    return WEEKDAYS[first] if first == last else f"{WEEKDAYS[first]}:{WEEKDAYS[last]}"


@st.composite
def day_spans(draw: st.DrawFn) -> int | str:
    kind = draw(st.sampled_from(["positive", "negative", "range"]))
    if kind == "positive":
        return draw(st.integers(1, 31))
    if kind == "negative":
        return draw(st.integers(-31, -1))
    first = draw(st.integers(1, 28))
    return f"{first}:{draw(st.integers(first, 31))}"


@st.composite
def periods(draw: st.DrawFn, base: datetime) -> dict:
    """One period: absolute (maybe open-ended), recurring, or a recurring one with bounds."""
    period: dict = {}
    shape = draw(st.sampled_from(["absolute", "recurring", "both"]))
    if shape in ("absolute", "both"):
        minutes = st.integers(-2 * 7 * 24 * 60, 4 * 7 * 24 * 60)
        start = draw(st.none() | minutes)
        end = draw(st.none() | minutes)
        if start is not None and end is not None:
            start, end = min(start, end), max(start + 1, end)
        # Aware instants, or local datetimes that the plan reads in its own zone.
        local = draw(st.booleans())
        for key, minutes in (("start", start), ("end", end)):
            if minutes is not None:
                value = base + timedelta(minutes=minutes)
                period[key] = value.replace(tzinfo=None) if local else value
    if shape in ("recurring", "both"):
        if draw(st.booleans()):
            period["weekdays"] = draw(st.lists(weekday_spans(), min_size=1, max_size=2))
        if draw(st.integers(0, 3)):
            period["times"] = draw(st.lists(time_ranges(), min_size=1, max_size=3))
        if draw(st.integers(0, 3)) == 0:
            period["days_of_month"] = draw(st.lists(day_spans(), min_size=1, max_size=2))
        if draw(st.integers(0, 5)) == 0:
            month = draw(st.integers(1, 12))
            period["months"] = [month, (month % 12) + 1]
        if draw(st.booleans()):
            period["location"] = draw(st.sampled_from(WEIGHTED_ZONES))
        if not any(k in period for k in ("weekdays", "times", "days_of_month", "months")):
            period["times"] = [draw(time_ranges())]
    return period


@st.composite
def plans(draw: st.DrawFn) -> tuple[Plan, datetime, datetime]:
    """A random plan with one channel of one to three services, and a window to look at."""
    zone = draw(st.sampled_from(WEIGHTED_ZONES))
    base = draw(base_instants(zone))
    names = [f"p{i}" for i in range(draw(st.integers(1, 4)))]
    table = {name: draw(periods(base)) for name in names}
    services = []
    for index in range(draw(st.integers(1, 3))):
        rules = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"during": st.sampled_from(names), "state": st.sampled_from(STATES)}
                ),
                min_size=0,
                max_size=4,
            )
        )
        services.append(
            {
                "id": f"s{index}",
                "name": f"业务{index}",
                "default": draw(st.sampled_from(STATES)),
                "expect": rules,
            }
        )
    data = {
        "monitor": {
            "timezone": zone,
            "grace": draw(st.sampled_from(["0s", "1s", "5m", "1h"])),
        },
        "periods": table,
        "channels": [
            {"id": "c", "name": "渠道", "kind": "web", "group": "online", "services": services}
        ],
    }
    try:
        config = validate_config(data, "random.toml")
    except ConfigError:
        # Only possible when two local datetimes fall in a DST gap in the wrong order.
        assume(False)
    plan = Plan(config)
    start = base + timedelta(microseconds=draw(st.integers(0, 60_000_000 - 1)))
    length = draw(st.integers(1, 4 * 24 * 60) | st.integers(1, 3 * 7 * 24 * 60))
    end = start + timedelta(minutes=length)
    return plan, start, end


# --- the checks --------------------------------------------------------------------------------


def check_each_transition(plan: Plan, transitions: list[Transition]) -> None:
    """(a): at the transition its `to_state`, one microsecond before its `from_state`."""
    for t in transitions:
        ref = plan.service(t.channel, t.service)
        assert t.from_state != t.to_state, t
        assert plan.expected(ref, t.at).state == t.to_state, t
        assert plan.expected(ref, t.at - TICK).state == t.from_state, t


def segments(start: datetime, end: datetime, changes: list[datetime]) -> list[tuple]:
    """The half-open stretches `[a, b)` of the window between consecutive listed transitions."""
    edges = [start, *changes, end]
    return [(a, b) for a, b in itertools.pairwise(edges) if a < b]


def per_service(plan: Plan, transitions: list[Transition]) -> dict[tuple, list[Transition]]:
    out: dict[tuple, list[Transition]] = {ref.key: [] for ref in plan.services}
    for t in transitions:
        out[(t.channel, t.service)].append(t)
    return out


@PROPERTY_SETTINGS
@given(plans())
def test_expectation_matches_each_listed_transition(case: tuple) -> None:
    plan, start, end = case
    transitions = plan.transitions(start, end)
    assert transitions == sorted(transitions, key=lambda t: (t.at, t.channel, t.service))
    assert all(start <= t.at < end for t in transitions)
    check_each_transition(plan, transitions)
    # The transitions of a service alternate: each starts from the state the last one reached.
    for found in per_service(plan, transitions).values():
        for before, after in itertools.pairwise(found):
            assert before.to_state == after.from_state
            assert before.at < after.at


@PROPERTY_SETTINGS
@given(plans(), st.data())
def test_expectation_is_constant_between_listed_transitions(
    case: tuple, data: st.DataObject
) -> None:
    plan, start, end = case
    by_service = per_service(plan, plan.transitions(start, end))
    for ref in plan.services:
        found = by_service[ref.key]
        for a, b in segments(start, end, [t.at for t in found]):
            expected = plan.expected(ref, a).state
            span = int((b - a) / TICK)
            offsets = data.draw(st.lists(st.integers(0, span - 1), min_size=1, max_size=4))
            for offset in [0, span - 1, span // 2, *offsets]:
                at = a + offset * TICK
                assert plan.expected(ref, at).state == expected, (ref.key, a, b, at)


def check_grid(plan: Plan, start: datetime, end: datetime) -> None:
    """A denser form of (b). Every recurring boundary is a local quarter hour and every zone
    here is a whole number of hours from UTC, so each real change of a recurring period lies on
    a UTC quarter hour: the state read from the list must match the plan at every one of them
    (over the first four days of the window, to keep the run short)."""
    by_service = per_service(plan, plan.transitions(start, end))
    grid_end = min(end, start + timedelta(days=4))
    first = start.replace(minute=start.minute - start.minute % 15, second=0, microsecond=0)
    grid = [first + k * QUARTER for k in range(1, int((grid_end - first) / QUARTER) + 1)]
    for ref in plan.services:
        found = by_service[ref.key]
        instants = [t.at for t in found]
        initial = found[0].from_state if found else plan.expected(ref, start).state
        for at in grid:
            if at >= grid_end:
                break
            index = bisect.bisect_right(instants, at)
            listed = found[index - 1].to_state if index else initial
            assert plan.expected(ref, at).state == listed, (ref.key, at)


@PROPERTY_SETTINGS
@given(plans())
def test_no_transition_is_missing_on_the_quarter_hour_grid(case: tuple) -> None:
    check_grid(*case)


@st.composite
def dst_plans(draw: st.DrawFn) -> tuple[Plan, datetime, datetime]:
    """Plans made to meet a DST change: recurring windows in the small hours of New York or
    London, looked at across the day the clocks go forward or back."""
    zone = draw(st.sampled_from(["America/New_York", "Europe/London"]))
    pivot = draw(st.sampled_from(DST_CHANGES[zone]))
    quarter = st.integers(0, 16)  # 00:00 .. 04:00
    ranges = []
    for _ in range(draw(st.integers(1, 2))):
        first = draw(quarter)
        last = draw(st.integers(first + 1, 17) | st.just(96))
        ranges.append({"start_time": clock(first * 15), "end_time": clock(last * 15)})
    period: dict = {"times": ranges}
    if draw(st.booleans()):
        period["location"] = zone
    default = draw(st.sampled_from(STATES))
    state = draw(st.sampled_from([s for s in STATES if s != default]))
    data = {
        "monitor": {
            "timezone": draw(st.sampled_from([zone, "UTC"])) if "location" in period else zone
        },
        "periods": {"small-hours": period},
        "channels": [
            {
                "id": "c",
                "name": "渠道",
                "kind": "web",
                "group": "online",
                "services": [
                    {
                        "id": "s",
                        "name": "业务",
                        "default": default,
                        "expect": [{"during": "small-hours", "state": state}],
                    }
                ],
            }
        ],
    }
    plan = Plan(validate_config(data, "dst.toml"))
    start = pivot - timedelta(minutes=draw(st.integers(0, 24 * 60)))
    return plan, start, pivot + timedelta(hours=draw(st.integers(1, 30)))


@PROPERTY_SETTINGS
@given(dst_plans(), st.data())
def test_transitions_across_dst_changes(case: tuple, data: st.DataObject) -> None:
    """(a), (b) and (c) where the clocks change: no transition lost, none invented."""
    plan, start, end = case
    transitions = plan.transitions(start, end)
    check_each_transition(plan, transitions)
    check_grid(plan, start, end)
    [ref] = plan.services
    found = [t.at for t in transitions]
    for at in [start, *found]:
        later = [t for t in found if t > at]
        if later:
            assert plan.next_change(ref, at) == later[0], at


def sample(found: list[datetime], data: st.DataObject) -> list[datetime]:
    """A few of the listed transitions (all of them when there are few): each probe costs."""
    if len(found) <= 6:
        return found
    return data.draw(st.lists(st.sampled_from(found), min_size=1, max_size=6, unique=True))


@PROPERTY_SETTINGS
@given(plans(), st.data())
def test_next_change_is_the_first_listed_transition_after(case: tuple, data: st.DataObject) -> None:
    plan, start, end = case
    by_service = per_service(plan, plan.transitions(start, end))
    span = int((end - start) / TICK)
    for ref in plan.services:
        found = [t.at for t in by_service[ref.key]]
        chosen = sample(found, data)
        probes = [start, *chosen, *(at - TICK for at in chosen)]
        probes += [
            start + o * TICK for o in data.draw(st.lists(st.integers(0, span - 1), max_size=2))
        ]
        for at in probes:
            if not start <= at < end:
                continue
            later = [t for t in found if t > at]
            change = plan.next_change(ref, at)
            if later:
                assert change == later[0], (ref.key, at)
            else:  # nothing more inside the window: the next change, if any, lies beyond it
                assert change is None or change >= end, (ref.key, at, change)


@PROPERTY_SETTINGS
@given(plans(), st.data())
def test_in_grace_agrees_with_the_transition_list(case: tuple, data: st.DataObject) -> None:
    plan, start, end = case
    grace = plan.grace
    transitions = plan.transitions(start - grace, end)
    by_service = per_service(plan, transitions)
    span = int((end - start) / TICK)
    for ref in plan.services:
        found = [t.at for t in by_service[ref.key]]
        chosen = sample(found, data)
        probes = [*chosen, *(at + grace for at in chosen), *(at + grace - TICK for at in chosen)]
        probes += [
            start + o * TICK for o in data.draw(st.lists(st.integers(0, span - 1), max_size=3))
        ]
        for at in probes:
            if not start <= at < end:
                continue
            expected = any(t <= at < t + grace for t in found)
            assert plan.in_grace(ref, at) == expected, (ref.key, at)


def test_real_plan_agrees_with_its_transitions_over_the_season() -> None:
    """(a) and (b) over the real plan, 2022-06-01 to 2022-10-31 (Beijing time)."""
    plan = real_plan()
    zone = ZoneInfo("Asia/Shanghai")
    start = datetime(2022, 6, 1, tzinfo=zone)
    end = datetime(2022, 11, 1, tzinfo=zone)
    transitions = plan.transitions(start, end)
    assert transitions, "the cutover changes some expectations"
    check_each_transition(plan, transitions)
    by_service = per_service(plan, transitions)
    for ref in plan.services:
        assert isinstance(ref, ServiceRef)
        found = [t.at for t in by_service[ref.key]]
        for a, b in segments(start, end, found):
            state = plan.expected(ref, a).state
            middle = a + (b - a) / 2
            assert plan.expected(ref, middle).state == state
            assert plan.expected(ref, b - TICK).state == state
        for at in found:
            assert plan.next_change(ref, at - TICK) == at
