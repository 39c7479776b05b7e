"""The metrics, the alert rules and the dashboards against the real Prometheus tools.

- `promtool check rules` and `promtool test rules` on grafana/prometheus/;
- the dashboards and provisioning files are well formed and use the variables they declare;
- end to end: a real `channel-monitor run` (subprocess; its /metrics passes `promtool check
  metrics` silently) probes local http and https servers (a test CA trusted through
  SSL_CERT_FILE) with a plan whose freeze covers now, a real
  `prometheus` scrapes it every second and loads rules.yml, and then EVERY PromQL expression of
  every dashboard panel, every template variable and every rule is evaluated through the HTTP
  API. Dashboard expressions must parse and return data (so a renamed metric fails); rule
  expressions must parse and every series they read must exist, and the alerts this set-up
  provokes must become active with their names rendered: ChannelUpWhileExpectedDown (a
  service serving during its planned outage), ChannelDownWhileExpectedUp, ChannelProbeStale,
  ChannelMonitorDown (a second target that refuses) and ChannelTLSCertExpiringSoon (a
  certificate 7 days from its end). The production rules are loaded unchanged: their `for:`
  durations are minutes, so the test waits for the alerts to be active (pending counts, as in
  Prometheus' own ALERTS series) rather than firing. ChannelExpectationMissing cannot be
  provoked by a correct monitor, nor ChannelMonitorPlanReloadFailed without an edit of the
  plan (tests/test_reload.py sets its series); promtool's unit tests pin both instead.

The Prometheus binaries come from the Debian package `prometheus`: missing, they fail the tests
in CI (CI=true) and skip them elsewhere. Everything binds 127.0.0.1; every wait polls with a
deadline; every process is ended in teardown.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import aiohttp
import yaml
from aiohttp import web
from helpers import MAINTENANCE_PATTERN, MAINTENANCE_TEXT, ROOT, SERVING_TEXT, require_binary
from servers import aiohttp_server, closed_port, make_ca, make_server_cert

GRAFANA = ROOT / "grafana"
RULES = GRAFANA / "prometheus" / "rules.yml"
RULES_TEST = GRAFANA / "prometheus" / "rules.test.yml"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PROVISIONING = GRAFANA / "provisioning"

#: What the dashboard variables become in the test: every channel and service, fixed ranges.
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1m",
    "${channel}": ".*",
    "$channel": ".*",
    "${business}": ".*",
    "$business": ".*",
}
ALERTS = (
    "ChannelUpWhileExpectedDown",
    "ChannelDownWhileExpectedUp",
    "ChannelExpectationMissing",
    "ChannelProbeStale",
    "ChannelMonitorDown",
    "ChannelTLSCertExpiringSoon",
    "ChannelMonitorPlanReloadFailed",
)
#: The alerts about the monitor itself, not about a channel.
MONITOR_ALERTS = {"ChannelMonitorDown", "ChannelMonitorPlanReloadFailed"}
CHANNEL_ALERTS = set(ALERTS) - MONITOR_ALERTS - {"ChannelExpectationMissing"}
T = TypeVar("T")


# --- the files ---------------------------------------------------------------------------


def load_rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def walk_panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, where, PromQL) for every panel target and template variable."""
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in walk_panels(board["panels"]):
            for target in panel.get("targets", []):
                out.append((path.name, f"{panel['title']} / {target['refId']}", target["expr"]))
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                out.append((path.name, f"variable {variable['name']}", variable["definition"]))
    return out


