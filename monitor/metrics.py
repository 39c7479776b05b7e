"""Prometheus metrics at `/metrics`: the expected state beside the observed one.

One custom collector builds every family at scrape time from state that already exists: the
plan's expectation at `clock.now()`, the judge's open incidents (`pipeline.states`), the
scheduler's lags, the store's write errors, and the last observation of every service, which a
small pipeline listener keeps together with the counters and the duration histogram. Nothing
updates hundreds of gauges on every probe; a probe costs a few dictionary updates.

Every series is labelled `channel` and `business` (the service id). Not `service`: Prometheus
Operator adds a `service` target label to every scrape, so ours would arrive renamed
`exported_service`. No label ever holds a URL. Counters are built as plain families, so there
are no `_created` series, and everything lives in a private registry, so tests can build many.

Families (all `channel_monitor_`; per service unless marked):

- `business_info` (1, with `channel_name`, `business_name`, their English forms, `kind`,
  `group`), `expected_up` (1 up, 0 down, absent under `any`), `expectation_enforced` (0 in grace
  or under `any`), `next_transition_timestamp_seconds{to}`, `probe_interval_seconds`;
- from the last probe: `probe_success`, `probe_http_status_code` (0 without an answer),
  `last_probe_timestamp_seconds`, `tls_cert_expiry_timestamp_seconds` (last certificate seen);
- `probe_duration_seconds` (histogram), `probes_total{result="serving"|"not_serving"}`,
  `mismatch{direction}` (1 while an incident is open), `incidents_total{direction}`;
- the monitor itself: `scheduler_lag_seconds` (p99 of recent probe start lags),
  `scheduler_lag_max_seconds`, `probes_in_flight`, `store_write_errors_total`,
  and the `process_*` metrics of the monitor's own process.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from monitor.judge import DIRECTIONS
from monitor.plan import TICK, Expectation, Plan, ServiceRef

if TYPE_CHECKING:
    from monitor.clock import Clock
    from monitor.daemon import Daemon
    from monitor.pipeline import Pipeline, Result
    from monitor.probe import Observation
    from monitor.scheduler import Scheduler
    from monitor.store import Store

PREFIX = "channel_monitor_"
#: The classic text format; what `generate_latest` writes for our (legacy-named) metrics.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Probe duration buckets (seconds): local answers take milliseconds, timeouts seconds.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RESULTS = ("serving", "not_serving")
#: How long a cached expectation is trusted when the plan names no next change.
RECHECK = timedelta(hours=1)

KEY = ("channel", "business")


@dataclass(slots=True)
class _Histogram:
    """Cumulative-on-output bucket counts of one service's probe durations."""

    counts: list[int]
    total: float = 0.0

    def observe(self, value: float, bounds: Sequence[float]) -> None:
        self.counts[bisect.bisect_left(bounds, value)] += 1
        self.total += value

    def buckets(self, bounds: Sequence[float]) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*bounds, math.inf), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == math.inf else repr(bound), running))
        return out


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
    """The pipeline listener that keeps last observations and counters, and the collector
    that turns them and the plan into metric families at scrape time."""

    def __init__(
        self,
        plan: Plan,
        pipeline: Pipeline,
        clock: Clock,
        scheduler: Scheduler | None = None,
        store: Store | None = None,
        buckets: Sequence[float] = DURATION_BUCKETS,
        process: bool = True,
    ) -> None:
        self.plan = plan
        self.pipeline = pipeline
        self.clock = clock
        self.scheduler = scheduler
        self.store = store
        self.buckets = tuple(buckets)
        self.last: dict[tuple[str, str], Observation] = {}
        self.tls_expiry: dict[tuple[str, str], float] = {}
        probed = [ref.key for ref in plan.services if ref.service.probe is not None]
        self.probes = {(*key, r): 0 for key in probed for r in RESULTS}
        self.incidents = {(*key, d.value): 0 for key in probed for d in DIRECTIONS}
        self.durations = {key: self._new_histogram() for key in probed}
        self._planned: dict[tuple[str, str], _Planned] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        if process:
            ProcessCollector(registry=self.registry)

    def _new_histogram(self) -> _Histogram:
        return _Histogram([0] * (len(self.buckets) + 1))

    # --- the listener -------------------------------------------------------------------------

    async def observed(self, result: Result) -> None:
        key = result.ref.key
        observation = result.observation
        self.last[key] = observation
        if observation.tls_expiry is not None:
            self.tls_expiry[key] = observation.tls_expiry.timestamp()
        outcome = "serving" if observation.serving else "not_serving"
        self.probes[(*key, outcome)] = self.probes.get((*key, outcome), 0) + 1
        histogram = self.durations.get(key)
        if histogram is None:
            histogram = self.durations[key] = self._new_histogram()
        histogram.observe(observation.duration_seconds, self.buckets)
        for event in result.judgement.events:
            if event.kind == "opened":
                counted = (*key, event.direction.value)
                self.incidents[counted] = self.incidents.get(counted, 0) + 1

    async def transition(self, at: datetime) -> None:
        """A planned change happened: forget cached expectations (they expire anyway)."""
        self._planned.clear()

    # --- the plan at scrape time ----------------------------------------------------------------

    def planned(self, ref: ServiceRef, now: datetime) -> _Planned:
        """The expectation of `ref` at `now`, cached until its next planned change.

        The expected state is constant until `next_change`, and grace is over at the last
        transition within `grace` before the cache was filled, plus `grace`: so one entry
        answers every scrape until the plan changes, exactly as `Plan.expected` and
        `Plan.in_grace` would.
        """
        now = now.astimezone(UTC)
        cached = self._planned.get(ref.key)
        if (
            cached is not None
            and cached.since <= now
            and (cached.until is None or now < cached.until)
        ):
            return cached
        plan = self.plan
        expectation = plan.expected(ref, now)
        change = plan.next_change(ref, now)
        grace_until = None
        if plan.grace > timedelta(0):
            recent = plan.transitions(now - plan.grace + TICK, now + TICK, [ref])
            if recent:
                grace_until = recent[-1].at.astimezone(UTC) + plan.grace
        fresh = _Planned(
            since=now,
            until=change.astimezone(UTC) if change is not None else now + RECHECK,
            expectation=expectation,
            grace_until=grace_until,
            next_change=change,
            next_state=plan.expected(ref, change).state if change is not None else None,
        )
        self._planned[ref.key] = fresh
        return fresh

    # --- the collector ----------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        now = self.clock.now().astimezone(UTC)  # absolute arithmetic, never wall-clock
        plan = self.plan

        info = GaugeMetricFamily(
            PREFIX + "business_info",
            "Names of every service of the plan (value 1), to join on channel and business.",
            labels=[
                *KEY,
                "channel_name",
                "business_name",
                "channel_name_en",
                "business_name_en",
                "kind",
                "group",
            ],
        )
        expected_up = GaugeMetricFamily(
            PREFIX + "expected_up",
            "1 when the plan expects the service up, 0 when down; absent while it says any.",
            labels=KEY,
        )
        enforced = GaugeMetricFamily(
            PREFIX + "expectation_enforced",
            "0 during the grace after a planned change or under an any expectation, else 1.",
            labels=KEY,
        )
        next_transition = GaugeMetricFamily(
            PREFIX + "next_transition_timestamp_seconds",
            "When the plan next changes the expected state of the service, to which state.",
            labels=[*KEY, "to"],
        )
        interval = GaugeMetricFamily(
            PREFIX + "probe_interval_seconds",
            "How often the service is probed.",
            labels=KEY,
        )
        for ref in plan.services:
            labels = [ref.channel.id, ref.service.id]
            channel, service = ref.channel, ref.service
            info.add_metric(
                [
                    *labels,
                    channel.name,
                    service.name,
                    channel.name_en or channel.name,
                    service.name_en or service.name,
                    channel.kind,
                    channel.group,
                ],
                1,
            )
            planned = self.planned(ref, now)
            state = planned.expectation.state
            if state != "any":
                expected_up.add_metric(labels, 1 if state == "up" else 0)
            in_grace = planned.grace_until is not None and now < planned.grace_until
            enforced.add_metric(labels, 0 if in_grace or state == "any" else 1)
            if planned.next_change is not None:
                next_transition.add_metric(
                    [*labels, planned.next_state or ""], planned.next_change.timestamp()
                )
            if service.probe is not None:
                interval.add_metric(labels, self.pipeline.interval(ref).total_seconds())
        yield from (info, expected_up, enforced, next_transition, interval)
        yield from self._observed()
        yield from self._incidents()
        yield from self._health()

    def _observed(self) -> Iterable[Metric]:
        success = GaugeMetricFamily(
            PREFIX + "probe_success",
            "Whether the last probe found the service serving (1) or not (0).",
            labels=KEY,
        )
        status = GaugeMetricFamily(
            PREFIX + "probe_http_status_code",
            "HTTP status code of the last probe; 0 when no answer came.",
            labels=KEY,
        )
        last = GaugeMetricFamily(
            PREFIX + "last_probe_timestamp_seconds",
            "When the last probe of the service started.",
            labels=KEY,
        )
        for (channel, business), observation in self.last.items():
            labels = [channel, business]
            success.add_metric(labels, 1 if observation.serving else 0)
            status.add_metric(labels, observation.status_code or 0)
            last.add_metric(labels, observation.at.timestamp())
        tls = GaugeMetricFamily(
            PREFIX + "tls_cert_expiry_timestamp_seconds",
            "End of validity of the last TLS certificate the service presented.",
            labels=KEY,
        )
        for (channel, business), expiry in self.tls_expiry.items():
            tls.add_metric([channel, business], expiry)
        duration = HistogramMetricFamily(
            PREFIX + "probe_duration_seconds",
            "Duration of whole probes, from connecting to the end of the capped body.",
            labels=KEY,
        )
        for (channel, business), histogram in self.durations.items():
            duration.add_metric(
                [channel, business], histogram.buckets(self.buckets), histogram.total
            )
        probes = CounterMetricFamily(
            PREFIX + "probes_total",
            "Probes by result: serving or not_serving.",
            labels=[*KEY, "result"],
        )
        for labels, count in self.probes.items():
            probes.add_metric(list(labels), count)
        return (success, status, last, tls, duration, probes)

    def _incidents(self) -> Iterable[Metric]:
        mismatch = GaugeMetricFamily(
            PREFIX + "mismatch",
            "1 while an incident is open in this direction (unexpected_up, unexpected_down).",
            labels=[*KEY, "direction"],
        )
        states = self.pipeline.states
        for ref in self.pipeline.probed:
            state = states.get(ref.key)
            open_direction = state.incident.direction if state and state.incident else None
            for direction in DIRECTIONS:
                mismatch.add_metric(
                    [*ref.key, direction.value], 1 if open_direction == direction else 0
                )
        incidents = CounterMetricFamily(
            PREFIX + "incidents_total",
            "Incidents opened, by direction (unexpected_up, unexpected_down).",
            labels=[*KEY, "direction"],
        )
        for labels, count in self.incidents.items():
            incidents.add_metric(list(labels), count)
        return (mismatch, incidents)

    def _health(self) -> Iterable[Metric]:
        lags = sorted(self.scheduler.lags) if self.scheduler is not None else []
        p99 = lags[max(0, math.ceil(0.99 * len(lags)) - 1)] if lags else 0.0  # nearest rank
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
            value=max(0.0, lags[-1]) if lags else 0.0,
        )
        yield GaugeMetricFamily(
            PREFIX + "probes_in_flight",
            "Probes running now.",
            value=len(self.pipeline.running),
        )
        yield CounterMetricFamily(
            PREFIX + "store_write_errors_total",
            "Failed writes of buffered observations to the store (they are retried).",
            value=self.store.write_errors if self.store is not None else 0,
        )

    # --- exposition -------------------------------------------------------------------------

    def render(self) -> bytes:
        """One scrape in the Prometheus text format."""
        return generate_latest(self.registry)

    async def handle(self, request: web.Request) -> web.Response:
        """GET /metrics."""
        response = web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            response.enable_compression()
        return response


def attach(daemon: Daemon) -> Metrics:
    """Hang the metrics on a daemon: listen to its pipeline, serve `/metrics` on its app."""
    metrics = Metrics(
        daemon.plan, daemon.pipeline, daemon.clock, scheduler=daemon.scheduler, store=daemon.store
    )
    daemon.listeners.append(metrics)
    daemon.app.router.add_get("/metrics", metrics.handle)
    return metrics
