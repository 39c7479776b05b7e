"""The metrics collector: what a scrape says, read at scrape time from the plan, the judge and
the last observations; checked by the real `promtool check metrics`, and served at /metrics.

The pipeline is the real one (plan from TOML, SQLite store in a temporary folder); observations
are handed to `Pipeline.judge`, so no socket is needed except for the endpoint test.
"""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from helpers import load_plan, require_binary
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from monitor.clock import RealClock, ReplayClock
from monitor.daemon import Daemon
from monitor.kinds.http import Prober
from monitor.metrics import CONTENT_TYPE, DURATION_BUCKETS, Metrics
from monitor.observation import Observation
from monitor.pipeline import Pipeline
from monitor.plan import Plan
from monitor.scheduler import Scheduler
from monitor.store import Store

TZ = ZoneInfo("Asia/Shanghai")
FREEZE_START = datetime(2022, 6, 22, 18, 0, tzinfo=TZ)
FREEZE_END = datetime(2022, 7, 25, 8, 30, tzinfo=TZ)
WINDOW_START = datetime(2022, 6, 23, 9, 0, tzinfo=TZ)
WINDOW_END = datetime(2022, 7, 19, 18, 0, tzinfo=TZ)
GRACE = timedelta(minutes=5)
SECRET_URL = "https://portal.example.invalid/pension?token=s3cret"

PLAN = f"""
[monitor]
timezone = "Asia/Shanghai"
interval = "30s"
grace = "5m"

[periods.freeze]
start = 2022-06-22T18:00:00
end = 2022-07-25T08:30:00

[periods.certificate-window]
start = 2022-06-23T09:00:00
end = 2022-07-19T18:00:00

[periods.weekend]
weekdays = ["saturday:sunday"]

[[channels]]
id = "portal"
name = "湖北政务服务网"
name_en = "Hubei Government Services Portal"
kind = "web"
group = "online"

[[channels.services]]
id = "pension"
name = "养老保险"
name_en = "Pension insurance"
expect = [{{ during = "freeze", state = "down" }}]
probe = {{ url = "{SECRET_URL}", headers = {{ Authorization = "Bearer s3cret" }} }}

[[channels.services]]
id = "medical"
name = "医疗保险"
probe = {{ url = "http://portal.example.invalid/medical", interval = "10s" }}

[[channels.services]]
id = "certificate"
name = "证明打印"
expect = [
  {{ during = "freeze", state = "down" }},
  {{ during = "certificate-window", state = "any" }},
]
probe = {{ url = "http://portal.example.invalid/certificate" }}

[[channels]]
id = "hall"
name = "武汉\\"市民之家\\"\\\\窗口"
kind = "offline"
group = "offline"

[[channels.services]]
id = "cards"
name = "社保卡"
expect = [{{ during = "weekend", state = "down" }}]
"""


class Rig:
    """A real pipeline on a replay clock with the metrics listening."""

    def __init__(self, tmp_path: Path, at: datetime) -> None:
        self.plan = load_plan(tmp_path / "channels.toml", PLAN)
        self.clock = ReplayClock(at)
        self.store = Store(tmp_path / "monitor.db")
        self.prober = Prober()
        self.pipeline = Pipeline(self.plan, self.store, self.clock, self.prober)
        self.scheduler = Scheduler(self.pipeline)
        self.metrics = Metrics(
            self.plan, self.pipeline, self.clock, scheduler=self.scheduler, store=self.store
        )
        self.pipeline.listeners = (self.metrics,)

    def ref(self, channel: str, service: str):
        return self.plan.service(channel, service)

    async def observe(self, channel: str, service: str, serving: bool, **fields) -> None:
        fields.setdefault("reason", "HTTP 200" if serving else "HTTP 503")
        fields.setdefault("status_code", 200 if serving else 503)
        observation = Observation(at=self.clock.now(), serving=serving, **fields)
        await self.pipeline.judge(self.ref(channel, service), observation)

    def scrape(self) -> str:
        return self.metrics.render().decode()

    def samples(self) -> dict[tuple[str, frozenset], float]:
        out = {}
        for family in text_string_to_metric_families(self.scrape()):
            for sample in family.samples:
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return out

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, frozenset(labels.items())))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    # A Wednesday inside the freeze and the certificate window, past every grace.
    built = Rig(tmp_path, datetime(2022, 7, 6, 10, 0, tzinfo=TZ))
    yield built
    built.store.close()


