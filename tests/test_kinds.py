"""Coverage said plainly (issue 11, item 5), and observations that cannot tell.

A service is observed by `http`, `browser`, `prometheus`, `push` or not at all (`schedule`).
A `${NAME}` its probe or push needs but the environment lacks leaves it in the plan, judged
`unknown` with the reason `not configured: set NAME`, and every output says so: `check`,
`plan --format json`, `/metrics` and the page's operators' section. An observation that cannot
tell (a query without data, a Prometheus that cannot be asked) makes the verdict `unknown`
and neither opens nor resolves an incident.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from helpers import load_plan, query
from prometheus_client.parser import text_string_to_metric_families
from servers import closed_port

from monitor.cli import main
from monitor.clock import ReplayClock
from monitor.judge import ServiceState, Thresholds, Verdict, judge
from monitor.metrics import Metrics
from monitor.observation import Observation
from monitor.pipeline import Pipeline, make_probers
from monitor.plan import Expectation, Plan
from monitor.store import Store

TZ = ZoneInfo("Asia/Shanghai")
AT = datetime(2022, 7, 6, 10, 0, tzinfo=TZ)

PLAN = """\
[[channels]]
id = "app"
name = "鄂汇办"
kind = "app"
group = "online"

[[channels.services]]
id = "pension"
name = "养老保险"

[channels.services.probe]
url = "${{KINDS_API}}/status"
headers = {{ Authorization = "Bearer ${{KINDS_TOKEN}}" }}
json = ["code == `0`"]

[[channels.services]]
id = "tax"
name = "税费缴纳"

[channels.services.probe]
kind = "prometheus"
url = "http://127.0.0.1:{port}"
query = "sum(payments_total)"
serving_if = "> 0"

[[channels]]
id = "hall"
name = "政务服务大厅"
kind = "offline"
group = "offline"

[[channels.services]]
id = "kiosk"
name = "自助终端"

[channels.services.push]
token = "0123456789abcdef-kiosk"

