"""Test data for the site tests: the real plan, 90 days of hourly history for every service,
and a few incidents, written into a real store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from helpers import real_plan

from monitor.judge import IncidentEvent, OpenIncident, Verdict
from monitor.plan import Plan
from monitor.store import Rollup, Store

#: An instant inside the freeze, after the certificate window closed.
DURING_LATE = datetime.fromisoformat("2022-07-20T12:00:00+08:00")


def fill_history(
    plan: Plan, db: Path, end: datetime, days: int = 90, bad_hours: int = 12
) -> list[tuple[str, str, datetime]]:
    """Every service probed 60 times an hour for `days` days up to `end`, as the plan says,
    except `bad_hours` hours spread over a few services that broke their plan (half the
    probes mismatching). Returns the bad hours (channel, service, hour)."""
    end = end.astimezone(UTC)
    start = (end - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
    hours = int((end - start).total_seconds() // 3600)
    bad: list[tuple[str, str, datetime]] = []
    for i in range(bad_hours):
        ref = plan.services[(i * 7) % len(plan.services)]
        bad.append((ref.channel.id, ref.service.id, start + timedelta(hours=(i * 173) % hours)))
    bad_set = set(bad)
    rows = []
    for ref in plan.services:
        # The expectation only changes at transitions: walk them instead of asking per hour.
        changes = [(t.at, t.to_state) for t in plan.transitions(start, end, [ref])]
        state = plan.expected(ref, start).state
        for index in range(hours):
            hour = start + timedelta(hours=index)
            while changes and changes[0][0] <= hour:
                state = changes.pop(0)[1]
            serving = 0 if state == "down" else 60
            mismatches = 0
            if (ref.channel.id, ref.service.id, hour) in bad_set:
                serving, mismatches = 30, 30
            rows.append(
                Rollup(
                    ref.channel.id,
                    ref.service.id,
                    hour,
                    60,
                    serving,
                    60 if state == "up" else 0,
                    60 if state == "down" else 0,
                    mismatches,
                    60 * 0.2,
                    0.9,
                )
            )
    store = Store(db)
    try:
        store.add_rollups(rows)
    finally:
        store.close()
    return bad


def add_incident(
    db: Path,
    channel: str,
    service: str,
    direction: str,
    opened: datetime,
    resolved: datetime | None,
    reason: str = "HTTP 503",
    expected: str = "up",
    period: str | None = None,
    resolve_reason: str = "HTTP 200",
) -> None:
    """One incident as the judge would record it."""
    store = Store(db)
    try:
        verdict = Verdict(direction)
        held = OpenIncident(None, verdict, opened, reason, expected, period)
        record = store.record_event(
            channel,
            service,
            IncidentEvent("opened", verdict, opened, reason, expected, period, held),
        )
        if resolved is not None:
            held = OpenIncident(record.id, verdict, opened, reason, expected, period)
            store.record_event(
                channel,
                service,
                IncidentEvent(
                    "resolved", verdict, resolved, resolve_reason, expected, period, held
                ),
            )
    finally:
        store.close()


def busy_store(db: Path, end: datetime = DURING_LATE) -> Path:
    """The real plan's 90 days of history up to `end`, with three incidents (one still open)."""
    plan = real_plan()
    fill_history(plan, db, end)
    add_incident(
        db, "hubei-zwfw", "portal", "unexpected_down", end - timedelta(hours=3), None,
        "timeout after 10s",
    )  # fmt: skip
    add_incident(
        db, "si-12333", "portal", "unexpected_down", end - timedelta(days=40),
        end - timedelta(days=40) + timedelta(minutes=47),
    )  # fmt: skip
    add_incident(
        db, "ehuiban", "pension", "unexpected_up", end - timedelta(days=10),
        end - timedelta(days=10) + timedelta(hours=5, minutes=12), "HTTP 200", "down", "freeze",
    )  # fmt: skip
    return db


def cutover(start: datetime, end: datetime) -> dict:
    """A freeze period named as the test plans name it, from `start` to `end`."""
    return {"title": "系统切换", "title_en": "System cutover", "start": start, "end": end}


def large_plan(channels: int = 100, per_channel: int = 100) -> Plan:
    """A plan of `channels` channels of `per_channel` services in the shapes of the 2022
    cutover around `DURING_LATE` (paused by the freeze, kept open, reopened by a certificate
    window, office hours); every channel offers the same businesses, as channels do."""
    from monitor.plan.load import validate_config

    return Plan(validate_config(large_plan_data(channels, per_channel)))


def large_plan_data(channels: int = 100, per_channel: int = 100) -> dict:
    """`large_plan` as parsed TOML (for a plan file: `helpers.write_plan`)."""
    shapes = [
        {"expect": [{"during": "freeze", "state": "down"}]},
        {"expect": [{"during": "freeze", "state": "up"}]},
        {"expect": [{"during": "freeze", "state": "down"}, {"during": "window", "state": "up"}]},
        {"default": "down", "expect": [{"during": "office", "state": "up"},
                                       {"during": "freeze", "state": "down"}]},
    ]  # fmt: skip
    return {
        "periods": {
            "freeze": cutover(DURING_LATE - timedelta(days=10), DURING_LATE + timedelta(days=20)),
            "window": {
                "start": DURING_LATE - timedelta(days=5),
                "end": DURING_LATE + timedelta(days=10),
            },
            "office": {
                "weekdays": ["monday:friday"],
                "times": [{"start_time": "08:30", "end_time": "17:30"}],
            },
        },
        "channels": [
            {
                "id": f"channel-{c}",
                "name": f"渠道 {c}",
                "name_en": f"Channel {c}",
                "kind": "web",
                "group": "online" if c % 3 else "offline",
                "services": [
                    {
                        "id": f"service-{s}",
                        "name": f"业务 {s}",
                        "name_en": f"Business {s}",
                        **shapes[s % len(shapes)],
                    }
                    for s in range(per_channel)
                ],
            }
            for c in range(channels)
        ],
    }