def svc(channel: str, business: str) -> dict[str, str]:
    return {"channel": channel, "business": business}


# --- the plan side -------------------------------------------------------------------------


def test_expected_up_and_enforcement_follow_the_plan(rig: Rig) -> None:
    assert rig.value("channel_monitor_expected_up", **svc("portal", "pension")) == 0
    assert rig.value("channel_monitor_expectation_enforced", **svc("portal", "pension")) == 1
    assert rig.value("channel_monitor_expected_up", **svc("portal", "medical")) == 1
    assert rig.value("channel_monitor_expectation_enforced", **svc("portal", "medical")) == 1
    # `any` inside the certificate window: no expected_up at all, and nothing enforced
    assert rig.value("channel_monitor_expected_up", **svc("portal", "certificate")) is None
    assert rig.value("channel_monitor_expectation_enforced", **svc("portal", "certificate")) == 0
    # a schedule-only service has its expectation but no probe series
    assert rig.value("channel_monitor_expected_up", **svc("hall", "cards")) == 1
    assert rig.value("channel_monitor_probe_interval_seconds", **svc("hall", "cards")) is None
    assert rig.value("channel_monitor_probe_interval_seconds", **svc("portal", "medical")) == 10
    assert rig.value("channel_monitor_probe_interval_seconds", **svc("portal", "pension")) == 30


def test_next_transition_names_the_instant_and_the_new_state(rig: Rig) -> None:
    pension = svc("portal", "pension")
    assert rig.value(
        "channel_monitor_next_transition_timestamp_seconds", **pension, to="up"
    ) == pytest.approx(FREEZE_END.timestamp())
    assert rig.value(
        "channel_monitor_next_transition_timestamp_seconds",
        **svc("portal", "certificate"),
        to="down",
    ) == pytest.approx(WINDOW_END.timestamp())
    saturday = datetime(2022, 7, 9, 0, 0, tzinfo=TZ)
    assert rig.value(
        "channel_monitor_next_transition_timestamp_seconds", **svc("hall", "cards"), to="down"
    ) == pytest.approx(saturday.timestamp())
    # medical never changes: no series rather than a made-up instant
    names = {name for name, labels in rig.samples() if ("business", "medical") in labels}
    assert "channel_monitor_next_transition_timestamp_seconds" not in names


def test_grace_after_a_planned_change_is_not_enforced(tmp_path: Path) -> None:
    rig = Rig(tmp_path, FREEZE_START - timedelta(seconds=1))
    pension = svc("portal", "pension")
    try:
        assert rig.value("channel_monitor_expected_up", **pension) == 1
        assert rig.value("channel_monitor_expectation_enforced", **pension) == 1
        rig.clock.set(FREEZE_START)
        assert rig.value("channel_monitor_expected_up", **pension) == 0
        assert rig.value("channel_monitor_expectation_enforced", **pension) == 0
        rig.clock.set(FREEZE_START + GRACE - timedelta(microseconds=1))
        assert rig.value("channel_monitor_expectation_enforced", **pension) == 0
        rig.clock.set(FREEZE_START + GRACE)
        assert rig.value("channel_monitor_expectation_enforced", **pension) == 1
    finally:
        rig.store.close()


def boundaries(plan: Plan, start: datetime, end: datetime) -> list[datetime]:
    """Instants on and around every planned change and the end of its grace."""
    out = set()
    for transition in plan.transitions(start, end):
        for base in (transition.at, transition.at + plan.grace):
            for step in (-1, 0, 1):
                out.add(base + timedelta(seconds=step))
    return sorted(t.astimezone(UTC) for t in out if t >= start)


