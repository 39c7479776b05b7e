"""Prometheus queries as observations (issue 11, item 4), against a real `prometheus`.

- the query prober against a real Prometheus that scrapes a real exporter (prometheus_client's
  own HTTP server): values that meet `serving_if` and values that do not, a scalar, no data
  under each `no_data`, more than one series, a range vector, bad PromQL, the instant asked;
- the prober against what is not a Prometheus: nothing listening, a server that never answers
  (bounded by the timeout), an HTML answer;
- k of n: two `channel-monitor run --no-alerts` processes as two locations probing the same
  channel, scraped by one Prometheus, and `channel-monitor check` as the central judge with
  `count(channel_monitor_probe_success{...} == 1)` and `serving_if = ">= 2"`; when one location
  stops, the central verdict turns.

Binaries come from the Debian package `prometheus`: missing, the tests fail in CI (CI=true) and
skip elsewhere. Everything binds 127.0.0.1; every wait polls with a deadline; every process and
server is ended in teardown.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from helpers import ChannelServer, MonitorRun, python_m, require_binary, wait_for
from prometheus_client import CollectorRegistry, Counter, start_http_server
from servers import RawServer, aiohttp_server, closed_port, never_answer

from monitor import reasons
from monitor.kinds.prometheus import (
    PrometheusProbe,
    QueryProber,
    _parse_comparison,
    format_value,
    judged,
)
from monitor.observation import Observation
from monitor.reasons import PHRASES as REASON_PHRASES

#: The correctness bound on a query that ends by its timeout.
SLACK = 2.0


def spec(url: str, query: str, serving_if: str = "> 0", **fields: object) -> PrometheusProbe:
    return PrometheusProbe.model_validate(
        {"kind": "prometheus", "url": url, "query": query, "serving_if": serving_if, **fields}
    )


def documented(observation: Observation) -> None:
    assert any(observation.reason.startswith(p) for p in REASON_PHRASES), observation


def get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return None


@contextmanager
def prometheus(tmp_path: Path, targets: list[str]) -> Iterator[str]:
    """A real Prometheus scraping `targets` every second; yields its base URL once ready."""
    binary = require_binary("prometheus", package="prometheus")
    port = closed_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "locations",
                        "scrape_timeout": "1s",
                        "static_configs": [{"targets": targets}],
                    }
                ],
            }
        )
    )
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: proc.poll() is None and get_json(f"{base}/api/v1/status/buildinfo"),
            timeout=30,
            interval=0.2,
            what="prometheus ready (its log: prometheus.log beside the test's files)",
        )
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def series_count(base: str, expr: str) -> int:
    answer = get_json(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    return len(answer["data"]["result"]) if answer and answer.get("status") == "success" else 0


@contextmanager
def exporter() -> Iterator[tuple[CollectorRegistry, str]]:
    """prometheus_client's own exporter on a free port of 127.0.0.1: (registry, target)."""
    registry = CollectorRegistry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield registry, f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- against a real Prometheus scraping a real exporter -------------------------------------


