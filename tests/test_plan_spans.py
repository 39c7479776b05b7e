"""The plan's spans: since when and until when an expected state holds, when a service is next
up, and when a grace ends. These are the answers the page, the feeds, the metrics and the
report ask instead of working them out again, so they are pinned at the boundaries of the real
plan and checked against the transition list on generated plans.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from helpers import real_plan
from hypothesis import given, settings
from hypothesis import strategies as st
from test_plan_properties import PROPERTY_SETTINGS, per_service, plans, sample

from monitor.plan import TICK

SHANGHAI = ZoneInfo("Asia/Shanghai")
SPAN_SETTINGS = settings(PROPERTY_SETTINGS, max_examples=40)


def local(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)


def test_the_batch_deductions_pause_is_one_span_across_two_rules() -> None:
    """Freeze then July batch pause, both `down`: one span to 08-01, not a cut at 07-01."""
    plan = real_plan()
    ref = plan.service("tax-bank-outlets", "flex-batch-provincial")
    at = local("2022-06-22T19:00")
    span = plan.span(ref, at)
    assert span.state == "down"
    assert span.since == local("2022-06-22T18:00")
    assert span.until == local("2022-08-01T00:00")
    assert plan.next_up(ref, at) == local("2022-08-01T00:00")
    # The rule in force changes on 07-01; the span does not.
    assert plan.expected(ref, local("2022-07-01T00:00")).period == "july-batch"
    assert plan.span(ref, local("2022-07-01T00:00")) == span


def test_spans_are_exact_at_their_boundaries() -> None:
    plan = real_plan()
    ref = plan.service("hubei-zwfw", "certificate-print")
    opens, closes = local("2022-06-23T09:00"), local("2022-07-19T18:00")
    assert plan.span(ref, opens - TICK).until == opens
    assert plan.span(ref, opens).since == opens
    assert plan.span(ref, opens).until == closes
    assert plan.span(ref, closes).since == closes
    assert plan.span(ref, closes).until == local("2022-07-25T08:30")
    assert plan.next_up(ref, opens - TICK) == opens
    assert plan.next_up(ref, opens) == opens
    assert plan.next_up(ref, closes) == local("2022-07-25T08:30")


def test_spans_over_a_range_chain_without_gaps() -> None:
    plan = real_plan()
    ref = plan.service("hubei-zwfw", "certificate-print")
    found = plan.spans(ref, local("2022-06-01T00:00"), local("2022-09-01T00:00"))
    assert [s.state for s in found] == ["up", "down", "up", "down", "up"]
    for before, after in itertools.pairwise(found):
        assert before.until == after.since


def test_a_state_that_never_changes_has_no_bounds() -> None:
    plan = real_plan()
    ref = next(r for r in plan.services if not r.service.expect)
    span = plan.span(ref, local("2022-07-01T00:00"))
    assert (span.since, span.until) == (None, None)
    assert plan.spans(ref, local("2022-06-01T00:00"), local("2022-09-01T00:00")) == [span]


def test_grace_until_is_the_change_plus_grace() -> None:
    plan = real_plan()
    ref = plan.service("si-12333", "pension")
    start = local("2022-06-22T18:00")
    assert plan.grace_until(ref, start - TICK) is None
    assert plan.grace_until(ref, start) == start + plan.grace
    assert plan.grace_until(ref, start + plan.grace - TICK) == start + plan.grace
    assert plan.grace_until(ref, start + plan.grace) is None


@SPAN_SETTINGS
@given(plans(), st.data())
def test_spans_agree_with_the_transition_list(case: tuple, data: st.DataObject) -> None:
    """Inside a window, since / until / next_up / grace_until are read off the transitions."""
    plan, start, end = case
    grace = plan.grace
    look = timedelta(days=30)
    by_service = per_service(plan, plan.transitions(start - look, end + look))
    span = int((end - start) / TICK)
    for ref in plan.services:
        found = [t.at for t in by_service[ref.key]]
        ups = [t.at for t in by_service[ref.key] if t.to_state == "up"]
        chosen = sample([t for t in found if start <= t < end], data)
        probes = [start, *chosen, *(t - TICK for t in chosen)]
        probes += [
            start + o * TICK for o in data.draw(st.lists(st.integers(0, span - 1), max_size=2))
        ]
        for at in probes:
            if not start <= at < end:
                continue
            before = [t for t in found if t <= at]
            after = [t for t in found if t > at]
            got = plan.span(ref, at)
            assert got.state == plan.expected(ref, at).state
            if before:
                assert got.since == before[-1], (ref.key, at)
            else:
                assert got.since is None or got.since < start - look, (ref.key, at)
            if after:
                assert got.until == after[0], (ref.key, at)
            else:
                assert got.until is None or got.until >= end + look, (ref.key, at)
            up = plan.next_up(ref, at)
            if got.state == "up":
                assert up == at
            elif [t for t in ups if t > at]:
                assert up == min(t for t in ups if t > at), (ref.key, at)
            recent = [t for t in found if t <= at < t + grace]
            assert plan.grace_until(ref, at) == (recent[-1] + grace if recent else None)