async def test_cached_expectations_agree_with_the_plan_at_every_boundary(tmp_path: Path) -> None:
    """The collector caches each expectation until its next change; walking the clock forward
    over every boundary (as real time does) it must say what the plan says, instant by
    instant, for every service."""
    start = datetime(2022, 6, 20, tzinfo=TZ)
    rig = Rig(tmp_path, start)
    try:
        instants = boundaries(rig.plan, start, datetime(2022, 7, 30, tzinfo=TZ))
        assert len(instants) > 40
        for index, at in enumerate(instants):
            rig.clock.set(at)
            if index % 7 == 0:
                await rig.metrics.transition(at)  # as the scheduler does; changes nothing
            samples = rig.samples()
            for ref in rig.plan.services:
                labels = frozenset(svc(*ref.key).items())
                expectation = rig.plan.expected(ref, at)
                expected_up = samples.get(("channel_monitor_expected_up", labels))
                if expectation.state == "any":
                    assert expected_up is None, (ref.key, at)
                else:
                    assert expected_up == (expectation.state == "up"), (ref.key, at)
                enforced = not rig.plan.in_grace(ref, at) and expectation.state != "any"
                got = samples[("channel_monitor_expectation_enforced", labels)]
                assert got == enforced, (ref.key, at)
                change = rig.plan.next_change(ref, at)
                nexts = {
                    dict(k[1])["to"]: v
                    for k, v in samples.items()
                    if k[0] == "channel_monitor_next_transition_timestamp_seconds"
                    and labels <= k[1]
                }
                if change is None:
                    assert nexts == {}, (ref.key, at)
                else:
                    to = rig.plan.expected(ref, change).state
                    assert nexts == {to: pytest.approx(change.timestamp())}, (ref.key, at)
    finally:
        rig.store.close()


# --- the observed side ---------------------------------------------------------------------


async def test_observations_counters_and_incidents(rig: Rig) -> None:
    pension = svc("portal", "pension")
    expiry = datetime(2022, 8, 1, tzinfo=UTC)
    # nothing observed yet: counters at zero, no probe gauges
    assert rig.value("channel_monitor_probes_total", **pension, result="serving") == 0
    assert rig.value("channel_monitor_probe_success", **pension) is None
    assert rig.value("channel_monitor_mismatch", **pension, direction="unexpected_up") == 0

    # serving during the freeze, twice: an unexpected_up incident opens (threshold 2)
    await rig.observe("portal", "pension", True, duration_seconds=0.004, tls_expiry=expiry)
    rig.clock.advance(timedelta(seconds=30))
    await rig.observe("portal", "pension", True, duration_seconds=0.2, tls_expiry=expiry)
    at = rig.clock.now()
    assert rig.value("channel_monitor_probe_success", **pension) == 1
    assert rig.value("channel_monitor_probe_http_status_code", **pension) == 200
    assert rig.value("channel_monitor_last_probe_timestamp_seconds", **pension) == at.timestamp()
    assert rig.value("channel_monitor_tls_cert_expiry_timestamp_seconds", **pension) == (
        expiry.timestamp()
    )
    assert rig.value("channel_monitor_probes_total", **pension, result="serving") == 2
    assert rig.value("channel_monitor_mismatch", **pension, direction="unexpected_up") == 1
    assert rig.value("channel_monitor_mismatch", **pension, direction="unexpected_down") == 0
    assert rig.value("channel_monitor_incidents_total", **pension, direction="unexpected_up") == 1

    # no answer at all: status 0, and the certificate seen before is still reported
    rig.clock.advance(timedelta(seconds=30))
    await rig.observe(
        "portal", "pension", False, reason="timeout after 10s", status_code=None,
        duration_seconds=12.0,
    )  # fmt: skip
    assert rig.value("channel_monitor_probe_success", **pension) == 0
    assert rig.value("channel_monitor_probe_http_status_code", **pension) == 0
    assert rig.value("channel_monitor_tls_cert_expiry_timestamp_seconds", **pension) == (
        expiry.timestamp()
    )
    rig.clock.advance(timedelta(seconds=30))
    await rig.observe("portal", "pension", False, duration_seconds=0.03)  # resolved
    assert rig.value("channel_monitor_mismatch", **pension, direction="unexpected_up") == 0
    assert rig.value("channel_monitor_incidents_total", **pension, direction="unexpected_up") == 1
    assert rig.value("channel_monitor_probes_total", **pension, result="not_serving") == 2

    # the histogram: cumulative buckets, count and sum
    bucket = "channel_monitor_probe_duration_seconds_bucket"
    assert rig.value(bucket, **pension, le="0.01") == 1
    assert rig.value(bucket, **pension, le="0.05") == 2
    assert rig.value(bucket, **pension, le="0.25") == 3
    assert rig.value(bucket, **pension, le="10.0") == 3
    assert rig.value(bucket, **pension, le="+Inf") == 4
    assert rig.value("channel_monitor_probe_duration_seconds_count", **pension) == 4
    assert rig.value("channel_monitor_probe_duration_seconds_sum", **pension) == pytest.approx(
        12.234
    )
    assert len(
        [k for k in rig.samples() if k[0] == bucket and ("business", "pension") in k[1]]
    ) == (len(DURATION_BUCKETS) + 1)