async def test_queries_against_real_prometheus(tmp_path: Path) -> None:
    with exporter() as (registry, target), prometheus(tmp_path, [target]) as base:
        payments = Counter(
            "payments", "Payments taken.", ["channel", "business"], registry=registry
        )
        payments.labels("chushuitong", "pension").inc(3)
        payments.labels("chushuitong", "medical").inc(5)
        wait_for(lambda: series_count(base, "payments_total") == 2, timeout=30, interval=0.2)
        pension = 'sum(payments_total{channel="chushuitong",business="pension"})'
        now = datetime.now(UTC)
        second = timedelta(seconds=5)
        async with QueryProber() as prober:

            async def ask(query: str, serving_if: str = "> 0", **fields: str) -> Observation:
                observation = await prober.probe(
                    spec(base, query, serving_if, **fields), second, now
                )
                documented(observation)
                assert observation.at == now
                return observation

            seen = await ask(pension)
            assert (seen.serving, seen.reason) == (True, "query value 3 > 0")
            seen = await ask(pension, "> 5")
            assert (seen.serving, seen.reason) == (False, "query value 3 <= 5")
            seen = await ask(pension, "!= 3")
            assert (seen.serving, seen.reason) == (False, "query value 3 == 3")
            seen = await ask(pension, "== 3")
            assert (seen.serving, seen.reason) == (True, "query value 3 == 3")
            seen = await ask("sum(payments_total) / 16", "< 1")
            assert (seen.serving, seen.reason) == (True, "query value 0.5 < 1")
            seen = await ask("1 + 1", ">= 2")  # a scalar
            assert (seen.serving, seen.reason) == (True, "query value 2 >= 2")
            seen = await ask('sum(payments_total{business="unknown"})')
            assert (seen.serving, seen.reason) == (None, "query returned no data")
            seen = await ask('sum(payments_total{business="unknown"})', no_data="down")
            assert (seen.serving, seen.reason) == (False, "query returned no data")
            seen = await ask('sum(payments_total{business="unknown"})', no_data="up")
            assert (seen.serving, seen.reason) == (True, "query returned no data")
            seen = await ask("payments_total")  # two series: which one would be compared?
            assert (seen.serving, seen.reason) == (None, "query failed (2 series, expected one)")
            seen = await ask("payments_total[1m]")
            assert (seen.serving, seen.reason) == (None, "query failed (matrix result)")
            seen = await ask("sum(payments_total")
            assert (seen.serving, seen.reason) == (None, "query failed (bad_data)")
            # the query is asked at the observation's instant (the demo's replay relies on it)
            earlier = await prober.probe(spec(base, pension), second, now - timedelta(hours=1))
            assert (earlier.serving, earlier.reason) == (None, "query returned no data")


# --- against what is not a Prometheus -------------------------------------------------------


async def test_nothing_listening() -> None:
    async with QueryProber() as prober:
        url = f"http://127.0.0.1:{closed_port()}"
        seen = await prober.probe(spec(url, "up"), timedelta(seconds=5))
    assert (seen.serving, seen.reason) == (None, "query failed (connection refused)")


async def test_a_server_that_never_answers_is_bounded_by_the_timeout() -> None:
    async with RawServer(never_answer) as server, QueryProber() as prober:
        started = time.monotonic()
        seen = await prober.probe(spec(server.url(""), "up"), timedelta(seconds=1))
        elapsed = time.monotonic() - started
    assert (seen.serving, seen.reason) == (None, "query failed (timeout after 1s)")
    assert elapsed < 1 + SLACK