def substitute(expr: str) -> str:
    """The dashboard's PromQL as Grafana would send it, with the test's variable values;
    `label_values(M, L)` (a Grafana function) becomes `count by (L) (M)`."""
    for name in sorted(SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(name, SUBSTITUTIONS[name])
    match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", expr.strip(), re.S)
    if match:
        expr = f"count by ({match.group(2)}) ({match.group(1)})"
    assert "$" not in expr, f"an unsubstituted variable is left in {expr}"
    return expr


def selectors(expr: str) -> set[str]:
    """The metric names an expression reads."""
    names = set(re.findall(r"\bchannel_monitor_[a-z_]+", expr))
    return names | {"up"} if re.search(r"\bup\{", expr) else names


def test_promtool_check_rules() -> None:
    promtool = require_binary("promtool", package="prometheus")
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    promtool = require_binary("promtool", package="prometheus")
    result = subprocess.run(
        [promtool, "test", "rules", str(RULES_TEST)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULES_TEST.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_are_the_ones_asked_for() -> None:
    rules = {rule["alert"]: rule for rule in load_rules()}
    assert set(rules) == set(ALERTS)
    assert rules["ChannelUpWhileExpectedDown"]["labels"]["severity"] == "critical"
    assert rules["ChannelDownWhileExpectedUp"]["labels"]["severity"] == "warning"
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    plan_group = next(g for g in doc["groups"] if g["name"] == "channel-monitor-plan")
    assert {r["alert"] for r in plan_group["rules"]} >= {
        "ChannelUpWhileExpectedDown",
        "ChannelDownWhileExpectedUp",
    }
    for name, rule in rules.items():
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "summary_en", "description", "description_en"}
        assert re.search(r"[\u4e00-\u9fff]", annotations["summary"]), name
        if name in CHANNEL_ALERTS:
            for key in ("summary", "description"):
                assert "$labels.channel_name }}" in annotations[key], (name, key)
                assert "$labels.business_name }}" in annotations[key], (name, key)
                assert "$labels.channel_name_en" in annotations[key + "_en"], (name, key)
                assert "$labels.business_name_en" in annotations[key + "_en"], (name, key)
        assert "service=" not in rule["expr"].replace(" ", "")


def test_dashboards_are_well_formed() -> None:
    assert len(DASHBOARDS) >= 2
    uids = set()
    datasource_uid = yaml.safe_load(
        (PROVISIONING / "datasources" / "channel-monitor.yml").read_text(encoding="utf-8")
    )["datasources"][0]["uid"]
    for path in DASHBOARDS:
        board = json.loads(path.read_text(encoding="utf-8"))
        assert board["uid"] not in uids
        uids.add(board["uid"])
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert variables["datasource"]["current"]["value"] == datasource_uid
        for name in ("channel", "business"):
            assert variables[name]["type"] == "query"
            assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
            assert variables[name]["definition"].startswith("label_values(")
        ids = set()
        for panel in walk_panels(board["panels"]):
            assert panel["id"] not in ids, (path.name, panel["title"])
            ids.add(panel["id"])
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, (path.name, panel["title"])
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)) and refs, (path.name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
                if panel["type"] != "row" and "channel_monitor_" in target["expr"]:
                    assert (
                        '$channel"' in target["expr"]
                        or "scheduler" in target["expr"]
                        or (
                            "probes_in_flight" in target["expr"]
                            or "probes_lent" in target["expr"]
                            or "store_write_errors" in target["expr"]
                        )
                    ), (path.name, panel["title"])
    overview = json.loads((GRAFANA / "dashboards" / "channel-monitor-overview.json").read_text())
    types = [p["type"] for p in walk_panels(overview["panels"])]
    assert "state-timeline" in types and "table" in types


def test_provisioning_files() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "channel-monitor.yml").read_text())
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["uid"]
    dashboards = yaml.safe_load((PROVISIONING / "dashboards" / "channel-monitor.yml").read_text())
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


# --- end to end ----------------------------------------------------------------------------


@contextmanager
def silent_port() -> Iterator[tuple[socket.socket, int]]:
    """A port that accepts connections into the kernel's backlog and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock, sock.getsockname()[1]
    finally:
        sock.close()


async def poll(
    check: Callable[[], Awaitable[T]], timeout: float, what: Callable[[], str] | str
) -> T:
    """Await `check` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s: {detail}")
        await asyncio.sleep(0.2)


def channel_app() -> web.Application:
    async def serving(_request: web.Request) -> web.Response:
        return web.Response(text=SERVING_TEXT, content_type="text/html")

    async def maintenance(_request: web.Request) -> web.Response:
        return web.Response(text=MAINTENANCE_TEXT, content_type="text/html")

    async def error(_request: web.Request) -> web.Response:
        return web.Response(status=503, text="unavailable")

    app = web.Application()
    app.router.add_get("/serving", serving)
    app.router.add_get("/maintenance", maintenance)
    app.router.add_get("/error", error)
    return app