async def test_down_while_expected_up_counts_the_other_direction(rig: Rig) -> None:
    medical = svc("portal", "medical")
    for _ in range(2):
        await rig.observe("portal", "medical", False)
        rig.clock.advance(timedelta(seconds=10))
    assert rig.value("channel_monitor_mismatch", **medical, direction="unexpected_down") == 1
    assert rig.value("channel_monitor_incidents_total", **medical, direction="unexpected_down") == 1
    assert rig.value("channel_monitor_incidents_total", **medical, direction="unexpected_up") == 0


def test_monitor_health(rig: Rig) -> None:
    assert rig.value("channel_monitor_scheduler_lag_seconds") == 0
    assert rig.value("channel_monitor_probes_skipped_total") == 0
    rig.scheduler.skipped = 7
    rig.scheduler.lags.extend([0.001] * 98 + [0.5, 2.0])
    rig.store.write_errors = 3
    rig.pipeline.running.add(("portal", "pension"))
    assert rig.value("channel_monitor_probes_lent") == 0
    rig.pipeline.slots.lent = 1  # its target is slow to answer: its slot was given back
    assert rig.value("channel_monitor_scheduler_lag_seconds") == 0.5  # nearest-rank p99
    assert rig.value("channel_monitor_scheduler_lag_max_seconds") == 2.0
    assert rig.value("channel_monitor_store_write_errors_total") == 3
    assert rig.value("channel_monitor_probes_in_flight") == 1
    assert rig.value("channel_monitor_probes_lent") == 1
    assert rig.value("channel_monitor_probes_skipped_total") == 7
    assert rig.value("process_resident_memory_bytes") is not None or not Path("/proc").exists()


async def test_a_replay_exports_nothing_that_needs_the_wall_clock(rig: Rig) -> None:
    await rig.observe("portal", "pension", True)
    live = rig.scrape()
    assert "channel_monitor_last_probe_timestamp_seconds{" in live
    assert "channel_monitor_probe_interval_seconds{" in live
    rig.metrics.live = False
    replay = rig.scrape()
    assert "channel_monitor_last_probe_timestamp_seconds" not in replay
    assert "channel_monitor_probe_interval_seconds" not in replay
    assert "channel_monitor_probe_success{" in replay  # what was found is still there


def test_the_daemon_exports_wall_clock_series_only_on_the_wall_clock(tmp_path: Path) -> None:
    plan = load_plan(tmp_path / "channels.toml", PLAN)
    for clock, live in ((RealClock(), True), (ReplayClock(datetime(2022, 7, 6, tzinfo=TZ)), False)):
        daemon = Daemon(plan, tmp_path / f"{live}.db", tmp_path / "site", clock=clock)
        try:
            (metrics,) = [x for x in daemon.listeners if isinstance(x, Metrics)]
            assert metrics.live is live
        finally:
            daemon.store.close()


def test_store_health(rig: Rig) -> None:
    assert rig.value("channel_monitor_store_healthy") == 1
    assert rig.value("channel_monitor_observations_dropped_total") == 0
    opened = rig.value("channel_monitor_store_last_write_timestamp_seconds")
    assert opened is not None and opened > 0
    rig.store.write_error = "database or disk is full"
    rig.store.dropped = 7
    assert rig.value("channel_monitor_store_healthy") == 0
    assert rig.value("channel_monitor_observations_dropped_total") == 7
    assert rig.value("channel_monitor_store_pending_observations") == 0


# --- the contract of the exposition --------------------------------------------------------


