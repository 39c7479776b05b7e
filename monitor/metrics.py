"""Prometheus metrics at `/metrics`: the expected state beside the observed one.

Everything is read at scrape time from state that already exists: the plan's expectation at
`clock.now()` (cached per service until its next planned change), the judge's open incidents
(`pipeline.states`), the scheduler's lags, the store's write errors, and the last observation of
every service, which a small pipeline listener keeps together with the counters and the duration
histogram. Nothing updates hundreds of gauges on every probe; a probe costs a few dictionary
updates.

The per-service families are written straight into the text format with each service's label
set escaped once, not built as prometheus_client metric families: its exposition validates and
escapes every label of every sample (about 30 us a sample here), which for 10,000 services of
about 26 series each would block the event loop for seconds on every scrape. The monitor's own
health comes from a prometheus_client custom collector, and the process metrics from its
ProcessCollector, in a private registry (so tests can build many); its output is appended.

A scrape never blocks the event loop: at 100,000 services the exposition is about 300 MB of
text, seconds of CPU. Concurrent scrapes share one build, and a finished build is served again
for `max_age` seconds or four times as long as it took, whichever is longer, so however many
clients scrape, building takes at most about a fifth of the loop's time. A build takes a shallow
snapshot (lists of references), then writes the text on the loop a few milliseconds at a time,
letting probes that fall due run in between, and gzips each slice as it goes (level 1, about a
tenth of the writing's cost), keeping only the gzip (11 MB at 100,000 services, where text and
gzip together held 600 MB); a client that does not take gzip gets it unpacked a megabyte at a
time. Not the build on a thread: Python text on a thread holds the GIL, and the loop, which
lets go of it at every system call, would wait for it each time (probes and `/healthz` starved
as badly as before). A scrape waits for a build only when builds are quick (`WAIT_UNDER`);
when they are not, it is answered at once with the last one while the next is built, and `run`
starts the first build as it starts, so `/metrics` answers in the time it takes to send.

In a replay (the demo), instants are the replay's (2022), not the wall clock's, and nothing is
probed after it ends: `last_probe_timestamp_seconds` and `probe_interval_seconds`, which only
mean something against the wall clock, are left out (`live=False`), so the shipped
ChannelProbeStale rule, which needs one of them, never fires for a demo.

Every series is labelled `channel` and `business` (the service id), and in a rehearsal
(`channel-monitor rehearse`) `rehearsal="true"`. Not `service`: Prometheus
Operator adds a `service` target label to every scrape, so ours would arrive renamed
`exported_service`. No label ever holds a URL. No counter has a `_created` series.

Families (all `channel_monitor_`; per service unless marked):

- `business_info` (1, with `channel_name`, `business_name`, their English forms, `kind`,
  `group`, `observed_by`: a kind of `monitor.kinds.KINDS` (`http`, `browser`, `prometheus`,
  `push`, `dns`) or `schedule`, and
  `configured`: `false` while a `${NAME}` its probe or push needs is unset),
  `expected_up` (1 up, 0 down, absent under `any`), `expectation_enforced` (0 in grace
  or under `any`), `next_transition_timestamp_seconds{to}`, `probe_interval_seconds`;
- from the last probe: `probe_success` (absent while the last observation could not tell,
  e.g. a query without data or a service not configured), `probe_http_status_code` (0
  without an answer; only for kinds whose observations have one, `Kind.has_status_code`:
  http, browser), `last_probe_timestamp_seconds`, `tls_cert_expiry_timestamp_seconds`
  (last certificate seen);
- `probe_duration_seconds` (histogram; only for kinds that time what they observe,
  `Kind.has_duration`: not push),
  `probes_total{result="serving"|"not_serving"|"unknown"}`,
  `mismatch{direction}` (1 while an incident is open), `incidents_total{direction}`;
- the monitor itself: `scheduler_lag_seconds` (p99 of recent probe start lags),
  `scheduler_lag_max_seconds`, `probes_in_flight`, `probes_lent`, `probes_skipped_total`,
  `store_write_errors_total`,
  `store_healthy`, `store_last_write_timestamp_seconds`, `store_pending_observations`,
  `observations_dropped_total`, `store_size_prunes_total`,
  `config_last_reload_successful` and
  `config_last_reload_success_timestamp_seconds` (`run` only: whether the last edit of the plan
  file was applied, monitor/reload.py), and the `process_*` metrics of the monitor's own process.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from monitor.clock import RealClock
from monitor.judge import DIRECTIONS, enforced
from monitor.kinds import KINDS, Kind
from monitor.part import Part
from monitor.plan import Expectation, Plan, ServiceRef

if TYPE_CHECKING:
    from monitor.clock import Clock
    from monitor.pipeline import Pipeline, Result
    from monitor.plan.change import PlanChange, ReloadStatus
    from monitor.scheduler import Scheduler
    from monitor.store import Store

T = TypeVar("T")

PREFIX = "channel_monitor_"
#: The classic text format, which the writer below and `generate_latest` both produce.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Probe duration buckets (seconds): local answers take milliseconds, timeouts seconds.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RESULTS = ("serving", "not_serving", "unknown")
#: Index into RESULTS by an observation's `serving`.
_RESULT_INDEX = {True: 0, False: 1, None: 2}
#: How long a cached expectation is trusted when the plan names no next change.
RECHECK = timedelta(hours=1)
#: How long one built exposition answers scrapes (at least; a slow build is kept as long as it
#: took). Prometheus scrapes every 15 s or more, so one second of age is never seen as stale.
MAX_AGE = 1.0
#: A build is served for at least this many times as long as it took: however many clients
#: scrape, building takes at most about a fifth of the loop's time.
BUILD_SHARE = 4
#: A build quicker than this (seconds) is waited for by a scrape that finds the last one
#: stale; a slower one is not (see `Metrics.exposition`).
WAIT_UNDER = 0.5
#: Answers to /metrics written at the same time (the others wait their turn).
SENDERS = 8
#: How long one answer may take to hand over before its connection is closed (a client that
#: stops reading must not keep its turn).
SEND_SECONDS = 30.0
#: How long a build works on the event loop before it lets other callbacks (probes) run.
SLICE_SECONDS = 0.005

DIRECTION_VALUES = tuple(d.value for d in DIRECTIONS)


def _kind(ref: ServiceRef) -> Kind | None:
    """The kind that observes `ref` (None for a service observed by the schedule only)."""
    return KINDS.get(ref.service.observed_by)


def _timed(ref: ServiceRef) -> bool:
    """Whether `ref`'s observations measure a duration worth a histogram (`Kind.has_duration`)."""
    kind = _kind(ref)
    return kind is not None and kind.has_duration