[[channels.services]]
id = "cards"
name = "社保卡"
"""

APP_PENSION, APP_TAX = ("app", "pension"), ("app", "tax")


@pytest.fixture
def plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Plan:
    monkeypatch.delenv("KINDS_API", raising=False)
    monkeypatch.delenv("KINDS_TOKEN", raising=False)
    return load_plan(tmp_path / "channels.toml", PLAN.format(port=closed_port()))


def test_every_service_has_a_kind(plan: Plan) -> None:
    kinds = {ref.key: ref.service.observed_by for ref in plan.services}
    assert kinds == {
        APP_PENSION: "http",
        APP_TAX: "prometheus",
        ("hall", "kiosk"): "push",
        ("hall", "cards"): "schedule",
    }
    unset = {ref.key: ref.service.unset for ref in plan.services if ref.service.unset}
    assert unset == {APP_PENSION: ("KINDS_API", "KINDS_TOKEN")}


async def test_not_configured_and_failed_queries_are_unknown_everywhere(
    plan: Plan, tmp_path: Path
) -> None:
    db = tmp_path / "monitor.db"
    clock = ReplayClock(AT, speed=0)
    store = Store(db)
    probers = make_probers()
    pipeline = Pipeline(plan, store, clock, probers["http"], probers=probers)
    metrics = Metrics(plan, pipeline, clock, store=store, process=False)
    pipeline.listeners = (metrics,)
    try:
        assert [ref.key for ref in pipeline.probed] == [APP_PENSION, APP_TAX]
        results = await pipeline.probe_all()
        await pipeline.flush()
    finally:
        await pipeline.close()
        store.close()
    seen = {r.ref.key: (r.observation.serving, r.observation.reason, r.verdict) for r in results}
    assert seen == {
        APP_PENSION: (None, "not configured: set KINDS_API, KINDS_TOKEN", Verdict.UNKNOWN),
        APP_TAX: (None, "query failed (connection refused)", Verdict.UNKNOWN),
    }
    assert pipeline.verdict(plan.service(*APP_PENSION)) is Verdict.UNKNOWN
    assert query(db, "SELECT COUNT(*) FROM observations") == [(0,)]  # nothing was seen

    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }
    info = {
        (dict(labels)["channel"], dict(labels)["business"]): dict(labels)
        for name, labels in samples
        if name == "channel_monitor_business_info"
    }
    assert {key: (v["observed_by"], v["configured"]) for key, v in info.items()} == {
        APP_PENSION: ("http", "false"),
        APP_TAX: ("prometheus", "true"),
        ("hall", "kiosk"): ("push", "true"),
        ("hall", "cards"): ("schedule", "true"),
    }
    assert not [name for name, _labels in samples if name == "channel_monitor_probe_success"]
    pension = frozenset({"channel": "app", "business": "pension", "result": "unknown"}.items())
    assert samples[("channel_monitor_probes_total", pension)] == 1
    text = metrics.render().decode()
    assert "KINDS_" not in text and "127.0.0.1" not in text


def test_an_observation_that_cannot_tell_neither_opens_nor_resolves() -> None:
    thresholds = Thresholds(failure=2, success=2, stale_after=timedelta(minutes=3))
    expected_down = Expectation("down", 0, "freeze")
    at = AT

    def step(state: ServiceState, serving: bool | None) -> tuple[ServiceState, Verdict]:
        nonlocal at
        at += timedelta(minutes=1)
        reason = {True: "query value 3 > 0", False: "query value 0 <= 0"}.get(
            serving, "query returned no data"
        )
        judgement = judge(state, expected_down, False, Observation(at, serving, reason), thresholds)
        assert judgement.events == () or serving is not None
        return judgement.state, judgement.verdict

    state, verdict = step(ServiceState(), True)
    state, verdict = step(state, None)  # between two mismatches: the streak holds
    assert verdict is Verdict.UNKNOWN and state.streak == 1
    state, verdict = step(state, True)
    assert verdict is Verdict.UNEXPECTED_UP and state.incident is not None
    state, verdict = step(state, False)
    state, verdict = step(state, None)  # does not count towards resolving
    assert verdict is Verdict.UNKNOWN and state.incident is not None and state.recovering == 1
    assert state.last_reason == "query returned no data"
    state, verdict = step(state, False)
    assert verdict is Verdict.OK and state.incident is None


def test_check_plan_and_page_say_what_is_not_observed(
    plan: Plan, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(tmp_path / "channels.toml")
    # services that could not be observed fail `check` as a gate; --allow-unknown passes them
    assert main(["check", "--config", config, "--format", "json"]) == 1
    capsys.readouterr()
    assert main(["check", "--config", config, "--format", "json", "--allow-unknown"]) == 0
    data = json.loads(capsys.readouterr().out)
    entries = {(s["channel"], s["service"]): s for s in data["services"]}
    pension = entries[APP_PENSION]
    assert pension["observed"]["serving"] is None
    assert pension["observed"]["reason"] == "not configured: set KINDS_API, KINDS_TOKEN"
    assert (pension["verdict"], pension["observed_by"]) == ("unknown", "http")
    assert pension["not_configured"] == ["KINDS_API", "KINDS_TOKEN"]
    assert entries[APP_TAX]["observed"]["reason"] == "query failed (connection refused)"
    assert entries[("hall", "kiosk")]["observed"] is None  # pushes arrive only at `run`
    assert entries[("hall", "cards")]["observed_by"] == "schedule"

    assert main(["check", "--config", config, "--allow-unknown"]) == 0
    table = capsys.readouterr().out
    assert "unknown" in table and "not configured: set KINDS_API, KINDS_TOKEN" in table

    site = tmp_path / "site"
    assert main(["render", "--config", config, "--site", str(site), "--at", AT.isoformat()]) == 0
    capsys.readouterr()
    for page, words in (
        (
            "index.html",
            ("需设置环境变量 KINDS_API、KINDS_TOKEN", "政务服务大厅：社保卡（未接入监测"),
        ),
        ("en/index.html", ("set the environment variables KINDS_API, KINDS_TOKEN", "not observed")),
    ):
        html = (site / page).read_text("utf-8")
        section = html[html.index('id="unobserved"') :]
        section = section[: section.index("</ul>")]
        for word in words:
            assert word in section, (page, word, section)
        assert "自助终端" not in section and "Bearer" not in html