async def test_labels_names_and_no_secrets(rig: Rig) -> None:
    await rig.observe("portal", "pension", True, tls_expiry=datetime(2030, 1, 1, tzinfo=UTC))
    text = rig.scrape()
    families = list(text_string_to_metric_families(text))
    ours = [f for f in families if f.name.startswith("channel_monitor_")]
    assert {f.name for f in ours} >= {
        "channel_monitor_business_info",
        "channel_monitor_expected_up",
        "channel_monitor_expectation_enforced",
        "channel_monitor_probe_success",
        "channel_monitor_probe_duration_seconds",
        "channel_monitor_probe_http_status_code",
        "channel_monitor_last_probe_timestamp_seconds",
        "channel_monitor_next_transition_timestamp_seconds",
        "channel_monitor_mismatch",
        "channel_monitor_probes",  # counters are named without _total by the parser
        "channel_monitor_incidents",
        "channel_monitor_tls_cert_expiry_timestamp_seconds",
        "channel_monitor_scheduler_lag_seconds",
        "channel_monitor_store_write_errors",
    }
    allowed = {
        "channel",
        "business",
        "channel_name",
        "business_name",
        "channel_name_en",
        "business_name_en",
        "kind",
        "group",
        "observed_by",
        "configured",
        "to",
        "result",
        "direction",
        "le",
    }
    for family in ours:
        for sample in family.samples:
            assert set(sample.labels) <= allowed, sample
            assert "service" not in sample.labels
            assert not sample.name.endswith("_created"), sample
    assert "_created" not in text
    for secret in ("example.invalid", "s3cret", "http://", "https://", "Bearer"):
        assert secret not in text
    # the names, escaped as the format wants them
    hall = rig.samples()
    info = [
        dict(labels)
        for name, labels in hall
        if name == "channel_monitor_business_info" and ("channel", "hall") in labels
    ]
    assert info == [
        {
            "channel": "hall",
            "business": "cards",
            "channel_name": '武汉"市民之家"\\窗口',
            "business_name": "社保卡",
            "channel_name_en": '武汉"市民之家"\\窗口',
            "business_name_en": "社保卡",
            "kind": "offline",
            "group": "offline",
            "observed_by": "schedule",
            "configured": "true",
        }
    ]


