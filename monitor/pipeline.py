"""The probe -> judge -> store path, shared by `run` (driven by the scheduler on the real
clock) and the demo (driven by its discrete-event replay on a simulated clock).

Downstream parts (metrics, site, alerts) are listeners: they are told about every judged
observation and every planned transition, and never reach back into probing or the plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from monitor.clock import Clock
from monitor.judge import (
    Judgement,
    ServiceState,
    Thresholds,
    Verdict,
    current_verdict,
    judge,
    thresholds_for,
    with_incident_id,
)
from monitor.plan import Expectation, Plan, ServiceRef
from monitor.probe import Observation, Prober
from monitor.store import IncidentRecord, PendingObservation, Store, as_open_incident

log = logging.getLogger(__name__)

#: The state of a service not judged yet (immutable, so one serves them all).
_NO_STATE = ServiceState()


@dataclass(frozen=True, slots=True)
class Result:
    """One judged observation, as listeners see it."""

    ref: ServiceRef
    observation: Observation
    expectation: Expectation
    in_grace: bool
    judgement: Judgement
    previous_verdict: Verdict
    incidents: tuple[IncidentRecord, ...] = ()

    @property
    def verdict(self) -> Verdict:
        return self.judgement.verdict


class KindProber(Protocol):
    """What observes one kind of probe (monitor/probe.py, monitor/query.py, ...): one
    signature for all, and failures come back as an Observation with a reason, never raised."""

    async def probe(self, spec: Any, timeout: timedelta, at: datetime) -> Observation: ...

    async def close(self) -> None: ...


def not_configured(ref: ServiceRef, at: datetime) -> Observation:
    """The observation of a service whose probe or push needs unset environment variables."""
    return Observation(at, None, f"not configured: set {', '.join(ref.service.unset)}")


def make_probers(chromium: str | None = None) -> dict[str, KindProber]:
    """One prober per kind of probe, for `run` and `check` alike (`chromium`: the
    `[monitor] chromium` setting; the browser starts only when a browser probe first runs)."""
    from monitor.browser import BrowserProber
    from monitor.query import QueryProber

    return {
        "http": Prober(),
        "prometheus": QueryProber(),
        "browser": BrowserProber(chromium),
    }


async def observe(
    probers: dict[str, KindProber], ref: ServiceRef, timeout: timedelta, at: datetime
) -> Observation | None:
    """Observe a probed service once with the prober of its kind; None when it has no probe
    (schedule-only, or observed by push) or no prober of its kind is running."""
    spec = ref.service.probe
    if spec is None:
        return None
    if ref.service.unset:
        return not_configured(ref, at)
    prober = probers.get(spec.kind)
    if prober is None:
        log.error("no prober for %s probes: %s/%s not probed", spec.kind, *ref.key)
        return None
    return await prober.probe(spec, timeout, at)


class Listener(Protocol):
    """A downstream part of the pipeline (metrics, site, alerts)."""

    async def observed(self, result: Result) -> None: ...

    async def transition(self, at: datetime) -> None: ...


@dataclass
class Pipeline:
    """Probes services, judges the observations, stores them, tells the listeners.

    `prober` probes `kind = "http"`; `probers` holds the probers of the other kinds by kind.
    A service whose probe needs unset environment variables is not probed: each time it is due
    it is judged `unknown`, reason `not configured: set NAME`, so every output says so."""

    plan: Plan
    store: Store
    clock: Clock
    prober: Prober
    listeners: list[Listener] = field(default_factory=list)
    concurrency: int = 100
    probers: dict[str, KindProber] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.states: dict[tuple[str, str], ServiceState] = {}
        self.running: set[tuple[str, str]] = set()
        self._limit = asyncio.Semaphore(self.concurrency)
        self.probers = {"http": self.prober, **self.probers}
        #: Every service observed by a probe of any kind, configured or not.
        self.probed = [ref for ref in self.plan.services if ref.service.probe is not None]
        self._thresholds: dict[tuple[str, str], Thresholds] = {}

    # --- per-service settings --------------------------------------------------------------

    def interval(self, ref: ServiceRef) -> timedelta:
        return self.plan.interval(ref)

    def timeout(self, ref: ServiceRef) -> timedelta:
        return self.plan.timeout(ref)

    def thresholds(self, ref: ServiceRef) -> Thresholds:
        """Per service, made once: the plan does not change while the pipeline runs."""
        thresholds = self._thresholds.get(ref.key)
        if thresholds is None:
            thresholds = self._thresholds[ref.key] = thresholds_for(self.plan, ref)
        return thresholds

    def verdict(self, ref: ServiceRef, now: datetime | None = None) -> Verdict:
        """The confirmed verdict of a service now (`unknown` for schedule-only or stale)."""
        state = self.states.get(ref.key)
        if state is None:
            return Verdict.UNKNOWN
        return current_verdict(state, now or self.clock.now(), self.thresholds(ref))

    # --- lifecycle -------------------------------------------------------------------------

    async def resume(self) -> int:
        """Take up the incidents the store holds open, so a restart neither forgets nor
        duplicates them. Returns how many were resumed."""
        records = await self.store.call(self.store.open_incidents)
        count = 0
        for record in records:
            key = (record.channel, record.business)
            try:
                self.plan.service(*key)
            except KeyError:
                continue  # the plan no longer has this service; it stays open in the store
            self.states[key] = ServiceState(incident=as_open_incident(record))
            count += 1
        return count

    # --- the path --------------------------------------------------------------------------

    async def probe(self, ref: ServiceRef) -> Result | None:
        """Probe one service, unless its previous probe is still running."""
        key = ref.key
        if key in self.running or ref.service.probe is None:
            return None
        self.running.add(key)
        # A prober with its own limit (the browser's two pages) queues there, not here, so
        # a queue of slow pages never takes the slots of the other probes.
        limits_itself = getattr(self.probers.get(ref.service.probe.kind), "limits_itself", False)
        try:
            async with contextlib.nullcontext() if limits_itself else self._limit:
                at = self.clock.now()
                observation = await observe(self.probers, ref, self.timeout(ref), at)
            return None if observation is None else await self.judge(ref, observation)
        finally:
            self.running.discard(key)

    async def judge(self, ref: ServiceRef, observation: Observation) -> Result:
        """Judge an observation against the plan at its instant, store it, tell listeners."""
        at = observation.at
        expectation = self.plan.expected(ref, at)
        in_grace = self.plan.in_grace(ref, at)
        state = self.states.get(ref.key, _NO_STATE)
        thresholds = self.thresholds(ref)
        previous = current_verdict(state, at, thresholds)
        judgement = judge(state, expectation, in_grace, observation, thresholds)
        if observation.serving is not None:  # the store keeps what was seen, not what was not
            self.store.add(
                PendingObservation(
                    ref.channel.id,
                    ref.service.id,
                    observation,
                    expectation.state,
                    judgement.counted,
                )
            )
        new_state = judgement.state
        records: list[IncidentRecord] = []
        for event in judgement.events:
            record = await self.store.call(
                self.store.record_event, ref.channel.id, ref.service.id, event
            )
            records.append(record)
            if event.kind == "opened":
                new_state = with_incident_id(new_state, record.id)
            log.warning(
                "incident %s %s %s/%s: %s",
                record.id,
                event.kind,
                ref.channel.id,
                ref.service.id,
                event.direction.value,
            )
        self.states[ref.key] = new_state
        result = Result(
            ref, observation, expectation, in_grace, judgement, previous, tuple(records)
        )
        for listener in self.listeners:
            try:
                await listener.observed(result)
            except Exception:  # a broken listener must not stop probing
                log.exception("listener %s failed on an observation", type(listener).__name__)
        return result

    async def probe_all(self, refs: list[ServiceRef] | None = None) -> list[Result]:
        """Probe many services at once (bounded by the concurrency limit)."""
        results = await asyncio.gather(*(self.probe(ref) for ref in refs or self.probed))
        return [r for r in results if r is not None]

    async def planned_transition(self, at: datetime) -> None:
        """The plan changed its expectations at `at`: tell the listeners at once."""
        for listener in self.listeners:
            try:
                await listener.transition(at)
            except Exception:
                log.exception("listener %s failed on a transition", type(listener).__name__)

    async def close(self) -> None:
        """Close every prober (their sessions)."""
        for prober in self.probers.values():
            await prober.close()

    async def flush(self) -> None:
        """Write buffered observations."""
        await self.store.call(self.store.flush)