def _has_status(ref: ServiceRef) -> bool:
    """Whether `ref`'s observations carry an HTTP status (`Kind.has_status_code`)."""
    kind = _kind(ref)
    return kind is not None and kind.has_status_code


@dataclass(slots=True)
class _Histogram:
    """Cumulative-on-output bucket counts of one service's probe durations."""

    counts: list[int]
    total: float = 0.0

    def observe(self, value: float, bounds: Sequence[float]) -> None:
        self.counts[bisect.bisect_left(bounds, value)] += 1
        self.total += value


def _escape(value: str) -> str:
    """A label value as the text format wants it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**pairs: str) -> str:
    return ",".join(f'{name}="{_escape(value)}"' for name, value in pairs.items())


def _number(value: float) -> str:
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class _Pace:
    """Tells a build when it has worked `budget` seconds since it last gave the loop back."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.mark = time.perf_counter()
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        if self.calls & 31:  # the clock is read every 32nd call: a call is a few microseconds
            return False
        return time.perf_counter() - self.mark >= self.budget

    def restart(self) -> None:
        self.mark = time.perf_counter()


_NEVER = _Pace(math.inf)


@dataclass(frozen=True, slots=True)
class _Built:
    """One finished exposition, kept gzipped (level 1: a fraction of the default's CPU)."""

    packed: bytes
    #: The length of the text it unpacks to.
    size: int
    #: The plan's generation it was built for (`Metrics._generation`).
    generation: int
    #: How long the build took (wall, seconds).
    seconds: float

    def unpacked(self, chunk: int = 1 << 20) -> Iterator[bytes]:
        """The text, `chunk` bytes at a time (for a client that does not take gzip)."""
        unpacker = zlib.decompressobj(wbits=31)
        data = self.packed
        while data:
            out = unpacker.decompress(data, chunk)
            data = unpacker.unconsumed_tail
            if out:
                yield out
        tail = unpacker.flush()
        if tail:
            yield tail