def plan_text(http: str, https: str, silent: int, now: datetime) -> str:
    start = (now - timedelta(hours=1)).replace(microsecond=0).isoformat()
    end = (now + timedelta(days=2)).replace(microsecond=0).isoformat()
    return f"""
[monitor]
timezone = "Asia/Shanghai"
interval = "1s"
timeout = "2s"
grace = "1m"

[periods.freeze]
start = {start}
end = {end}

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
probe = {{ url = "{http}/serving", body_not_matches = "{MAINTENANCE_PATTERN}" }}

[[channels.services]]
id = "unemployment"
name = "失业保险"
name_en = "Unemployment insurance"
expect = [{{ during = "freeze", state = "down" }}]
probe = {{ url = "{http}/maintenance", body_not_matches = "{MAINTENANCE_PATTERN}" }}

[[channels.services]]
id = "medical"
name = "医疗保险"
name_en = "Medical insurance"
probe = {{ url = "{http}/error" }}

[[channels]]
id = "chushuitong"
name = "楚税通APP"
name_en = "Chushuitong app"
kind = "app"
group = "online"

[[channels.services]]
id = "cards"
name = "社保卡"
name_en = "Social security card"
probe = {{ url = "{https}/serving" }}

[[channels]]
id = "hall"
name = "武汉市民之家"
name_en = "Wuhan Citizens' Home"
kind = "offline"
group = "offline"

[[channels.services]]
id = "queue"
name = "取号"
name_en = "Queue tickets"
probe = {{ url = "http://127.0.0.1:{silent}/", timeout = "5m" }}
"""


class Prometheus:
    """The HTTP API of the Prometheus under test."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def get(self, path: str, **params: str) -> tuple[int, dict]:
        async with self.session.get(self.base + path, params=params) as response:
            return response.status, await response.json(content_type=None)

    async def query(self, expr: str) -> tuple[int, dict]:
        return await self.get("/api/v1/query", query=expr)

    async def result(self, expr: str) -> list[dict]:
        status, body = await self.query(expr)
        assert status == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]

    async def alerts(self) -> list[dict]:
        status, body = await self.get("/api/v1/alerts")
        return body["data"]["alerts"] if status == 200 else []


@asynccontextmanager
async def process(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run `argv` (stderr to `log`) and end it in teardown: SIGTERM, then SIGKILL."""
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def prometheus_command(binary: str, home: Path, port: int, targets: list[str]) -> list[str]:
    """The command line of a Prometheus on 127.0.0.1:`port` that scrapes `targets` as the job
    "channel-monitor" every second and evaluates rules.yml every second; files in `home`."""
    config = home / "prometheus.yml"
    scrape = {
        "job_name": "channel-monitor",
        "scrape_timeout": "1s",
        "static_configs": [{"targets": targets}],
    }
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [scrape],
            }
        )
    )
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={home / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]


def tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def labels_of(item: dict) -> dict[str, str]:
    return item.get("labels") or item.get("metric") or {}


async def test_dashboards_and_rules_against_real_prometheus(tmp_path: Path) -> None:
    prometheus_bin = require_binary("prometheus", package="prometheus")
    started = time.monotonic()
    now = datetime.now(UTC)
    ca = make_ca(tmp_path)
    expiring = make_server_cert(tmp_path, issuer=ca, not_after=now + timedelta(days=7))
    dead_port = closed_port()
    monitor_log, prometheus_log = tmp_path / "monitor.log", tmp_path / "prometheus.log"

    def logs() -> str:
        return (
            f"\n--- monitor log ---\n{tail(monitor_log)}"
            f"\n--- prometheus log ---\n{tail(prometheus_log)}"
        )

    with silent_port() as (silent_sock, silent):
        async with (
            aiohttp_server(channel_app()) as http,
            aiohttp_server(channel_app(), expiring.server_context()) as https,
        ):
            config = tmp_path / "channels.toml"
            config.write_text(plan_text(http, https, silent, now), encoding="utf-8")
            monitor_argv = [
                sys.executable, "-m", "monitor", "run", "--config", str(config),
                "--db", str(tmp_path / "monitor.db"), "--listen", "127.0.0.1:0",
            ]  # fmt: skip
            async with process(
                monitor_argv, monitor_log, {"SSL_CERT_FILE": str(ca.cert_path)}
            ) as monitor:
                assert monitor.stdout is not None
                try:
                    line = (await asyncio.wait_for(monitor.stdout.readline(), 60)).decode()
                except TimeoutError:
                    raise AssertionError("the monitor did not start" + logs()) from None
                match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
                assert match, line + logs()
                monitor_target = f"127.0.0.1:{match.group(1)}"

                prom_port = closed_port()
                targets = [monitor_target, f"127.0.0.1:{dead_port}"]
                prometheus_argv = prometheus_command(prometheus_bin, tmp_path, prom_port, targets)
                async with (
                    process(prometheus_argv, prometheus_log),
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
                ):
                    api = Prometheus(session, f"http://127.0.0.1:{prom_port}")
                    try:
                        await run_checks(api, logs, started, dead_port, monitor_target)
                    finally:
                        silent_sock.close()  # let the hanging probe fail now, not in 5 minutes