async def test_a_real_scrape_passes_promtool_check_metrics(rig: Rig) -> None:
    promtool = require_binary("promtool", package="prometheus")
    await rig.observe("portal", "pension", True, tls_expiry=datetime(2030, 1, 1, tzinfo=UTC))
    await rig.observe("portal", "medical", False, status_code=None, reason="connection refused")
    rig.scheduler.lags.append(0.01)
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=rig.metrics.render(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
    assert result.stdout == b""
    assert result.stderr == b""


def test_registries_are_private(tmp_path: Path) -> None:
    at = datetime(2022, 7, 6, 10, 0, tzinfo=TZ)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one, two = Rig(tmp_path / "a", at), Rig(tmp_path / "b", at)
    try:
        one.metrics.probes[("portal", "pension")][0] = 5  # serving
        assert (
            one.value("channel_monitor_probes_total", **svc("portal", "pension"), result="serving")
            == 5
        )
        assert (
            two.value("channel_monitor_probes_total", **svc("portal", "pension"), result="serving")
            == 0
        )
        assert not any(n.startswith("channel_monitor_") for n in REGISTRY._names_to_collectors)
    finally:
        one.store.close()
        two.store.close()


async def test_served_at_metrics_by_the_daemon(tmp_path: Path) -> None:
    """`run` serves /metrics on its own listen address, in the text format, gzip on request."""
    plan = load_plan(
        tmp_path / "channels.toml", PLAN.replace("portal.example.invalid", "127.0.0.1:9")
    )
    daemon = Daemon(plan, db_path=tmp_path / "monitor.db", site_dir=tmp_path / "site", port=0)
    assert any(isinstance(listener, Metrics) for listener in daemon.listeners)
    assert daemon.pipeline.listeners is daemon.listeners
    await daemon.start()
    try:
        url = f"http://127.0.0.1:{daemon.port}/metrics"
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.get(url, headers={"Accept-Encoding": "identity"}) as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == CONTENT_TYPE
                plain = await response.read()
            async with session.get(url, headers={"Accept-Encoding": "gzip"}) as response:
                assert response.headers["Content-Encoding"] == "gzip"
                zipped = await response.read()
        text = plain.decode()
        assert "channel_monitor_business_info{" in text
        assert "# TYPE channel_monitor_probes_total counter" in text
        assert b"channel_monitor_business_info{" in gzip.decompress(zipped)
    finally:
        await daemon.stop()


async def test_a_slow_build_is_served_on_while_the_next_is_built(rig: Rig) -> None:
    """At 100,000 services a build takes seconds: a scrape gets the last one at once and the
    next is built behind it, never a scrape waiting for a slow build (except the first)."""
    metrics = rig.metrics
    metrics.wait_under = 0.0  # every build counts as slow
    metrics.max_age = 0.0
    first = await metrics.exposition()
    assert metrics.builds == 1
    await rig.observe("portal", "pension", True)
    deadline = time.monotonic() + 10
    while time.monotonic() <= metrics._fresh_until and time.monotonic() < deadline:
        await asyncio.sleep(0.001)  # until the first build is stale (4x its own time)
    again = await metrics.exposition()
    assert again is first, "a stale slow build is answered at once"
    assert metrics._building is not None, "and the next one is being built"
    newer = await metrics._building
    assert newer is not first and metrics.builds == 2
    pension = 'channel="portal",business="pension",result="serving"'
    assert f"channel_monitor_probes_total{{{pension}}} 0\n".encode() in gzip.decompress(
        first.packed
    )
    assert f"channel_monitor_probes_total{{{pension}}} 1\n".encode() in gzip.decompress(
        newer.packed
    )


async def test_the_kept_gzip_unpacks_to_the_exposition(rig: Rig) -> None:
    """Only the gzip of a build is kept; a client without gzip gets it unpacked in chunks of
    the size the answer announces."""
    await rig.observe("portal", "pension", True)
    built = await rig.metrics.exposition()
    text = gzip.decompress(built.packed)
    assert len(text) == built.size
    assert b"".join(built.unpacked(chunk=1000)) == text
    assert max(len(c) for c in built.unpacked(chunk=1000)) <= 1000
    assert b"# TYPE channel_monitor_probes_total counter" in text


async def test_the_last_observations_are_nothing_for_the_collector_to_walk(rig: Rig) -> None:
    """At 100,000 services, every object kept per service is walked by each full collection;
    what the exposition keeps of a last observation is plain values the collector drops."""
    import gc

    await rig.observe("portal", "pension", True)
    gc.collect()
    (kept,) = rig.metrics.last.values()
    assert not gc.is_tracked(kept)


async def test_a_build_in_progress_holds_no_copy_per_service(tmp_path: Path) -> None:
    """A build gives the loop back between slices for seconds at 100,000 services; whatever it
    holds meanwhile is walked by every full collection. It reads the live tables as it goes:
    the objects alive midway do not grow with the services observed."""
    import gc

    from test_metrics_load import many_services

    plan = load_plan(tmp_path / "channels.toml", many_services("http://127.0.0.1:9/", 2000))
    clock = ReplayClock(datetime(2022, 7, 1, 4, tzinfo=UTC))
    store = Store(tmp_path / "monitor.db")
    pipeline = Pipeline(plan, store, clock, Prober())
    metrics = Metrics(plan, pipeline, clock, store=store, process=False)
    pipeline.listeners = (metrics,)
    try:
        for ref in plan.services:
            observation = Observation(at=clock.now(), serving=False, reason="refused")
            await pipeline.judge(ref, observation)
        metrics.render()  # the plan's ordered services and labels, made once per plan
        gc.collect()
        before = len(gc.get_objects())
        out: list[str] = []
        steps = metrics._write(out, metrics.snapshot(), lambda: True)  # pause at every service
        for _ in range(2000 * 6):  # into the observed families
            next(steps)
        assert any(line.startswith("channel_monitor_probe_success") for line in out[-3:])
        midway = len(gc.get_objects())
        assert midway - before < 500, "no tuple, list or copy per service while a build runs"
        for _ in steps:
            pass
    finally:
        store.close()