class _Family:
    """One metric family being written: its HELP and TYPE lines, then its samples."""

    def __init__(self, out: list[str], name: str, kind: str, help_text: str) -> None:
        self.out = out
        self.name = PREFIX + name
        out.append(f"# HELP {self.name} {help_text}\n# TYPE {self.name} {kind}\n")

    def add(self, labels: str, value: float, suffix: str = "") -> None:
        self.out.append(f"{self.name}{suffix}{{{labels}}} {_number(value)}\n")


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What a build needs besides the live tables: the instant it shows, the health samples,
    and the plan's services in order with their labels (one list per plan, made once).

    The tables (`last`, counters, states) are read as the build goes, between its slices on
    the event loop, by walking the plan's services: no copy of them is made. A copy as lists of
    `(key, value)` pairs was 500,000 tuples at 100,000 services, alive for the seconds a build
    takes, and every full collection meanwhile walked them all. Values are replaced, never
    changed, except the counters and the judge's states (updated in place), so a service's
    series are at worst a probe apart from one another, as a scrape of any exporter is."""

    now: datetime
    services: list[ServiceRef]
    labels: list[str]
    health: bytes


@dataclass(frozen=True, slots=True)
class _Planned:
    """What the plan says of one service from `since` until `until` (exclusive)."""

    since: datetime
    until: datetime | None
    expectation: Expectation
    grace_until: datetime | None
    next_change: datetime | None
    next_state: str | None


class Metrics:
    """The pipeline listener that keeps last observations and counters, and the writer that
    turns them and the plan into the text exposition at scrape time."""

    #: Connections the web server closed for lack of room since the start (`run` sets it;
    #: monitor/server.py), read at a scrape; None: not shown.
    connections_refused: Callable[[], int] | None = None

    def __init__(
        self,
        plan: Plan,
        pipeline: Pipeline,
        clock: Clock,
        scheduler: Scheduler | None = None,
        store: Store | None = None,
        buckets: Sequence[float] = DURATION_BUCKETS,
        process: bool = True,
        max_age: float = MAX_AGE,
        live: bool = True,
    ) -> None:
        self.plan = plan
        self.pipeline = pipeline
        self.clock = clock
        self.scheduler = scheduler
        self.store = store
        self.buckets = tuple(buckets)
        #: Per service, what the exposition shows of its last observation: (serving, status
        #: code, when, as a timestamp). A tuple of plain values, not the Observation: the
        #: collector stops tracking such tuples, so at 100,000 services its full collections
        #: walk 100,000 fewer objects (and the Observation is freed as soon as it is judged).
        self.last: dict[tuple[str, str], tuple[bool | None, int | None, float]] = {}
        self.tls_expiry: dict[tuple[str, str], float] = {}
        #: per service: probes by result (RESULTS order), incidents by direction (DIRECTIONS)
        self.probes: dict[tuple[str, str], list[int]] = {}
        self.incidents: dict[tuple[str, str], list[int]] = {}
        self.durations: dict[tuple[str, str], _Histogram] = {}
        for ref in plan.services:
            if ref.service.probe is not None:
                self._counters(ref.key, _timed(ref))
        #: By `Plan.alike` group: 100,000 services fall into a few groups planned alike, and
        #: working each out once per service cost 35 s of CPU at the first scrape.
        self._planned: dict[int, _Planned] = {}
        self._label_cache: dict[tuple[str, str], str] = {}
        #: (plan, its services in order, their labels): made at the first build of a plan.
        self._ordered: tuple[Plan, list[ServiceRef], list[str]] | None = None
        #: escaped names: a channel's by its id, a service's by its key
        self._info_cache: dict[str | tuple[str, str], str] = {}
        self._le = [f',le="{b!r}"' for b in self.buckets] + [',le="+Inf"']
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Health(self))
        if process:
            ProcessCollector(registry=self.registry)
        self.max_age = max_age
        #: False in a replay: no series that only mean something against the wall clock.
        self.live = live
        #: Expositions built since start (tests and diagnostics: scrapes share them).
        self.builds = 0
        self._building: asyncio.Future[_Built] | None = None
        self._built: _Built | None = None
        self._fresh_until = float("-inf")
        #: A build that took longer than this (seconds) is served on while the next one is
        #: built: a scrape never waits for a slow build, except the first.
        self.wait_under = WAIT_UNDER
        #: Bumped by every reload, so an exposition of the previous plan is not served on.
        self._generation = 0
        #: The outcome of the last plan reload (`run` only; monitor/reload.py).
        self.reloads: ReloadStatus | None = None
        self._senders = asyncio.Semaphore(SENDERS)

    def _counters(self, key: tuple[str, str], timed: bool = True) -> None:
        """A service's counters; a duration histogram only when its kind times something."""
        self.probes[key] = [0] * len(RESULTS)
        self.incidents[key] = [0] * len(DIRECTIONS)
        if timed:
            self.durations[key] = _Histogram([0] * (len(self.buckets) + 1))

    def _key_labels(self, key: tuple[str, str]) -> str:
        """`channel="…",business="…"`, escaped once per service."""
        labels = self._label_cache.get(key)
        if labels is None:
            labels = self._label_cache[key] = _labels(channel=key[0], business=key[1])
            if self.plan.config.rehearsal is not None:  # `rehearse`: every series says so
                labels += ',rehearsal="true"'

        return labels

    def _info_labels(self, ref: ServiceRef) -> str:
        """`business_info`'s labels: the key, the channel's names (escaped once per channel)
        and the service's (once per service). Joined at each build, not kept: the whole label
        set of a service is about 500 bytes (a name in Chinese makes Python keep every
        character in two), 50 MB at 100,000 services; its parts are a third of that."""
        channel, service = ref.channel, ref.service
        shared = self._info_cache.get(channel.id)
        if shared is None:
            shared = self._info_cache[channel.id] = _labels(
                channel_name=channel.name,
                channel_name_en=channel.name_en or channel.name,
                kind=channel.kind,
                group=channel.group,
            )
        own = self._info_cache.get(ref.key)
        if own is None:
            own = self._info_cache[ref.key] = _labels(
                business_name=service.name,
                business_name_en=service.name_en or service.name,
                observed_by=service.observed_by,
                configured="false" if service.unset else "true",
            )
        return f"{self._key_labels(ref.key)},{shared},{own}"

    # --- the listener -------------------------------------------------------------------------

    async def observed(self, result: Result) -> None:
        key = result.ref.key
        observation = result.observation
        self.last[key] = (observation.serving, observation.status_code, observation.at.timestamp())
        if observation.tls_expiry is not None:
            self.tls_expiry[key] = observation.tls_expiry.timestamp()
        if key not in self.probes:
            self._counters(key, _timed(result.ref))
        self.probes[key][_RESULT_INDEX[observation.serving]] += 1
        histogram = self.durations.get(key)
        if histogram is not None:
            histogram.observe(observation.duration_seconds, self.buckets)
        for event in result.judgement.events:
            if event.kind == "opened":
                self.incidents[key][DIRECTIONS.index(event.direction)] += 1

    async def transition(self, at: datetime) -> None:
        """Nothing to do: each cached expectation expires by itself at its next change, so a
        transition recomputes only the services it concerns, at the next scrape."""

    def use_plan(self, change: PlanChange) -> None:
        """A reload: the new plan's series from the next scrape on; removed services' series
        go, added ones start at zero, kept ones keep their counters."""
        self.plan = change.new
        self._planned.clear()
        self._info_cache.clear()
        for key in change.removed:
            for table in (self.last, self.tls_expiry, self.probes, self.incidents, self.durations):
                table.pop(key, None)
        for ref in change.new.services:
            if ref.service.probe is not None and ref.key not in self.probes:
                self._counters(ref.key, _timed(ref))
        self._generation += 1
        self._fresh_until = float("-inf")

    # --- the plan at scrape time ----------------------------------------------------------------

    def planned(self, ref: ServiceRef, now: datetime) -> _Planned:
        """The expectation of `ref` at `now`, cached (for its whole `Plan.alike` group) until
        its next planned change.

        The expected state is constant until `next_change`, and the grace the entry was filled
        in ends where `Plan.grace_until` says (a later change is past `next_change`): so one
        entry answers every scrape until the plan changes, with the plan's own answers.
        """
        now = now.astimezone(UTC)
        group = self.plan.alike(ref)  # services planned alike share one entry
        cached = self._planned.get(group)
        if (
            cached is not None
            and cached.since <= now
            and (cached.until is None or now < cached.until)
        ):
            return cached
        plan = self.plan
        expectation = plan.expected(ref, now)
        change = plan.next_change(ref, now)
        grace_until = plan.grace_until(ref, now)
        fresh = _Planned(
            since=now,
            until=change.astimezone(UTC) if change is not None else now + RECHECK,
            expectation=expectation,
            grace_until=grace_until,
            next_change=change,
            next_state=plan.expected(ref, change).state if change is not None else None,
        )
        self._planned[group] = fresh
        return fresh

    # --- the exposition -------------------------------------------------------------------------

    def snapshot(self) -> _Snapshot:
        """What the next exposition shows; on the event loop (or wherever the state changes)."""
        if self._ordered is None or self._ordered[0] is not self.plan:
            services = list(self.plan.services)
            labels = [self._key_labels(ref.key) for ref in services]
            self._ordered = (self.plan, services, labels)
        _, services, labels = self._ordered
        return _Snapshot(
            now=self.clock.now().astimezone(UTC),  # absolute arithmetic, never wall-clock
            services=services,
            labels=labels,
            health=generate_latest(self.registry),  # a dozen samples and /proc: cheap
        )

    def render(self, snapshot: _Snapshot | None = None) -> bytes:
        """One scrape in the Prometheus text format, in one go (tests, `check`)."""
        snap = snapshot or self.snapshot()
        out: list[str] = []
        for _ in self._write(out, snap, _NEVER):
            pass
        return "".join(out).encode() + snap.health

    async def exposition(self) -> _Built:
        """The current exposition: the fresh one, or one built now and shared by every scrape
        that asks meanwhile. When builds are slow (thousands of services), a scrape is answered
        at once with the last one (a few build times old at most) while the next is built."""
        built = self._built
        if built is not None and built.generation == self._generation:
            if time.monotonic() < self._fresh_until:
                return built
            if built.seconds > self.wait_under:
                if self._building is None:
                    self._building = asyncio.ensure_future(self._rebuild())
                return built
        if self._building is None:
            self._building = asyncio.ensure_future(self._rebuild())
        # shielded: a scrape whose client hangs up must not cancel the others' build
        return await asyncio.shield(self._building)

    def prebuild(self) -> None:
        """Start building now (`run` at start), so the first scrape finds one ready."""
        if self._building is None:
            self._building = asyncio.ensure_future(self._rebuild())

    async def _rebuild(self) -> _Built:
        """Write the text a slice of services at a time, giving the loop back between slices
        (probes due meanwhile start on time), and gzip each slice as it is written: only the
        compressed exposition is kept (11 MB for the 297 MB of text of 100,000 services)."""
        try:
            started = time.monotonic()
            while True:  # again from the start when a reload swaps the plan midway
                generation = self._generation
                snap = self.snapshot()
                out: list[str] = []
                packer = zlib.compressobj(level=1, wbits=31)
                parts: list[bytes] = []
                size = 0
                pace = _Pace(SLICE_SECONDS)
                for _ in self._write(out, snap, pace):
                    text = "".join(out).encode()
                    out.clear()
                    size += len(text)
                    parts.append(packer.compress(text))
                    await asyncio.sleep(0)
                    if generation != self._generation:
                        break
                    pace.restart()
                else:
                    break
            for text in ("".join(out).encode(), snap.health):
                size += len(text)
                parts.append(packer.compress(text))
            parts.append(packer.flush())
            took = time.monotonic() - started
            self.builds += 1
            self._built = _Built(b"".join(parts), size, generation, took)
            if generation == self._generation:  # else the next scrape builds afresh
                self._fresh_until = time.monotonic() + max(self.max_age, BUILD_SHARE * took)
            return self._built
        finally:
            self._building = None

    async def close(self) -> None:
        """Nothing runs beside the loop any more (kept for the daemon's listener protocol)."""

    def _write(self, out: list[str], snap: _Snapshot, pace: _Pace) -> Iterator[None]:
        """Append the exposition to `out`, pausing (yielding) whenever `pace` says so."""
        yield from self._write_plan(out, snap, pace)
        yield from self._write_observed(out, snap, pace)
        yield from self._write_incidents(out, snap, pace)

    def _write_plan(self, out: list[str], snap: _Snapshot, pace: _Pace) -> Iterator[None]:
        now, services, labels = snap.now, snap.services, snap.labels
        info = _Family(
            out,
            "business_info",
            "gauge",
            "Names of every service of the plan (value 1), to join on channel and business.",
        )
        # one entry per group of services planned alike: a list of 100,000 references to a
        # few objects, not 100,000 tuples for the collector to walk while the build runs
        planned: list[_Planned] = []
        for ref in services:
            info.add(self._info_labels(ref), 1)
            planned.append(self.planned(ref, now))
            if pace():
                yield
        expected_up = _Family(
            out,
            "expected_up",
            "gauge",
            "1 when the plan expects the service up, 0 when down; absent while it says any.",
        )
        for label, entry in zip(labels, planned, strict=True):
            state = entry.expectation.state
            if state != "any":
                expected_up.add(label, 1 if state == "up" else 0)
            if pace():
                yield
        enforcing = _Family(
            out,
            "expectation_enforced",
            "gauge",
            "0 during the grace after a planned change or under an any expectation, else 1.",
        )
        for label, entry in zip(labels, planned, strict=True):
            in_grace = entry.grace_until is not None and now < entry.grace_until
            enforcing.add(label, 1 if enforced(entry.expectation, in_grace) else 0)
            if pace():
                yield
        next_transition = _Family(
            out,
            "next_transition_timestamp_seconds",
            "gauge",
            "When the plan next changes the expected state of the service, to which state.",
        )
        for label, entry in zip(labels, planned, strict=True):
            if entry.next_change is not None:
                at = entry.next_change.timestamp()
                next_transition.add(f'{label},to="{entry.next_state}"', at)
            if pace():
                yield
        if not self.live:
            return
        interval = _Family(
            out, "probe_interval_seconds", "gauge", "How often the service is probed."
        )
        for ref, label in zip(services, labels, strict=True):
            if ref.service.probe is not None:
                interval.add(label, self.pipeline.interval(ref).total_seconds())
            if pace():
                yield

    def _write_observed(self, out: list[str], snap: _Snapshot, pace: _Pace) -> Iterator[None]:
        services, labels, last = snap.services, snap.labels, self.last
        family = _Family(
            out,
            "probe_success",
            "gauge",
            "Whether the last probe found the service serving (1) or not (0); absent while "
            "the last observation could not tell.",
        )
        for ref, label in zip(services, labels, strict=True):
            seen = last.get(ref.key)
            if seen is not None and seen[0] is not None:
                family.add(label, 1 if seen[0] else 0)
            if pace():
                yield
        family = _Family(
            out,
            "probe_http_status_code",
            "gauge",
            "HTTP status code of the last probe; 0 when no answer came. Only for services "
            "of kinds that get one (http, browser).",
        )
        for ref, label in zip(services, labels, strict=True):
            seen = last.get(ref.key)
            if seen is not None and _has_status(ref):
                family.add(label, seen[1] or 0)
            if pace():
                yield
        if self.live:
            family = _Family(
                out,
                "last_probe_timestamp_seconds",
                "gauge",
                "When the last probe of the service started.",
            )
            for ref, label in zip(services, labels, strict=True):
                seen = last.get(ref.key)
                if seen is not None:
                    family.add(label, seen[2])
                if pace():
                    yield
        family = _Family(
            out,
            "tls_cert_expiry_timestamp_seconds",
            "gauge",
            "End of validity of the last TLS certificate the service presented.",
        )
        expiries = self.tls_expiry
        if expiries:
            for ref, label in zip(services, labels, strict=True):
                expiry = expiries.get(ref.key)
                if expiry is not None:
                    family.add(label, expiry)
                if pace():
                    yield
        family = _Family(
            out,
            "probe_duration_seconds",
            "histogram",
            "Duration of whole probes, from connecting to the end of the capped body.",
        )
        name, append, durations = family.name, out.append, self.durations
        for ref, labels_of in zip(services, labels, strict=True):  # the bulk: kept tight
            histogram = durations.get(ref.key)
            if histogram is None:
                continue
            running = 0
            for le, count in zip(self._le, histogram.counts, strict=True):
                running += count
                append(f"{name}_bucket{{{labels_of}{le}}} {running}\n")
            append(f"{name}_count{{{labels_of}}} {running}\n")
            append(f"{name}_sum{{{labels_of}}} {_number(histogram.total)}\n")
            if pace():
                yield
        family = _Family(
            out,
            "probes_total",
            "counter",
            "Probes by result: serving, not_serving, or unknown (could not tell).",
        )
        probes = self.probes
        for ref, label in zip(services, labels, strict=True):
            counts = probes.get(ref.key)
            if counts is None:
                continue
            for result, count in zip(RESULTS, counts, strict=True):
                out.append(f'{family.name}{{{label},result="{result}"}} {count}\n')
            if pace():
                yield

    def _write_incidents(self, out: list[str], snap: _Snapshot, pace: _Pace) -> Iterator[None]:
        family = _Family(
            out,
            "mismatch",
            "gauge",
            "1 while an incident is open in this direction (unexpected_up, unexpected_down).",
        )
        states = self.pipeline.states
        for ref, label in zip(snap.services, snap.labels, strict=True):
            if ref.service.observed_by == "schedule":
                continue  # never observed, never an incident; a push's incidents count too
            state = states.get(ref.key)
            direction = state.incident.direction if state and state.incident else None
            for verdict in DIRECTIONS:
                value = 1 if direction == verdict else 0
                out.append(f'{family.name}{{{label},direction="{verdict.value}"}} {value}\n')
            if pace():
                yield
        family = _Family(
            out,
            "incidents_total",
            "counter",
            "Incidents opened, by direction (unexpected_up, unexpected_down).",
        )
        incidents = self.incidents
        for ref, label in zip(snap.services, snap.labels, strict=True):
            counts = incidents.get(ref.key)
            if counts is None:
                continue
            for value, count in zip(DIRECTION_VALUES, counts, strict=True):
                out.append(f'{family.name}{{{label},direction="{value}"}} {count}\n')
            if pace():
                yield

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """GET /metrics: the shared exposition, gzipped when the client takes it, else
        unpacked as it is written. At most SENDERS answers are handed to the kernel at once,
        so a crowd of scrapes answered by one build is written out over many turns of the
        loop, not in one long turn."""
        built = await self.exposition()
        headers = {"Content-Type": CONTENT_TYPE, "Vary": "Accept-Encoding"}
        packed = "gzip" in request.headers.get("Accept-Encoding", "")
        if packed:
            headers["Content-Encoding"] = "gzip"
        response = web.StreamResponse(headers=headers)
        response.content_length = len(built.packed) if packed else built.size
        async with self._senders:
            await response.prepare(request)
            try:
                async with asyncio.timeout(SEND_SECONDS):  # a client that stops reading
                    if packed:
                        await response.write(built.packed)
                    else:
                        for chunk in built.unpacked():
                            await response.write(chunk)
            except TimeoutError:
                if request.transport is not None:
                    request.transport.close()
                return response
        await response.write_eof()
        return response


