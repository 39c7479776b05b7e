"""The plan's answers: expectation at an instant, grace, next change and the transition list.

The first part pins the boundary instants of the real 2022 Hubei cutover in `channels.toml`;
the second uses small synthetic plans for midnight, DST, rule order, open-ended periods, `any`,
negative days of month and per-period time zones.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from helpers import load_plan, real_plan

from monitor.plan import TICK, Expectation, Plan

SHANGHAI = ZoneInfo("Asia/Shanghai")


def at_local(text: str, zone: ZoneInfo = SHANGHAI) -> datetime:
    """`2022-06-22 18:00` (seconds and microseconds optional) read on the wall clock of `zone`."""
    return datetime.fromisoformat(text).replace(tzinfo=zone)


# --- the real plan: the 2022 Hubei cutover ---------------------------------------------------


#: The seed's boundary instants, Beijing time.
FREEZE_START = "2022-06-22 18:00"
CERT_OPENS = "2022-06-23 09:00"
CERT_CLOSES = "2022-07-19 18:00"
FREEZE_END = "2022-07-25 08:30"
SEED_INSTANTS = [FREEZE_START, CERT_OPENS, CERT_CLOSES, FREEZE_END]

#: Frozen business (enterprise pension, work injury, unemployment) on channels of every kind.
FROZEN = [
    ("si-12333", "pension"),
    ("hrss-gov-platform", "work-injury"),
    ("hubei-zwfw", "pension"),
    ("hubei-zwfw", "same-day-si"),
    ("hubei-zwfw", "enterprise-si-payment"),
    ("ehuiban", "unemployment"),
    ("alipay-smart-hrss", "pension"),
    ("hubei-12333-wechat", "pension"),
    ("hubei-etax", "si-contribution"),
    ("chushuitong", "si-contribution"),
    ("gov-service-hall", "pension"),
    ("si-service-hall", "si-transfer"),
    ("si-service-hall", "benefit-certification"),
    ("si-service-hall", "new-retiree-claim"),
    ("si-service-hall", "death-benefit-claim"),
    ("tax-service-hall", "si-contribution"),
    ("si-bank-outlets", "pension"),
    ("self-service-kiosks", "si-self-service"),
]
CERTIFICATE = ("hubei-zwfw", "certificate-print")


@pytest.fixture(scope="module")
def real() -> Plan:
    return real_plan()


def second_before(text: str) -> datetime:
    return at_local(text) - timedelta(seconds=1)


def open_services(plan: Plan) -> list:
    """Medical-insurance premiums and social security cards: open through the whole freeze."""
    refs = [
        ref
        for ref in plan.services
        if "医疗保险费" in ref.service.name or "社会保障卡" in ref.service.name
    ]
    return refs


def test_real_plan_settings(real: Plan) -> None:
    assert real.zone == SHANGHAI
    assert real.grace == timedelta(minutes=5)
    assert set(real.config.periods) >= {"freeze", "certificate-window"}
    freeze = real.config.periods["freeze"]
    assert (freeze.start, freeze.end) == (at_local(FREEZE_START), at_local(FREEZE_END))
    window = real.config.periods["certificate-window"]
    assert (window.start, window.end) == (at_local(CERT_OPENS), at_local(CERT_CLOSES))
    assert real.service(*CERTIFICATE).channel.name == "湖北政务服务网"


@pytest.mark.parametrize("key", FROZEN, ids="/".join)
def test_frozen_services_at_the_seed_boundaries(real: Plan, key: tuple[str, str]) -> None:
    ref = real.service(*key)
    assert real.expected(ref, second_before(FREEZE_START)) == Expectation("up")
    assert real.expected(ref, at_local(FREEZE_START)).state == "down"
    assert real.expected(ref, at_local(FREEZE_START)).period == "freeze"
    for instant in (CERT_OPENS, CERT_CLOSES):  # the certificate window does not concern them
        assert real.expected(ref, second_before(instant)).state == "down"
        assert real.expected(ref, at_local(instant)).state == "down"
    assert real.expected(ref, second_before(FREEZE_END)).state == "down"
    assert real.expected(ref, at_local("2022-07-25 08:29:59.999999")).state == "down"
    assert real.expected(ref, at_local(FREEZE_END)) == Expectation("up")
    assert real.next_change(ref, second_before(FREEZE_START)) == at_local(FREEZE_START)
    assert real.next_change(ref, at_local(FREEZE_START)) == at_local(FREEZE_END)
    assert real.next_change(ref, at_local(FREEZE_END)) is None


def test_certificate_printing_at_the_seed_boundaries(real: Plan) -> None:
    ref = real.service(*CERTIFICATE)
    freeze = [index for index, r in enumerate(ref.service.expect) if r.during == "freeze"]
    window = [i for i, r in enumerate(ref.service.expect) if r.during == "certificate-window"]
    assert freeze and window and freeze[-1] < window[-1], "the window rule must come last"
    expected = [
        (second_before(FREEZE_START), "up"),
        (at_local(FREEZE_START), "down"),  # inferred: the notice is silent until 09:00
        (second_before(CERT_OPENS), "down"),
        (at_local(CERT_OPENS), "up"),
        (second_before(CERT_CLOSES), "up"),
        (at_local(CERT_CLOSES), "down"),
        (second_before(FREEZE_END), "down"),
        (at_local(FREEZE_END), "up"),
    ]
    for at, state in expected:
        assert real.expected(ref, at).state == state, at
    assert real.expected(ref, at_local(CERT_OPENS)) == Expectation(
        "up", window[-1], "certificate-window"
    )
    assert real.expected(ref, at_local(CERT_CLOSES)) == Expectation("down", freeze[-1], "freeze")
    transitions = real.transitions(
        at_local("2022-06-01 00:00"), at_local("2022-10-01 00:00"), [ref]
    )
    assert [(t.at, t.from_state, t.to_state) for t in transitions] == [
        (at_local(FREEZE_START), "up", "down"),
        (at_local(CERT_OPENS), "down", "up"),
        (at_local(CERT_CLOSES), "up", "down"),
        (at_local(FREEZE_END), "down", "up"),
    ]
    assert real.next_change(ref, at_local(FREEZE_START)) == at_local(CERT_OPENS)
    assert real.next_change(ref, at_local(CERT_OPENS)) == at_local(CERT_CLOSES)
    assert real.next_change(ref, at_local(CERT_CLOSES)) == at_local(FREEZE_END)
    assert real.in_grace(ref, at_local(CERT_OPENS) + timedelta(minutes=4, seconds=59))
    assert not real.in_grace(ref, at_local(CERT_OPENS) + timedelta(minutes=5))


def test_medical_insurance_and_cards_up_at_every_instant(real: Plan) -> None:
    refs = open_services(real)
    names = {ref.service.name for ref in refs}
    assert any("医疗保险费" in n for n in names) and any("社会保障卡" in n for n in names)
    assert len(refs) >= 6, [ref.key for ref in refs]
    instants = [at_local("2022-06-01 00:00"), at_local("2022-10-01 00:00")]
    for text in SEED_INSTANTS:
        instants += [second_before(text), at_local(text), at_local(text) - TICK]
    for ref in refs:
        for at in instants:
            assert real.expected(ref, at).state == "up", (ref.key, at)
            assert not real.in_grace(ref, at), (ref.key, at)
        assert real.transitions(instants[0], instants[1], [ref]) == []
        assert real.next_change(ref, instants[0]) is None


def test_every_change_of_the_real_plan_is_a_seed_instant_or_the_july_batch(real: Plan) -> None:
    transitions = real.transitions(at_local("2022-01-01 00:00"), at_local("2023-01-01 00:00"))
    seed = {at_local(text) for text in SEED_INSTANTS}
    assert seed <= {t.at for t in transitions}
    for t in transitions:
        assert t.at in seed or t.period == "july-batch", t
    # The certificate window is the only thing that changes at 09:00 on 06-23 and 18:00 on 07-19.
    window = [t for t in transitions if t.at in (at_local(CERT_OPENS), at_local(CERT_CLOSES))]
    assert {(t.channel, t.service) for t in window} == {CERTIFICATE}
    # At the start of the freeze nothing opens: every change is up -> down.
    assert {t.to_state for t in transitions if t.at == at_local(FREEZE_START)} == {"down"}
    starts = {(t.channel, t.service) for t in transitions if t.at == at_local(FREEZE_START)}
    assert set(FROZEN) | {CERTIFICATE} <= starts


def test_real_plan_grace_after_the_freeze_starts(real: Plan) -> None:
    ref = real.service("hubei-zwfw", "pension")
    start = at_local(FREEZE_START)
    assert not real.in_grace(ref, start - TICK)
    assert real.in_grace(ref, start)
    assert real.in_grace(ref, start + timedelta(minutes=5) - TICK)
    assert not real.in_grace(ref, start + timedelta(minutes=5))
    end = at_local(FREEZE_END)
    assert real.in_grace(ref, end) and not real.in_grace(ref, end + timedelta(minutes=5))
    assert real.next_transition(start - timedelta(days=1)) == start


def test_real_plan_answers_in_any_zone(real: Plan) -> None:
    """The same instant written in UTC gives the same answers as in Beijing time."""
    ref = real.service(*CERTIFICATE)
    opens = at_local(CERT_OPENS)
    in_utc = opens.astimezone(timezone.utc)  # noqa: UP017
    assert in_utc.hour == 1
    assert real.expected(ref, in_utc) == real.expected(ref, opens)
    assert real.expected(ref, in_utc - TICK).state == "down"
    assert real.next_change(ref, in_utc - TICK) == opens
    assert real.in_grace(ref, in_utc)


# --- synthetic plans -------------------------------------------------------------------------

UTC = timezone.utc  # noqa: UP017


def make_plan(
    tmp_path: Path,
    periods: dict,
    rules: list[dict],
    *,
    zone: str = "Asia/Shanghai",
    default: str = "up",
    grace: str | None = None,
) -> Plan:
    """A plan with one channel and one service `c/s` whose rules are `rules`."""
    monitor = {"timezone": zone}
    if grace is not None:
        monitor["grace"] = grace
    data = {
        "monitor": monitor,
        "periods": periods,
        "channels": [
            {
                "id": "c",
                "name": "渠道",
                "kind": "web",
                "group": "online",
                "services": [{"id": "s", "name": "业务", "default": default, "expect": rules}],
            }
        ],
    }
    return load_plan(tmp_path / "synthetic.toml", data)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def changes(plan: Plan, start: datetime, end: datetime) -> list[tuple[str, str, str]]:
    """Transitions as (UTC instant, from, to) for compact comparisons."""
    return [
        (t.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M"), t.from_state, t.to_state)
        for t in plan.transitions(start, end)
    ]


def state(plan: Plan, at: datetime) -> str:
    return plan.expected(plan.services[0], at).state


def test_whole_weekdays_change_only_at_friday_midnight(tmp_path: Path) -> None:
    """`00:00`-`24:00` on Monday to Friday: one window Monday 00:00 to Saturday 00:00."""
    plan = make_plan(
        tmp_path,
        {
            "workdays": {
                "weekdays": ["monday:friday"],
                "times": [{"start_time": "00:00", "end_time": "24:00"}],
            }
        },
        [{"during": "workdays", "state": "down"}],
    )
    ref = plan.services[0]
    # 2022-06-06 is a Monday. Shanghai is UTC+8: local midnight is 16:00 UTC the day before.
    start, end = at_local("2022-06-06 00:00"), at_local("2022-06-20 00:00")
    assert changes(plan, start, end) == [
        ("2022-06-05 16:00", "up", "down"),  # Monday 00:00, the start: [start, end)
        ("2022-06-10 16:00", "down", "up"),  # Friday 24:00
        ("2022-06-12 16:00", "up", "down"),  # Monday 00:00
        ("2022-06-17 16:00", "down", "up"),
    ]
    for day in range(6, 10):  # no change at the midnights between two working days
        midnight = at_local(f"2022-06-{day + 1:02d} 00:00")
        assert state(plan, midnight - TICK) == state(plan, midnight) == "down"
        assert not plan.in_grace(ref, midnight)
    assert plan.next_change(ref, at_local("2022-06-06 00:00")) == at_local("2022-06-11 00:00")
    assert plan.next_change(ref, at_local("2022-06-08 23:59:59")) == at_local("2022-06-11 00:00")
    assert state(plan, at_local("2022-06-10 23:59:59.999999")) == "down"
    assert state(plan, at_local("2022-06-11 00:00")) == "up"


def test_window_ending_at_24_resumes_at_00_next_day(tmp_path: Path) -> None:
    """Friday 22:00-24:00 and Saturday 00:00-06:00 together are one unbroken window."""
    plan = make_plan(
        tmp_path,
        {
            "friday-night": {
                "weekdays": ["friday"],
                "times": [{"start_time": "22:00", "end_time": "24:00"}],
            },
            "saturday-early": {
                "weekdays": ["saturday"],
                "times": [{"start_time": "00:00", "end_time": "06:00"}],
            },
        },
        [
            {"during": "friday-night", "state": "down"},
            {"during": "saturday-early", "state": "down"},
        ],
    )
    ref = plan.services[0]
    transitions = plan.transitions(at_local("2022-06-06 00:00"), at_local("2022-06-13 00:00"))
    assert [(t.at, t.from_state, t.to_state, t.period) for t in transitions] == [
        (at_local("2022-06-10 22:00"), "up", "down", "friday-night"),
        (at_local("2022-06-11 06:00"), "down", "up", "saturday-early"),
    ]
    midnight = at_local("2022-06-11 00:00")
    assert plan.expected(ref, midnight - TICK) == Expectation("down", 0, "friday-night")
    assert plan.expected(ref, midnight) == Expectation("down", 1, "saturday-early")
    assert plan.next_change(ref, at_local("2022-06-10 22:00")) == at_local("2022-06-11 06:00")


def test_daily_window_across_midnight_has_no_midnight_transition(tmp_path: Path) -> None:
    plan = make_plan(
        tmp_path,
        {
            "night": {
                "times": [
                    {"start_time": "22:00", "end_time": "24:00"},
                    {"start_time": "00:00", "end_time": "06:00"},
                ]
            }
        },
        [{"during": "night", "state": "down"}],
    )
    assert changes(plan, at_local("2022-06-06 12:00"), at_local("2022-06-08 12:00")) == [
        ("2022-06-06 14:00", "up", "down"),
        ("2022-06-06 22:00", "down", "up"),
        ("2022-06-07 14:00", "up", "down"),
        ("2022-06-07 22:00", "down", "up"),
    ]


NEW_YORK_WINDOWS = [
    # (times, spring-forward day 2022-03-13 in UTC, fall-back day 2022-11-06 in UTC)
    (
        ("01:00", "03:00"),
        # 01:00 EST .. 02:00 EST jumps to 03:00 EDT: only one real hour.
        [("2022-03-13 06:00", "up", "down"), ("2022-03-13 07:00", "down", "up")],
        # 01:00 EDT, 01:00 EST again, then 03:00 EST: three real hours.
        [("2022-11-06 05:00", "up", "down"), ("2022-11-06 08:00", "down", "up")],
    ),
    (
        ("02:30", "04:00"),
        # 02:30 does not exist: the window starts when the clock reads 03:00 EDT.
        [("2022-03-13 07:00", "up", "down"), ("2022-03-13 08:00", "down", "up")],
        # 02:30 EST .. 04:00 EST, after the repeated hour.
        [("2022-11-06 07:30", "up", "down"), ("2022-11-06 09:00", "down", "up")],
    ),
]


@pytest.mark.parametrize(("times", "spring", "fall"), NEW_YORK_WINDOWS)
def test_recurring_window_across_dst_in_new_york(
    tmp_path: Path, times: tuple[str, str], spring: list, fall: list
) -> None:
    plan = make_plan(
        tmp_path,
        {"nightly": {"times": [{"start_time": times[0], "end_time": times[1]}]}},
        [{"during": "nightly", "state": "down"}],
        zone="America/New_York",
    )
    ref = plan.services[0]
    assert changes(plan, utc("2022-03-13 00:00"), utc("2022-03-14 00:00")) == spring
    assert changes(plan, utc("2022-11-06 00:00"), utc("2022-11-07 00:00")) == fall
    # Ordinary days on both sides keep the wall-clock times (EST -5, then EDT -4 / EST -5).
    start_hour, start_minute = (int(x) for x in times[0].split(":"))
    assert changes(plan, utc("2022-03-12 00:00"), utc("2022-03-13 00:00"))[0][0] == (
        f"2022-03-12 {start_hour + 5:02d}:{start_minute:02d}"
    )
    assert changes(plan, utc("2022-03-14 00:00"), utc("2022-03-15 00:00"))[0][0] == (
        f"2022-03-14 {start_hour + 4:02d}:{start_minute:02d}"
    )
    for when, _, to in [*spring, *fall]:
        at = utc(when)
        assert state(plan, at) == to
        assert state(plan, at - TICK) != to
    # next_change steps over the DST day exactly.
    assert plan.next_change(ref, utc("2022-03-12 12:00")) == utc(spring[0][0])
    assert plan.next_change(ref, utc(spring[0][0])) == utc(spring[1][0])
    assert plan.next_change(ref, utc("2022-11-05 12:00")) == utc(fall[0][0])
    assert plan.next_change(ref, utc(fall[0][0])) == utc(fall[1][0])


def test_absolute_period_across_dst_is_exact(tmp_path: Path) -> None:
    """Local datetimes of an absolute period are read in the plan zone with their DST offset."""
    plan = make_plan(
        tmp_path,
        {"cutover": {"start": datetime(2022, 3, 12, 22, 0), "end": datetime(2022, 3, 13, 6, 0)}},
        [{"during": "cutover", "state": "down"}],
        zone="America/New_York",
    )
    assert changes(plan, utc("2022-03-01 00:00"), utc("2022-04-01 00:00")) == [
        ("2022-03-13 03:00", "up", "down"),  # 22:00 EST
        ("2022-03-13 10:00", "down", "up"),  # 06:00 EDT: seven real hours later
    ]


@pytest.mark.parametrize(
    ("order", "inside_inner", "rule", "period"),
    [
        (["whole-june", "mid-june"], "up", 1, "mid-june"),
        (["mid-june", "whole-june"], "down", 1, "whole-june"),
    ],
)
def test_last_matching_rule_wins(
    tmp_path: Path, order: list[str], inside_inner: str, rule: int, period: str
) -> None:
    states = {"whole-june": "down", "mid-june": "up"}
    plan = make_plan(
        tmp_path,
        {
            "whole-june": {"start": datetime(2022, 6, 1), "end": datetime(2022, 7, 1)},
            "mid-june": {"start": datetime(2022, 6, 10), "end": datetime(2022, 6, 20)},
        },
        [{"during": p, "state": states[p]} for p in order],
    )
    ref = plan.services[0]
    whole = order.index("whole-june")
    assert plan.expected(ref, at_local("2022-06-15 12:00")) == Expectation(
        inside_inner, rule, period
    )
    assert plan.expected(ref, at_local("2022-06-05 12:00")) == Expectation(
        "down", whole, "whole-june"
    )
    assert plan.expected(ref, at_local("2022-06-25 12:00")) == Expectation(
        "down", whole, "whole-june"
    )
    assert plan.expected(ref, at_local("2022-07-01 00:00")) == Expectation("up")
    expected_changes = [("2022-05-31 16:00", "up", "down")]
    if inside_inner == "up":
        expected_changes += [("2022-06-09 16:00", "down", "up"), ("2022-06-19 16:00", "up", "down")]
    expected_changes += [("2022-06-30 16:00", "down", "up")]
    assert changes(plan, at_local("2022-05-01 00:00"), at_local("2022-08-01 00:00")) == (
        expected_changes
    )


def test_open_ended_periods(tmp_path: Path) -> None:
    plan = make_plan(
        tmp_path,
        {
            "until-july": {"end": datetime(2022, 7, 1, 9, 0)},
            "from-august": {"start": datetime(2022, 8, 1, 9, 0)},
        },
        [{"during": "until-july", "state": "down"}, {"during": "from-august", "state": "any"}],
    )
    ref = plan.services[0]
    assert plan.expected(ref, at_local("1990-01-01 00:00")) == Expectation("down", 0, "until-july")
    assert plan.expected(ref, at_local("2022-07-01 08:59:59.999999")).state == "down"
    assert plan.expected(ref, at_local("2022-07-01 09:00")) == Expectation("up")
    assert plan.expected(ref, at_local("2022-08-01 08:59:59.999999")) == Expectation("up")
    assert plan.expected(ref, at_local("2022-08-01 09:00")) == Expectation("any", 1, "from-august")
    assert plan.expected(ref, at_local("2999-12-31 23:59")) == Expectation("any", 1, "from-august")
    transitions = plan.transitions(at_local("2000-01-01 00:00"), at_local("2030-01-01 00:00"))
    assert [(t.at, t.from_state, t.to_state, t.period) for t in transitions] == [
        (at_local("2022-07-01 09:00"), "down", "up", "until-july"),
        (at_local("2022-08-01 09:00"), "up", "any", "from-august"),
    ]
    assert plan.next_change(ref, at_local("2022-06-01 00:00")) == at_local("2022-07-01 09:00")
    assert plan.next_change(ref, at_local("2022-07-01 09:00")) == at_local("2022-08-01 09:00")
    assert plan.next_change(ref, at_local("2022-08-01 09:00")) is None


def test_period_without_start_or_end_is_always_active(tmp_path: Path) -> None:
    plan = make_plan(
        tmp_path, {"always": {"title": "全程"}}, [{"during": "always", "state": "down"}]
    )
    ref = plan.services[0]
    assert plan.expected(ref, at_local("1970-01-02 00:00")) == Expectation("down", 0, "always")
    assert plan.expected(ref, at_local("2100-01-01 00:00")) == Expectation("down", 0, "always")
    assert plan.transitions(at_local("2022-01-01 00:00"), at_local("2023-01-01 00:00")) == []
    assert plan.next_change(ref, at_local("2022-06-01 00:00")) is None


def test_any_state_and_its_transitions(tmp_path: Path) -> None:
    plan = make_plan(
        tmp_path,
        {
            "freeze": {"start": datetime(2022, 6, 22, 18), "end": datetime(2022, 7, 25, 8, 30)},
            "switch-over": {"start": datetime(2022, 7, 25, 8), "end": datetime(2022, 7, 25, 10)},
        },
        [{"during": "freeze", "state": "down"}, {"during": "switch-over", "state": "any"}],
        default="up",
    )
    ref = plan.services[0]
    assert plan.expected(ref, at_local("2022-07-25 08:15")) == Expectation("any", 1, "switch-over")
    assert [
        (t.at, t.from_state, t.to_state, t.period)
        for t in plan.transitions(at_local("2022-06-01 00:00"), at_local("2022-08-01 00:00"))
    ] == [
        (at_local("2022-06-22 18:00"), "up", "down", "freeze"),
        (at_local("2022-07-25 08:00"), "down", "any", "switch-over"),
        (at_local("2022-07-25 10:00"), "any", "up", "switch-over"),
    ]
    # The end of `freeze` (08:30) is inside `switch-over`: no change of expectation there.
    assert plan.next_change(ref, at_local("2022-07-25 08:00")) == at_local("2022-07-25 10:00")


def test_default_down_with_an_up_window(tmp_path: Path) -> None:
    plan = make_plan(
        tmp_path,
        {"window": {"start": datetime(2022, 6, 23, 9), "end": datetime(2022, 7, 19, 18)}},
        [{"during": "window", "state": "up"}],
        default="down",
    )
    ref = plan.services[0]
    assert plan.expected(ref, at_local("2022-06-23 08:59:59")) == Expectation("down")
    assert plan.expected(ref, at_local("2022-06-23 09:00")) == Expectation("up", 0, "window")


def test_negative_days_of_month(tmp_path: Path) -> None:
    plan = make_plan(
        tmp_path,
        {"month-end": {"days_of_month": [-1]}},
        [{"during": "month-end", "state": "down"}],
        zone="UTC",
    )
    assert changes(plan, utc("2022-02-01 00:00"), utc("2022-05-01 00:00")) == [
        ("2022-02-01 00:00", "down", "up"),  # 31 January was the last day
        ("2022-02-28 00:00", "up", "down"),
        ("2022-03-01 00:00", "down", "up"),
        ("2022-03-31 00:00", "up", "down"),
        ("2022-04-01 00:00", "down", "up"),
        ("2022-04-30 00:00", "up", "down"),
    ]
    assert state(plan, utc("2024-02-29 12:00")) == "down"  # leap year
    assert state(plan, utc("2024-02-28 12:00")) == "up"
    assert state(plan, utc("2022-12-31 23:59:59.999999")) == "down"
    assert state(plan, utc("2023-01-01 00:00")) == "up"


def test_days_of_month_range_to_the_last_days(tmp_path: Path) -> None:
    plan = make_plan(
        tmp_path,
        {"last-three": {"days_of_month": ["-3:-1"]}, "first": {"days_of_month": [1]}},
        [{"during": "last-three", "state": "down"}, {"during": "first", "state": "any"}],
        zone="UTC",
    )
    assert changes(plan, utc("2022-02-02 12:00"), utc("2022-03-05 00:00")) == [
        ("2022-02-26 00:00", "up", "down"),
        ("2022-03-01 00:00", "down", "any"),
        ("2022-03-02 00:00", "any", "up"),
    ]


def test_months_and_weekdays_together(tmp_path: Path) -> None:
    plan = make_plan(
        tmp_path,
        {"july-weekends": {"months": ["july"], "weekdays": ["saturday:sunday"]}},
        [{"during": "july-weekends", "state": "down"}],
        zone="UTC",
    )
    found = changes(plan, utc("2022-06-25 00:00"), utc("2022-08-08 00:00"))
    assert found[0] == ("2022-07-02 00:00", "up", "down")  # first Saturday of July
    assert found[-1] == ("2022-08-01 00:00", "down", "up")  # Sunday 31 July ends with July
    assert len(found) == 10  # five weekends in July 2022 (2, 9, 16, 23, 30-31)


def test_location_overrides_the_plan_zone(tmp_path: Path) -> None:
    periods = {
        "london-office": {
            "times": [{"start_time": "09:00", "end_time": "17:00"}],
            "location": "Europe/London",
        },
        "local-office": {"times": [{"start_time": "09:00", "end_time": "17:00"}]},
    }
    london = make_plan(tmp_path, periods, [{"during": "london-office", "state": "down"}])
    local = make_plan(tmp_path, periods, [{"during": "local-office", "state": "down"}])
    # Summer: London is UTC+1, Shanghai UTC+8.
    assert changes(london, utc("2022-06-15 00:00"), utc("2022-06-16 00:00")) == [
        ("2022-06-15 08:00", "up", "down"),
        ("2022-06-15 16:00", "down", "up"),
    ]
    assert changes(local, utc("2022-06-15 00:00"), utc("2022-06-16 00:00")) == [
        ("2022-06-15 01:00", "up", "down"),
        ("2022-06-15 09:00", "down", "up"),
    ]
    # Winter: London is on UTC.
    assert changes(london, utc("2022-01-12 00:00"), utc("2022-01-13 00:00")) == [
        ("2022-01-12 09:00", "up", "down"),
        ("2022-01-12 17:00", "down", "up"),
    ]
    # London's own DST change (2022-03-27 01:00 UTC) moves the window by an hour that day.
    assert changes(london, utc("2022-03-26 00:00"), utc("2022-03-28 00:00")) == [
        ("2022-03-26 09:00", "up", "down"),
        ("2022-03-26 17:00", "down", "up"),
        ("2022-03-27 08:00", "up", "down"),
        ("2022-03-27 16:00", "down", "up"),
    ]


def test_recurring_window_bounded_by_start_and_end(tmp_path: Path) -> None:
    plan = make_plan(
        tmp_path,
        {
            "office-hours-in-freeze": {
                "start": datetime(2022, 6, 22, 18),
                "end": datetime(2022, 6, 25),
                "weekdays": ["monday:friday"],
                "times": [{"start_time": "09:00", "end_time": "17:00"}],
            }
        },
        [{"during": "office-hours-in-freeze", "state": "any"}],
    )
    found = plan.transitions(at_local("2022-06-20 00:00"), at_local("2022-07-01 00:00"))
    assert [(t.at, t.to_state) for t in found] == [
        (at_local("2022-06-23 09:00"), "any"),  # the 22nd starts at 18:00, after office hours
        (at_local("2022-06-23 17:00"), "up"),
        (at_local("2022-06-24 09:00"), "any"),
        (at_local("2022-06-24 17:00"), "up"),
    ]


# --- grace, next change, transitions ----------------------------------------------------------


FREEZE = {"freeze": {"start": datetime(2022, 6, 22, 18), "end": datetime(2022, 7, 25, 8, 30)}}


@pytest.mark.parametrize("edge", ["2022-06-22 18:00", "2022-07-25 08:30"])
def test_in_grace_at_both_edges(tmp_path: Path, edge: str) -> None:
    plan = make_plan(tmp_path, FREEZE, [{"during": "freeze", "state": "down"}], grace="5m")
    ref = plan.services[0]
    at = at_local(edge)
    assert not plan.in_grace(ref, at - TICK)
    assert plan.in_grace(ref, at)
    assert plan.in_grace(ref, at + timedelta(minutes=5) - TICK)
    assert not plan.in_grace(ref, at + timedelta(minutes=5))
    assert not plan.in_grace(ref, at + timedelta(hours=1))


def test_default_grace_is_five_minutes(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, FREEZE, [{"during": "freeze", "state": "down"}])
    ref = plan.services[0]
    start = at_local("2022-06-22 18:00")
    assert plan.grace == timedelta(minutes=5)
    assert plan.in_grace(ref, start + timedelta(minutes=4, seconds=59))
    assert not plan.in_grace(ref, start + timedelta(minutes=5))


def test_zero_grace_is_never_in_grace(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, FREEZE, [{"during": "freeze", "state": "down"}], grace="0s")
    ref = plan.services[0]
    for edge in ("2022-06-22 18:00", "2022-07-25 08:30"):
        at = at_local(edge)
        for instant in (at - TICK, at, at + TICK, at + timedelta(seconds=1)):
            assert not plan.in_grace(ref, instant)


def test_no_grace_where_the_expectation_does_not_change(tmp_path: Path) -> None:
    """A period boundary that does not change the expected state starts no grace."""
    plan = make_plan(tmp_path, FREEZE, [{"during": "freeze", "state": "up"}], grace="1h")
    ref = plan.services[0]
    assert not plan.in_grace(ref, at_local("2022-06-22 18:00"))
    assert plan.transitions(at_local("2022-06-01 00:00"), at_local("2022-08-01 00:00")) == []
    assert plan.next_change(ref, at_local("2022-06-01 00:00")) is None


def test_next_change_is_exact(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, FREEZE, [{"during": "freeze", "state": "down"}])
    ref = plan.services[0]
    start, end = at_local("2022-06-22 18:00"), at_local("2022-07-25 08:30")
    assert plan.next_change(ref, at_local("2022-06-01 00:00")) == start
    assert plan.next_change(ref, start - TICK) == start
    assert plan.next_change(ref, start) == end  # strictly after
    assert plan.next_change(ref, end - TICK) == end
    assert plan.next_change(ref, end) is None
    assert plan.next_transition(start - timedelta(days=30)) == start


def test_next_change_within_the_horizon_only(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, FREEZE, [{"during": "freeze", "state": "down"}])
    ref = plan.services[0]
    far = at_local("2022-06-22 18:00") - timedelta(days=500)
    assert plan.next_change(ref, far) is None
    assert plan.next_change(ref, far, horizon=timedelta(days=501)) == at_local("2022-06-22 18:00")


def test_next_change_none_without_rules(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, FREEZE, [])
    ref = plan.services[0]
    assert plan.next_change(ref, at_local("2022-06-01 00:00")) is None
    assert plan.next_transition(at_local("2022-06-01 00:00")) is None
    assert not plan.in_grace(ref, at_local("2022-06-22 18:00"))
    assert plan.expected(ref, at_local("2022-07-01 00:00")) == Expectation("up")


def test_transitions_are_half_open(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, FREEZE, [{"during": "freeze", "state": "down"}])
    start, end = at_local("2022-06-22 18:00"), at_local("2022-07-25 08:30")
    both = plan.transitions(start, end + TICK)
    assert [(t.at, t.from_state, t.to_state, t.period) for t in both] == [
        (start, "up", "down", "freeze"),
        (end, "down", "up", "freeze"),
    ]
    assert [t.at for t in plan.transitions(start, end)] == [start]  # end excluded
    assert [t.at for t in plan.transitions(start + TICK, end + TICK)] == [end]  # start excluded
    assert plan.transitions(start + TICK, end) == []
    assert all(t.channel == "c" and t.service == "s" for t in both)


def test_transitions_of_several_services_in_time_order(tmp_path: Path) -> None:
    data = {
        "periods": {
            **FREEZE,
            "window": {"start": datetime(2022, 6, 23, 9), "end": datetime(2022, 7, 19, 18)},
        },
        "channels": [
            {
                "id": "b-portal",
                "name": "乙",
                "kind": "web",
                "group": "online",
                "services": [
                    {
                        "id": "pension",
                        "name": "养老",
                        "expect": [{"during": "freeze", "state": "down"}],
                    },
                    {
                        "id": "certificate",
                        "name": "参保证明",
                        "expect": [
                            {"during": "freeze", "state": "down"},
                            {"during": "window", "state": "up"},
                        ],
                    },
                ],
            },
            {
                "id": "a-app",
                "name": "甲",
                "kind": "app",
                "group": "online",
                "services": [
                    {
                        "id": "pension",
                        "name": "养老",
                        "expect": [{"during": "freeze", "state": "down"}],
                    }
                ],
            },
        ],
    }
    plan = load_plan(tmp_path / "two.toml", data)
    found = plan.transitions(at_local("2022-06-01 00:00"), at_local("2022-08-01 00:00"))
    assert [(t.at, t.channel, t.service, t.to_state) for t in found] == [
        (at_local("2022-06-22 18:00"), "a-app", "pension", "down"),
        (at_local("2022-06-22 18:00"), "b-portal", "certificate", "down"),
        (at_local("2022-06-22 18:00"), "b-portal", "pension", "down"),
        (at_local("2022-06-23 09:00"), "b-portal", "certificate", "up"),
        (at_local("2022-07-19 18:00"), "b-portal", "certificate", "down"),
        (at_local("2022-07-25 08:30"), "a-app", "pension", "up"),
        (at_local("2022-07-25 08:30"), "b-portal", "certificate", "up"),
        (at_local("2022-07-25 08:30"), "b-portal", "pension", "up"),
    ]
    only = plan.transitions(
        at_local("2022-06-01 00:00"),
        at_local("2022-08-01 00:00"),
        refs=[plan.service("b-portal", "certificate")],
    )
    assert [t.at for t in only] == [
        at_local("2022-06-22 18:00"),
        at_local("2022-06-23 09:00"),
        at_local("2022-07-19 18:00"),
        at_local("2022-07-25 08:30"),
    ]
    with pytest.raises(KeyError):
        plan.service("a-app", "certificate")


# --- instants given on the plan's own wall clock ----------------------------------------------

NEW_YORK = ZoneInfo("America/New_York")


def test_instants_in_the_plan_zone_use_absolute_time_in_the_repeated_hour(tmp_path: Path) -> None:
    """`--at` is read in the plan zone: arithmetic on it must not be wall-clock arithmetic.

    On 2022-11-06 New York repeats 01:00-02:00. The period starts at the second 01:30 (EST).
    """
    plan = make_plan(
        tmp_path,
        {"late": {"start": utc("2022-11-06 06:30"), "end": utc("2022-11-07 00:00")}},
        [{"during": "late", "state": "down"}],
        zone="America/New_York",
        grace="5m",
    )
    ref = plan.services[0]
    first_pass = datetime(2022, 11, 6, 1, 59, 59, 999999, tzinfo=NEW_YORK)  # EDT, 05:59:59Z
    assert plan.expected(ref, first_pass) == Expectation("up")
    assert plan.next_change(ref, first_pass) == utc("2022-11-06 06:30")
    assert not plan.in_grace(ref, first_pass)
    after = datetime(2022, 11, 6, 2, 3, tzinfo=NEW_YORK)  # EST, 07:03Z: 33 minutes after
    assert plan.expected(ref, after) == Expectation("down", 0, "late")
    assert not plan.in_grace(ref, after)
    second_pass = datetime(2022, 11, 6, 1, 32, fold=1, tzinfo=NEW_YORK)  # EST, 06:32Z
    assert plan.expected(ref, second_pass) == Expectation("down", 0, "late")
    assert plan.in_grace(ref, second_pass)
    local_from = datetime(2022, 11, 6, 0, 0, tzinfo=NEW_YORK)
    local_until = datetime(2022, 11, 6, 2, 0, tzinfo=NEW_YORK)  # 07:00Z
    assert [t.at for t in plan.transitions(local_from, local_until)] == [utc("2022-11-06 06:30")]


def test_period_starting_right_after_the_spring_gap(tmp_path: Path) -> None:
    """A local start at 03:00 on 2022-03-13 (just after the gap) is 07:00 UTC, found exactly."""
    plan = make_plan(
        tmp_path,
        {"cutover": {"start": datetime(2022, 3, 13, 3, 0), "end": datetime(2022, 3, 14)}},
        [{"during": "cutover", "state": "down"}],
        zone="America/New_York",
    )
    ref = plan.services[0]
    assert changes(plan, utc("2022-03-12 00:00"), utc("2022-03-15 00:00")) == [
        ("2022-03-13 07:00", "up", "down"),
        ("2022-03-14 04:00", "down", "up"),
    ]
    assert plan.next_change(ref, utc("2022-03-12 00:00")) == utc("2022-03-13 07:00")
    assert state(plan, utc("2022-03-13 07:00") - TICK) == "up"
