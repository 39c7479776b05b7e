"""The probe -> judge -> store path, shared by `run` (driven by the scheduler on the real
clock) and the demo (driven by its discrete-event replay on a simulated clock).

Downstream parts (metrics, site, alerts) are listeners: they are told about every judged
observation and every planned transition, and never reach back into probing or the plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from monitor.clock import Clock
from monitor.judge import (
    IncidentEvent,
    Judgement,
    OpenIncident,
    ServiceState,
    Thresholds,
    Verdict,
    current_verdict,
    judge,
    thresholds_for,
    with_incident_id,
)
from monitor.keyed_locks import KeyedLocks
from monitor.kinds import KINDS, ProberOptions
from monitor.kinds.base import KindProber
from monitor.kinds.base import make_probers as build_probers
from monitor.net.slots import Slots
from monitor.observation import Observation, not_configured
from monitor.plan import Expectation, Plan, ServiceRef
from monitor.plan.change import REMOVED
from monitor.store import (
    IncidentRecord,
    PendingObservation,
    SQLiteError,
    Store,
    as_open_incident,
)

if TYPE_CHECKING:
    from monitor.plan.change import PlanChange

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


def make_probers(chromium: str | None = None) -> dict[str, KindProber]:
    """One prober per probed kind of the registry, for `run` and `check` alike (`chromium`:
    the `[monitor] chromium` setting; the browser starts only when a browser probe first runs)."""
    return build_probers(KINDS, ProberOptions(chromium=chromium))


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

    `probers` holds a prober per kind of probe, by kind (`make_probers`); a test may hand one
    `prober` instead, filed under its own `kind` (any kind's: none is special).
    A service whose probe needs unset environment variables is not probed: each time it is due
    it is judged `unknown`, reason `not configured: set NAME`, so every output says so."""

    plan: Plan
    store: Store
    clock: Clock
    prober: KindProber | None = None
    #: Set once by the composition root (monitor/daemon.py), never appended to.
    listeners: tuple[Listener, ...] = ()
    #: Probes in flight at once (their network part). 100,000 services a minute are 1,667
    #: probes a second; on a busy loop each takes tens of milliseconds, so 100 slots made
    #: probes wait for one (a standing queue of a second and more). A probe of a hung target
    #: gives its slot back after a while and runs on (`monitor/net/slots.py`).
    concurrency: int = 400
    probers: dict[str, KindProber] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.states: dict[tuple[str, str], ServiceState] = {}
        self.running: set[tuple[str, str]] = set()
        #: Observations judged since the start (`/healthz`).
        self.judged = 0
        #: An incident transition could not be written (said once until one is written again).
        self._deferred = False
        self.slots = Slots(self.concurrency)
        if self.prober is not None:
            self.probers = {self.prober.kind: self.prober, **self.probers}
        self._judging = KeyedLocks()
        self._set_plan(self.plan)

    def _set_plan(self, plan: Plan) -> None:
        self.plan = plan
        #: Every service observed by a probe of any kind, configured or not.
        self.probed = [ref for ref in plan.services if ref.service.probe is not None]
        self._thresholds: dict[tuple[str, str], Thresholds] = {}
        #: Services planned alike share one Thresholds (one object, not one per service).
        self._alike: dict[Thresholds, Thresholds] = {}

    # --- per-service settings --------------------------------------------------------------

    def interval(self, ref: ServiceRef) -> timedelta:
        return self.plan.interval(ref)

    def timeout(self, ref: ServiceRef) -> timedelta:
        return self.plan.timeout(ref)

    def thresholds(self, ref: ServiceRef) -> Thresholds:
        """Per service, made once per plan (a reload starts afresh)."""
        thresholds = self._thresholds.get(ref.key)
        if thresholds is None:
            thresholds = thresholds_for(self.plan, ref)
            thresholds = self._alike.setdefault(thresholds, thresholds)
            self._thresholds[ref.key] = thresholds
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
        duplicates them. Returns how many were resumed. An open incident of a service the
        plan no longer has resolves now, reason `removed from the plan`, as a reload would
        have resolved it had the plan been edited while the monitor ran."""
        records = await self.store.call(self.store.open_incidents)
        count = 0
        for record in records:
            key = (record.channel, record.business)
            incident = as_open_incident(record)
            if self.plan.find(key) is None:
                await self._resolve_removed(key, incident, self.clock.now())
                continue
            self.states[key] = ServiceState(incident=incident)
            count += 1
        return count

    # --- reload (monitor/reload.py) ---------------------------------------------------------

    @contextlib.asynccontextmanager
    async def holding(self, keys: Iterable[tuple[str, str]]) -> AsyncIterator[None]:
        """Hold these services' judging while a reload takes them out: an observation of one
        that comes back meanwhile waits, then finds the service gone and is dropped."""
        async with contextlib.AsyncExitStack() as held:
            for key in sorted(keys):
                await held.enter_async_context(self._judging.hold(key))
            yield

    async def retire(self, change: PlanChange) -> list[IncidentRecord]:
        """Resolve the open incidents of the services a reload removes, reason `removed from
        the plan` (their alerts resolve through the store's hooks). Call inside `holding`."""
        records = []
        for key in sorted(change.removed):
            state = self.states.get(key)
            if state is not None and state.incident is not None:
                records.append(await self._resolve_removed(key, state.incident, change.at))
        return records

    async def _resolve_removed(
        self, key: tuple[str, str], incident: OpenIncident, at: datetime
    ) -> IncidentRecord:
        direction, expected, period = incident.direction, incident.expected, incident.period
        event = IncidentEvent("resolved", direction, at, REMOVED, expected, period, incident)
        record = await self.store.call(self.store.record_event, *key, event)
        log.warning("incident %s resolved %s/%s: %s", record.id, *key, REMOVED)
        return record

    def use_plan(self, change: PlanChange) -> None:
        """Judge against the new plan from now on; kept services keep their state."""
        self._set_plan(change.new)
        for key in change.removed:
            self.states.pop(key, None)

    # --- the path --------------------------------------------------------------------------

    async def probe(self, ref: ServiceRef) -> Result | None:
        """Probe one service, unless its previous probe is still running. `ref` may come from
        an older plan (a timer set before a reload): the current plan's service is probed,
        and one the plan no longer has is not."""
        key = ref.key
        ref = self.plan.find(key)  # type: ignore[assignment]
        if ref is None or key in self.running or ref.service.probe is None:
            return None
        self.running.add(key)
        # A prober with its own limit (the browser's two pages) queues there, not here, so
        # a queue of slow pages never takes the slots of the other probes.
        limits_itself = getattr(self.probers.get(ref.service.probe.kind), "limits_itself", False)
        try:
            slots = self.slots
            token = None if limits_itself else await slots.acquire()
            try:
                at = self.clock.now()
                plan = self.plan  # the plan in force at the probe's instant judges it
                observation = await observe(self.probers, ref, self.timeout(ref), at)
            finally:
                if token is not None:
                    slots.release(token)
            return None if observation is None else await self.judge(ref, observation, plan)
        finally:
            self.running.discard(key)

    async def judge(
        self, ref: ServiceRef, observation: Observation, plan: Plan | None = None
    ) -> Result | None:
        """Judge an observation against the plan at its instant, store it, tell listeners.

        `plan` is the plan in force when the observation was made (the current one when
        None): a probe in flight across a reload is judged once, against the plan of its
        instant, with the service's state as it is now. An observation of a service the
        current plan no longer has is dropped (None): it was removed while being observed."""
        async with self._judging.hold(ref.key):
            current = self.plan.find(ref.key)
            if current is None:
                log.debug("%s/%s left the plan while observed: not judged", *ref.key)
                return None
            if plan is None or plan is self.plan:
                plan, planned = self.plan, current
            else:
                planned = plan.service(*ref.key)
            return await self._judge(current, planned, plan, observation)

    async def _judge(
        self, ref: ServiceRef, planned: ServiceRef, plan: Plan, observation: Observation
    ) -> Result:
        at = observation.at
        expectation = plan.expected(planned, at)
        in_grace = plan.in_grace(planned, at)
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
        try:
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
            self._deferred = False
        except SQLiteError as exc:
            # The store refuses writes (a full disk): an incident transition that is not
            # written must not be acted on either, or its alert would be lost. Keeping the
            # previous state makes the next observation judge (and try to write) it again.
            if not records:
                new_state = state
            if not self._deferred:
                log.warning(
                    "incident transition of %s/%s not written (%s); it is retried with the "
                    "next observation",
                    ref.channel.id,
                    ref.service.id,
                    exc,
                )
                self._deferred = True
        self._keep_state(ref.key, new_state)
        self.judged += 1
        result = Result(
            ref, observation, expectation, in_grace, judgement, previous, tuple(records)
        )
        for listener in self.listeners:
            try:
                await listener.observed(result)
            except Exception:  # a broken listener must not stop probing
                log.exception("listener %s failed on an observation", type(listener).__name__)
        return result

    def _keep_state(self, key: tuple[str, str], state: ServiceState) -> None:
        """Make `state` the service's, copied into the object already kept for it.

        The one deliberate change of a frozen ServiceState: a service's object then lives as
        long as the pipeline and is frozen for the collector after the first round
        (`gc_watch.settle`); a new object each judgement was, at 100,000 services, 100,000
        more objects for every full collection to walk. Nothing holds the kept object across
        a judgement but `states` and shallow copies of it (a metrics build reads one value of
        it at a time), never an object handed to listeners; the judge itself only ever reads a
        state and returns a new one."""
        mine = self.states.get(key)
        if mine is state:
            return
        if mine is None:  # a copy: the object given to listeners (`Judgement.state`) stays
            self.states[key] = dataclasses.replace(state)
            return
        for name in ServiceState.__slots__:
            object.__setattr__(mine, name, getattr(state, name))

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