class _Health:
    """A prometheus_client custom collector: the monitor's own health, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        metrics = self.metrics
        scheduler = metrics.scheduler
        p99 = scheduler.lag_p99() if scheduler is not None else 0.0
        longest = max(scheduler.lags, default=0.0) if scheduler is not None else 0.0
        yield GaugeMetricFamily(
            PREFIX + "scheduler_lag_seconds",
            "99th percentile of the delay between a probe's due time and its start, over the "
            "most recent probe starts.",
            value=max(0.0, p99),
        )
        yield GaugeMetricFamily(
            PREFIX + "scheduler_lag_max_seconds",
            "Largest delay between a probe's due time and its start, over the most recent "
            "probe starts.",
            value=max(0.0, longest),
        )
        yield GaugeMetricFamily(
            PREFIX + "probes_in_flight",
            "Probes running now.",
            value=len(metrics.pipeline.running),
        )
        yield GaugeMetricFamily(
            PREFIX + "probes_lent",
            "Probes running longer than their slot is held (a target slow to answer or hung): "
            "they run on to their timeout without holding back the others.",
            value=metrics.pipeline.slots.lent,
        )
        if scheduler is not None:
            yield CounterMetricFamily(
                PREFIX + "probes_skipped_total",
                "Due probes not started because too many were already waiting: the monitor is "
                "behind (its services are probed at their next slot).",
                value=scheduler.skipped,
            )
        if metrics.connections_refused is not None:
            yield CounterMetricFamily(
                PREFIX + "server_connections_refused",
                "Connections the web server closed because it held its share of the open-files "
                "limit: idle ones closed to make room, or new ones turned away.",
                value=metrics.connections_refused(),
            )
        reloads = metrics.reloads
        if reloads is not None:
            yield GaugeMetricFamily(
                PREFIX + "config_last_reload_successful",
                "1 when the last reload of the plan file applied it (or none was tried since "
                "start), 0 when the edited plan had problems and the previous one still runs.",
                value=1 if reloads.successful else 0,
            )
            yield GaugeMetricFamily(
                PREFIX + "config_last_reload_success_timestamp_seconds",
                "When the plan was last applied: at start or by the last good reload.",
                value=reloads.last_success,
            )
        store = metrics.store
        if store is None:
            return
        yield CounterMetricFamily(
            PREFIX + "store_write_errors_total",
            "Failed writes of buffered observations to the store (they are retried).",
            value=store.write_errors,
        )
        yield GaugeMetricFamily(
            PREFIX + "store_healthy",
            "1 while the store takes writes, 0 while it refuses them (a full disk).",
            value=1 if store.healthy else 0,
        )
        yield GaugeMetricFamily(
            PREFIX + "store_last_write_timestamp_seconds",
            "When the store last took a write (or was opened).",
            value=store.last_write,
        )
        yield GaugeMetricFamily(
            PREFIX + "store_pending_observations",
            "Observations waiting in memory to be written.",
            value=store.pending,
        )
        yield CounterMetricFamily(
            PREFIX + "observations_dropped_total",
            "Observations dropped, oldest first, because the store refused writes for so long "
            "that the buffer was full.",
            value=store.dropped,
        )
        yield CounterMetricFamily(
            PREFIX + "store_size_prunes_total",
            "Times the store passed --store-limit and dropped its oldest days of history (runs, "
            "rollups, sent alerts).",
            value=store.size_prunes,
        )


def build(
    plan: Plan,
    pipeline: Pipeline,
    clock: Clock,
    scheduler: Scheduler,
    store: Store,
    reloads: ReloadStatus | None,
) -> tuple[Metrics, Part]:
    """The metrics of a running monitor: a listener on the pipeline that also holds the plan,
    `GET /metrics`, and a first build when the web server starts (`reloads`: the plan
    watch's status, None when the plan file is not watched)."""
    metrics = Metrics(
        plan, pipeline, clock, scheduler=scheduler, store=store, live=isinstance(clock, RealClock)
    )
    if reloads is not None:
        metrics.reloads = reloads

    async def prebuild(_app: object) -> None:
        metrics.prebuild()

    return metrics, Part(
        listener=metrics,
        plan_user=metrics,
        routes=(("GET", "/metrics", metrics.handle),),
        on_startup=(prebuild,),
    )