async def test_an_answer_that_is_not_prometheus() -> None:
    async def page(_request: web.Request) -> web.Response:
        return web.Response(status=404, text="<html>not here</html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    async with aiohttp_server(app) as base, QueryProber() as prober:
        seen = await prober.probe(spec(base, "up"), timedelta(seconds=5))
    assert (seen.serving, seen.reason) == (None, "query failed (HTTP 404, not a Prometheus answer)")


async def test_headers_are_sent_and_a_refusal_is_a_failed_query() -> None:
    """A Prometheus behind a proxy that wants a token: the probe's headers go with the query,
    and a refusal says only its status, never the token or the proxy's words."""
    seen_headers: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        seen_headers.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != "Bearer s3cret-token":
            return web.Response(status=401, text="token s3cret? no")
        form = await request.post()
        value = "1" if form.get("query") == "up" else "0"
        return web.json_response(
            {"status": "success", "data": {"resultType": "scalar", "result": [0, value]}}
        )

    app = web.Application()
    app.router.add_post("/prometheus/api/v1/query", proxy)
    async with aiohttp_server(app) as base, QueryProber() as prober:
        url = f"{base}/prometheus/"
        good = spec(url, "up", "== 1", headers={"Authorization": "Bearer s3cret-token"})
        seen = await prober.probe(good, timedelta(seconds=5))
        assert (seen.serving, seen.reason) == (True, "query value 1 == 1")
        seen = await prober.probe(spec(url, "up", "== 1"), timedelta(seconds=5))
    assert (seen.serving, seen.reason) == (None, "query failed (HTTP 401, not a Prometheus answer)")
    assert seen_headers == ["Bearer s3cret-token", ""]


# --- k of n: two locations, one Prometheus, a central judge ---------------------------------


PENSION_ON_THE_PORTAL = """\
[[channels]]
id = "portal"
name = "湖北政务服务网"
kind = "web"
group = "online"

[[channels.services]]
id = "pension"
name = "养老保险"
"""

LOCATION_PLAN = (
    """\
[monitor]
interval = "1s"
timeout = "1s"
failure_threshold = 1
success_threshold = 1

[[alerts]]
type = "webhook"
url = "${{LOCATION_HOOK_URL}}"

"""
    + PENSION_ON_THE_PORTAL
    + """
[channels.services.probe]
url = "{target}"
"""
)

CENTRAL_PLAN = (
    PENSION_ON_THE_PORTAL
    + """
[channels.services.probe]
kind = "prometheus"
url = "{prometheus}"
query = 'count(channel_monitor_probe_success{{channel="portal",business="pension"}} == 1)'
serving_if = ">= 2"
"""
)


def central(config: Path) -> tuple[int, dict]:
    result = python_m("check", "--config", str(config), "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    (entry,) = json.loads(result.stdout)["services"]
    return result.returncode, entry


def test_two_locations_agree_through_prometheus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOCATION_HOOK_URL", raising=False)

    with ChannelServer() as channel:
        location = tmp_path / "location.toml"
        location.write_text(LOCATION_PLAN.format(target=channel.url("/")), encoding="utf-8")
        # the sinks' secrets are not in a location's environment: without --no-alerts it
        # cannot start, with it the sinks are left out
        refused = python_m("run", "--config", str(location), "--listen", "127.0.0.1:0")
        assert refused.returncode == 2 and "LOCATION_HOOK_URL" in refused.stderr
        a = MonitorRun(location, tmp_path / "a.db", tmp_path / "a.log", args=("--no-alerts",))
        b = MonitorRun(location, tmp_path / "b.db", tmp_path / "b.log", args=("--no-alerts",))
        try:
            a.wait_ticking()
            b.wait_ticking()
            assert "alerts:" not in a.output()
            targets = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
            with prometheus(tmp_path, targets) as base:
                judge = tmp_path / "central.toml"
                judge.write_text(CENTRAL_PLAN.format(prometheus=base), encoding="utf-8")
                code, entry = wait_for(
                    lambda: (r := central(judge))[1]["observed"]["serving"] and r,
                    timeout=30,
                    interval=0.5,
                    what="both locations seen serving through Prometheus",
                )
                assert entry["observed"]["reason"] == "query value 2 >= 2"
                assert (code, entry["verdict"], entry["observed_by"]) == (0, "ok", "prometheus")
                assert b.stop() == 0  # one location goes away: its series go stale
                code, entry = wait_for(
                    lambda: (r := central(judge))[1]["observed"]["serving"] is False and r,
                    timeout=30,
                    interval=0.5,
                    what="one location left",
                )
                assert entry["observed"]["reason"] == "query value 1 < 2"
                assert (code, entry["verdict"]) == (1, "unexpected_down")
        finally:
            for run in (a, b):
                if run.poll() is None:
                    run.kill()
                    run.wait()


@pytest.mark.parametrize("op", [">", ">=", "<", "<=", "==", "!="])
@pytest.mark.parametrize("value", [-1.0, 0.0, 0.5, 1.0])
def test_the_reason_is_true_as_written(op: str, value: float) -> None:
    """Met or not, the reason states how the value compares, and that statement holds."""
    probe = spec("http://prometheus.internal:9090", "up", f"{op} 0.5")
    serving, reason = judged(probe, value)
    assert serving is probe.serving_if.holds(value)
    stated = reason.removeprefix(f"query value {format_value(value)} ")
    assert _parse_comparison(stated).holds(value), reason
    assert (stated == str(probe.serving_if)) is serving
    assert reasons.lookup(reason) is not None