async def run_checks(
    api: Prometheus, logs: Callable[[], str], started: float, dead_port: int, monitor: str
) -> None:
    async def ready() -> bool:
        try:
            async with api.session.get(api.base + "/-/ready") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    await poll(ready, 60, lambda: "prometheus is not ready" + logs())
    ready_at = time.monotonic()

    # -- a real scrape of the running monitor passes `promtool check metrics` silently ------
    async with api.session.get(f"http://{monitor}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        scrape = await response.read()
    checked = subprocess.run(
        [require_binary("promtool", package="prometheus"), "check", "metrics"],
        input=scrape,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, b"", b""), checked

    # -- the alerts this set-up provokes become active, with their names rendered -------------
    wanted = {
        "ChannelUpWhileExpectedDown": ("portal", "pension"),
        "ChannelDownWhileExpectedUp": ("portal", "medical"),
        "ChannelTLSCertExpiringSoon": ("chushuitong", "cards"),
        "ChannelProbeStale": ("hall", "queue"),
    }

    seen: list[dict] = []

    async def active() -> dict[str, dict]:
        seen[:] = await api.alerts()
        found: dict[str, dict] = {}
        for alert in seen:
            labels = alert["labels"]
            name = labels["alertname"]
            if wanted.get(name) == (labels.get("channel"), labels.get("business")) or (
                name == "ChannelMonitorDown" and labels.get("instance") == f"127.0.0.1:{dead_port}"
            ):
                found[name] = alert
        return found if len(found) == len(wanted) + 1 else {}

    def missing() -> str:
        names = sorted({a["labels"]["alertname"] for a in seen})
        return f"some alerts never became active; active: {names}" + logs()

    alerts = await poll(active, 90, missing)
    alerts_at = time.monotonic()
    for alert in alerts.values():
        assert alert["state"] in ("pending", "firing"), alert
    up = alerts["ChannelUpWhileExpectedDown"]
    assert up["labels"]["severity"] == "critical"
    assert up["labels"]["channel_name"] == "湖北政务服务网"
    assert up["annotations"]["summary"] == "应停未停：湖北政务服务网 · 养老保险"
    assert up["annotations"]["summary_en"] == (
        "Up while expected down: Hubei Government Services Portal / Pension insurance"
    )
    assert "Pension insurance" in up["annotations"]["description_en"]
    assert alerts["ChannelDownWhileExpectedUp"]["labels"]["severity"] == "warning"
    tls = alerts["ChannelTLSCertExpiringSoon"]
    assert "楚税通APP" in tls["annotations"]["summary"]
    assert re.search(r"expires in [67]d ", tls["annotations"]["description_en"]), tls
    # the same through the ALERTS series the rules write
    series = await api.result('ALERTS{alertname="ChannelUpWhileExpectedDown"}')
    assert {s["metric"]["business"] for s in series} == {"pension"}

    # -- every rule: parses, and every series it reads exists ---------------------------------
    for rule in load_rules():
        expr = rule["expr"]
        status, body = await api.query(expr)
        assert status == 200 and body["status"] == "success", (rule["alert"], body)
        for name in selectors(expr):
            present = await api.result(f"count({name})")
            assert present, f"{rule['alert']} reads {name}, which Prometheus does not have"
        if rule["alert"] in alerts:
            assert body["data"]["result"], f"{rule['alert']} returned nothing"

    # -- every dashboard query: parses and returns data ---------------------------------------
    queries = dashboard_queries()
    assert len(queries) >= 20
    for board, where, raw in queries:
        expr = substitute(raw)
        status, body = await api.query(expr)
        assert status == 200 and body["status"] == "success", (board, where, expr, body)

        async def has_data(expr: str = expr) -> list[dict]:
            return await api.result(expr)

        await poll(has_data, 30, f"{board}: {where} returned no data: {expr}")

    # -- and the values mean what the panels say ----------------------------------------------
    def by_business(result: list[dict]) -> dict[str, float]:
        return {labels_of(r)["business"]: float(r["value"][1]) for r in result}

    assert by_business(await api.result("channel_monitor_expected_up")) == {
        "pension": 0,
        "unemployment": 0,
        "medical": 1,
        "cards": 1,
        "queue": 1,
    }
    state = by_business(
        await api.result(
            "2 * channel_monitor_expected_up + on (channel, business) channel_monitor_probe_success"
        )
    )
    assert state == {"pension": 1, "unemployment": 0, "medical": 2, "cards": 3}
    left = by_business(
        await api.result("channel_monitor_tls_cert_expiry_timestamp_seconds - time()")
    )
    assert 6 * 86400 < left["cards"] <= 7 * 86400
    mismatches = await api.result("channel_monitor_mismatch == 1")
    assert {(labels_of(r)["business"], labels_of(r)["direction"]) for r in mismatches} == {
        ("pension", "unexpected_up"),
        ("medical", "unexpected_down"),
    }
    print(
        f"\nprometheus ready after {ready_at - started:.1f} s, alerts active after "
        f"{alerts_at - started:.1f} s, {len(queries)} dashboard queries and "
        f"{len(load_rules())} rules checked after {time.monotonic() - started:.1f} s"
    )


async def test_a_demo_scraped_by_prometheus_trips_no_stale_alert(tmp_path: Path) -> None:
    """The demo replays 2022: its /metrics must not make the shipped rules call all of its
    services stale (time() minus a 2022 instant is always more than 3 intervals)."""
    prometheus_bin = require_binary("prometheus", package="prometheus")
    demo_port, prom_port = closed_port(), closed_port()
    demo_log, prometheus_log = tmp_path / "demo.log", tmp_path / "prometheus.log"
    demo_argv = [
        sys.executable, "-m", "monitor", "demo", "--linger", "--site", str(tmp_path / "site"),
        "--listen", f"127.0.0.1:{demo_port}",
    ]  # fmt: skip
    targets = [f"127.0.0.1:{demo_port}"]
    prometheus_argv = prometheus_command(prometheus_bin, tmp_path, prom_port, targets)
    stale = next(r["expr"] for r in load_rules() if r.get("alert") == "ChannelProbeStale")

    async def drain(stream: asyncio.StreamReader) -> None:  # the demo prints a lot
        while await stream.readline():
            pass

    async with (
        process(demo_argv, demo_log) as demo,
        process(prometheus_argv, prometheus_log),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
    ):
        assert demo.stdout is not None
        reader = asyncio.create_task(drain(demo.stdout))
        api = Prometheus(session, f"http://127.0.0.1:{prom_port}")
        logs = lambda: f"\n{tail(demo_log)}\n{tail(prometheus_log)}"  # noqa: E731

        async def scraped() -> list[dict]:
            try:
                return await api.result("channel_monitor_probe_success")
            except (aiohttp.ClientError, AssertionError, ValueError):  # not ready: no JSON yet
                return []

        found = await poll(scraped, 90, lambda: "no probe results scraped" + logs())
        assert len(found) > 10
        for _ in range(10):  # ten evaluations (1 s apart) with the demo's series in place
            assert await api.result(stale) == [], "a replay looks stale" + logs()
            names = {a["labels"]["alertname"] for a in await api.alerts()}
            assert "ChannelProbeStale" not in names, names
            await asyncio.sleep(1)
        reader.cancel()
