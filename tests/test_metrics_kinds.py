"""Per-service series only where they mean something: `probe_http_status_code` for the kinds
whose observations have an HTTP status (http, browser), the duration histogram only for the
kinds that time what they observe (not push, whose zeros dragged the p50/p95 panels down)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from helpers import load_plan
from prometheus_client.parser import text_string_to_metric_families

from monitor.clock import ReplayClock
from monitor.kinds import KINDS
from monitor.kinds.http import Prober
from monitor.metrics import Metrics
from monitor.observation import Observation
from monitor.pipeline import Pipeline
from monitor.store import Store

TZ = ZoneInfo("Asia/Shanghai")
PLAN = """
[monitor]
timezone = "Asia/Shanghai"
interval = "30s"

[[channels]]
id = "portal"
name = "政务服务网"
kind = "web"
group = "online"

[[channels.services]]
id = "web"
name = "网页"
probe = { url = "http://portal.example.invalid/" }

[[channels.services]]
id = "page"
name = "页面"
probe = { kind = "browser", url = "http://portal.example.invalid/page" }

[[channels.services]]
id = "queue"
name = "队列"
[channels.services.probe]
kind = "prometheus"
url = "http://prometheus.example.invalid"
query = "up"
serving_if = "> 0"

[[channels]]
id = "kiosks"
name = "自助终端"
kind = "offline"
group = "offline"

[[channels.services]]
id = "kiosk"
name = "终端"
push = { token = "0123456789abcdef0123" }
"""

STATUS = "channel_monitor_probe_http_status_code"
DURATION = "channel_monitor_probe_duration_seconds"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Metrics, Pipeline]]:
    plan = load_plan(tmp_path / "channels.toml", PLAN)
    store = Store(tmp_path / "monitor.db")
    pipeline = Pipeline(plan, store, ReplayClock(datetime(2022, 7, 6, 10, tzinfo=TZ)), Prober())
    metrics = Metrics(plan, pipeline, pipeline.clock, store=store, process=False)
    pipeline.listeners = (metrics,)
    yield metrics, pipeline
    store.close()


def series(metrics: Metrics, name: str) -> set[str]:
    """The services (`business`) that have a sample of the family `name`."""
    found = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        if family.name == name:
            found.update(sample.labels["business"] for sample in family.samples)
    return found


async def test_status_codes_and_durations_only_for_kinds_that_have_them(
    rig: tuple[Metrics, Pipeline],
) -> None:
    metrics, pipeline = rig
    plan = pipeline.plan
    at = pipeline.clock.now()
    for business, code, seconds in (
        ("web", 200, 0.2),
        ("page", 200, 1.5),
        ("queue", None, 0.05),
    ):
        seen = Observation(
            at=at, serving=True, reason="HTTP 200", status_code=code, duration_seconds=seconds
        )
        await pipeline.judge(plan.service("portal", business), seen)
    for _ in range(3):  # a push has no duration of ours: 0.0 is what it carries
        seen = Observation(at=at, serving=True, reason="pushed: ok", duration_seconds=0.0)
        await pipeline.judge(plan.service("kiosks", "kiosk"), seen)

    assert series(metrics, STATUS) == {"web", "page"}
    assert series(metrics, DURATION) == {"web", "page", "queue"}
    # every observed service still counts its observations
    assert series(metrics, "channel_monitor_probes") == {"web", "page", "queue", "kiosk"}


def test_every_kind_declares_what_it_measures() -> None:
    declared = {name: (kind.has_status_code, kind.has_duration) for name, kind in KINDS.items()}
    assert declared == {
        "http": (True, True),
        "browser": (True, True),
        "prometheus": (False, True),
        "push": (False, False),
        "dns": (False, True),
    }
