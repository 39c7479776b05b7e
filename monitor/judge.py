"""Observations held against the plan: verdicts and incident transitions.

Pure: no clock, no I/O. An incident opens after `failure_threshold` consecutive mismatching
observations in one direction and resolves after `success_threshold` observations that no longer
break it, so a flapping service does not open and close incidents on every probe. Inside the
grace after a planned transition, and under an `any` expectation, a mismatch does not count
(the counter restarts), so an incident can only open once the plan has had time to take effect.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from monitor.observation import Observation
from monitor.plan import Expectation, Plan, ServiceRef
from monitor.plan.change import REMOVED


class Verdict(StrEnum):
    """The judgement of one service; the two mismatch words also name incident directions."""

    OK = "ok"
    UNEXPECTED_UP = "unexpected_up"
    UNEXPECTED_DOWN = "unexpected_down"
    UNKNOWN = "unknown"


DIRECTIONS = (Verdict.UNEXPECTED_UP, Verdict.UNEXPECTED_DOWN)

#: The resolve reason of an incident that ended because the plan changed, not the channel:
#: every observation that resolved it still showed the channel as it was when the incident
#: opened (still serving when the freeze ended). By the incident's direction and what the plan
#: expects when it resolves; the rows of both languages are in monitor/reasons.py. Without it
#: the resolution reads like a recovery ("HTTP 200") and hides that the portal never closed.
PLAN_ENDED: dict[tuple[Verdict, str], str] = {
    (Verdict.UNEXPECTED_UP, "up"): "plan now expects up; the channel never closed",
    (Verdict.UNEXPECTED_UP, "any"): "plan no longer expects down; the channel never closed",
    (Verdict.UNEXPECTED_DOWN, "down"): "plan now expects down; the channel never opened",
    (Verdict.UNEXPECTED_DOWN, "any"): "plan no longer expects up; the channel never opened",
}


def ended_by_plan(reason: str | None) -> bool:
    """Whether a resolve reason says the plan ended the incident (see `PLAN_ENDED`, and
    `REMOVED` for a service an edit of the plan took out): alerts, the page and the report then
    say "ended", not "recovered". Nothing was seen of the channel in either case."""
    return reason in _PLAN_ENDED_REASONS


_PLAN_ENDED_REASONS = frozenset((*PLAN_ENDED.values(), REMOVED))


def mismatch(expectation: Expectation, serving: bool | None) -> Verdict | None:
    """The direction in which one observation breaks the expectation, None when it does not
    (or cannot tell: `serving` None)."""
    if serving is None:
        return None
    if expectation.state == "up" and not serving:
        return Verdict.UNEXPECTED_DOWN
    if expectation.state == "down" and serving:
        return Verdict.UNEXPECTED_UP
    return None


def enforced(expectation: Expectation, in_grace: bool) -> bool:
    """Whether a mismatch counts now: not inside the grace after a planned change (the plan
    needs time to take effect), not under `any` (the plan does not say). Metrics export it and
    the report counts agreement by it, so there is one rule for all three."""
    return not in_grace and expectation.state != "any"


def counted(expectation: Expectation, in_grace: bool, serving: bool | None) -> Verdict | None:
    """The direction in which one observation breaks the expectation *and counts* (see
    `enforced`); None when it agrees, cannot tell, or does not count."""
    direction = mismatch(expectation, serving)
    return direction if direction is not None and enforced(expectation, in_grace) else None


def single_verdict(
    expectation: Expectation, in_grace: bool, observation: Observation | None
) -> Verdict:
    """The verdict of one observation alone (the `check` command): no thresholds."""
    if observation is None or observation.serving is None:
        return Verdict.UNKNOWN
    direction = mismatch(expectation, observation.serving)
    return Verdict.OK if direction is None or in_grace else direction


@dataclass(frozen=True, slots=True)
class OpenIncident:
    """An incident the judge holds open (id assigned by the store)."""

    id: int | None
    direction: Verdict
    opened_at: datetime
    reason: str
    expected: str
    period: str | None


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    """An incident transition: `opened` or `resolved`."""

    kind: str
    direction: Verdict
    at: datetime
    reason: str
    expected: str
    period: str | None
    incident: OpenIncident


@dataclass(frozen=True, slots=True)
class ServiceState:
    """What the judge remembers of one service between observations."""

    streak_direction: Verdict | None = None
    streak: int = 0
    recovering: int = 0
    #: Whether every observation of the recovering run still shows the channel as it was when
    #: the incident opened (only the expectation moved); meaningless while `recovering` is 0.
    unchanged: bool = False
    incident: OpenIncident | None = None
    last_at: datetime | None = None
    last_serving: bool | None = None
    last_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Thresholds:
    """How many observations open and resolve an incident; when data counts as stale."""

    failure: int = 2
    success: int = 2
    stale_after: timedelta = field(default=timedelta(minutes=3))


def thresholds_for(plan: Plan, ref: ServiceRef) -> Thresholds:
    """The plan's thresholds for one service; its data goes stale after two missed probes.
    Intervals and timeouts are real seconds, observations are dated in the plan's time: in a
    rehearsal (`Plan.pace` > 1) the staleness counts as many plan seconds as pass meanwhile."""
    settings = plan.config.monitor
    return Thresholds(
        failure=settings.failure_threshold,
        success=settings.success_threshold,
        stale_after=(2 * plan.interval(ref) + plan.timeout(ref)) * plan.pace,
    )


@dataclass(frozen=True, slots=True)
class Judgement:
    """One step of the judge: the new state, the verdict and any incident transitions."""

    state: ServiceState
    verdict: Verdict
    raw: Verdict | None
    events: tuple[IncidentEvent, ...] = ()
    #: `raw` when it counts towards an incident (outside grace, not under `any`), else None.
    counted: Verdict | None = None


def judge(
    state: ServiceState,
    expectation: Expectation,
    in_grace: bool,
    observation: Observation,
    thresholds: Thresholds,
) -> Judgement:
    """Fold one observation into the state of its service.

    An observation that cannot tell (`serving` None) changes no counter and no incident: it
    only makes the verdict `unknown` until an observation that can tell arrives."""
    if observation.serving is None:
        unknown = replace(
            state, last_at=observation.at, last_serving=None, last_reason=observation.reason
        )
        return Judgement(unknown, Verdict.UNKNOWN, None)
    direction = mismatch(expectation, observation.serving)
    counts = counted(expectation, in_grace, observation.serving) is not None
    events: list[IncidentEvent] = []
    incident = state.incident
    recovering, unchanged = state.recovering, state.unchanged

    # Towards resolving the open incident: anything that no longer breaks it in its direction.
    if incident is not None:
        if direction == incident.direction:
            recovering = 0
        else:
            # The channel still as it was (serving for an `unexpected_up` incident): only the
            # plan moved. One observation of the run that saw it switch makes it a recovery.
            same = observation.serving == (incident.direction == Verdict.UNEXPECTED_UP)
            unchanged = same if recovering == 0 else unchanged and same
            recovering += 1
        if recovering >= thresholds.success:
            reason = observation.reason
            if unchanged:
                reason = PLAN_ENDED.get((incident.direction, expectation.state), reason)
            events.append(
                IncidentEvent(
                    "resolved",
                    incident.direction,
                    observation.at,
                    reason,
                    incident.expected,
                    incident.period,
                    incident,
                )
            )
            incident, recovering, unchanged = None, 0, False

    # Towards opening a new one: consecutive counting mismatches in one direction.
    if counts and (incident is None or incident.direction != direction):
        streak = state.streak + 1 if state.streak_direction == direction else 1
        streak_direction = direction
    else:
        streak, streak_direction = 0, None
    if incident is None and counts and streak >= thresholds.failure:
        assert direction is not None
        incident = OpenIncident(
            None,
            direction,
            observation.at,
            observation.reason,
            expectation.state,
            expectation.period,
        )
        events.append(
            IncidentEvent(
                "opened",
                direction,
                observation.at,
                observation.reason,
                expectation.state,
                expectation.period,
                incident,
            )
        )
        streak, streak_direction, recovering, unchanged = 0, None, 0, False

    new_state = ServiceState(
        streak_direction=streak_direction,
        streak=streak,
        recovering=recovering,
        unchanged=unchanged,
        incident=incident,
        last_at=observation.at,
        last_serving=observation.serving,
        last_reason=observation.reason,
    )
    verdict = current_verdict(new_state, observation.at, thresholds)
    return Judgement(new_state, verdict, direction, tuple(events), direction if counts else None)


def current_verdict(state: ServiceState, now: datetime, thresholds: Thresholds) -> Verdict:
    """The confirmed verdict: the open incident's direction, `ok`, or `unknown` (no fresh data,
    or the last observation could not tell)."""
    if state.last_at is None or now - state.last_at > thresholds.stale_after:
        return Verdict.UNKNOWN
    if state.last_serving is None:
        return Verdict.UNKNOWN
    if state.incident is not None:
        return state.incident.direction
    return Verdict.OK


def with_incident_id(state: ServiceState, incident_id: int) -> ServiceState:
    """The state with the store's id filled into its open incident."""
    if state.incident is None:
        return state
    return replace(state, incident=replace(state.incident, id=incident_id))
