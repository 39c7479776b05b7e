"""End to end with real processes on 127.0.0.1: the real Alertmanager binary, a real
`python -m monitor run`, local channel servers whose answers the test switches, and a local
webhook receiver.

- 应停未停: a service the plan expects down serves; the alert appears in Alertmanager with the
  right labels; when it stops serving, the alert resolves. 应开未开 likewise, the other way.
- A monitor killed with SIGKILL between the incident and its delivery delivers it after the
  restart, once.

Alertmanager comes from the Debian package `prometheus-alertmanager` (`.ci/run` installs it): a
missing binary fails the test in CI (CI=true) and skips it elsewhere.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import MonitorRun, db_rows, require_binary, wait_for, write_plan
from servers import closed_port

# --- local servers ---------------------------------------------------------------------------


class Server:
    """A threaded HTTP server on 127.0.0.1: answers GET with `status[path]` (default 200) and
    records POST bodies with their answer."""

    def __init__(self) -> None:
        self.status: dict[str, int] = {}
        self.post_status = 200
        self.posts: list[tuple[dict, dict, int]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_GET(self) -> None:
                code = outer.status.get(self.path, 200)
                body = b"serving" if code < 400 else b"down for maintenance"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"null")
                with outer.lock:
                    code = outer.post_status
                    outer.posts.append((dict(self.headers), body, code))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def accepted(self) -> list[dict]:
        with self.lock:
            return [body for _headers, body, code in self.posts if 200 <= code < 300]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.close()


# --- the plan and the processes --------------------------------------------------------------


def portal_plan(path: Path, services: list[tuple[str, str | None, str]], sinks: str) -> Path:
    """services: (id, state during the always-active period or None, probe URL)."""
    text = [
        "[monitor]",
        'timezone = "Asia/Shanghai"',
        'interval = "1s"',
        'timeout = "2s"',
        'grace = "0s"',
        "failure_threshold = 2",
        "success_threshold = 2",
        "",
        "[periods.freeze]",
        'title = "测试冻结期"',
        'title_en = "test freeze"',
        "start = 2020-01-01T00:00:00",
        "end = 2099-01-01T00:00:00",
        "",
        "[[channels]]",
        'id = "portal"',
        'name = "测试门户"',
        'name_en = "test portal"',
        'kind = "web"',
        'group = "online"',
    ]
    for ident, state, url in services:
        text += ["", "[[channels.services]]", f'id = "{ident}"', f'name = "业务 {ident}"']
        if state:
            text.append(f'expect = [{{ during = "freeze", state = "{state}" }}]')
        text += ["[channels.services.probe]", f'url = "{url}"']
    return write_plan(path, "\n".join(text) + "\n\n" + sinks)


def start_monitor(processes: list[subprocess.Popen], plan: Path, db: Path, log: Path) -> MonitorRun:
    process = MonitorRun(plan, db, log)
    processes.append(process)
    return process


def start_alertmanager(processes: list[subprocess.Popen], tmp: Path) -> str:
    binary = require_binary(
        "prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager"
    )
    config = tmp / "alertmanager.yml"
    config.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    port = closed_port()
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.path={tmp / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    with (tmp / "alertmanager.log").open("ab") as out:
        processes.append(subprocess.Popen(command, stdout=out, stderr=out))
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    wait_for(ready, 30, what="alertmanager to be ready")
    return base


def active_alerts(base: str) -> dict[str, dict]:
    """Alertmanager's current alerts of this monitor, by the `business` label."""
    with urllib.request.urlopen(f"{base}/api/v2/alerts", timeout=5) as response:
        items = json.load(response)
    return {a["labels"].get("business"): a for a in items if a["labels"].get("channel")}


def outbox(db: Path) -> list[tuple]:
    return db_rows(
        db, "SELECT sink, dedup_key, attempts, delivered_at FROM alert_outbox ORDER BY id"
    )


# --- the tests -------------------------------------------------------------------------------


def test_alertmanager_sees_both_directions_fire_and_resolve(
    tmp_path: Path, servers: list[Server], processes: list[subprocess.Popen]
) -> None:
    am = start_alertmanager(processes, tmp_path)
    channel = Server()
    servers.append(channel)
    channel.status["/closed"] = 200  # expected down, serving: 应停未停
    channel.status["/open"] = 503  # expected up, not serving: 应开未开
    plan = portal_plan(
        tmp_path / "plan.toml",
        [("closed", "down", channel.url("/closed")), ("open", None, channel.url("/open"))],
        f'[[alerts]]\ntype = "alertmanager"\nurl = "{am}"\n',
    )
    db = tmp_path / "monitor.db"
    monitor = start_monitor(processes, plan, db, tmp_path / "monitor.log")

    firing = wait_for(
        lambda: (lambda a: a if {"closed", "open"} <= set(a) else None)(active_alerts(am)),
        40,
        what="both alerts in Alertmanager",
    )
    up, down = firing["closed"], firing["open"]
    assert up["labels"] == {
        "alertname": "ChannelUpWhileExpectedDown",
        "channel": "portal",
        "business": "closed",
        "severity": "critical",
    }
    assert down["labels"] == {
        "alertname": "ChannelDownWhileExpectedUp",
        "channel": "portal",
        "business": "open",
        "severity": "warning",
    }
    assert up["status"]["state"] == "active"
    assert up["annotations"]["summary"] == "应停未停：测试门户 · 业务 closed"
    assert up["annotations"]["expected"] == "down"
    assert up["annotations"]["observed"] == "serving"
    assert up["annotations"]["reason"] == "HTTP 200"
    assert down["annotations"]["summary"].startswith("应开未开")
    assert down["annotations"]["reason"] == "HTTP 503"
    assert "127.0.0.1" not in json.dumps([up["annotations"], down["annotations"]])

    channel.status["/closed"] = 503  # stops serving, as planned
    channel.status["/open"] = 200  # comes back, as planned
    wait_for(lambda: not active_alerts(am), 40, what="both alerts to resolve in Alertmanager")
    # Alertmanager has it a moment before the sender commits `delivered`
    delivered = wait_for(
        lambda: (lambda rows: rows if len(rows) == 4 else None)(
            [r for r in outbox(db) if r[3] is not None]
        ),
        10,
        what="four delivered rows in the outbox",
    )
    assert sorted(r[1].rsplit("-", 1)[1] for r in delivered) == [
        "opened",
        "opened",
        "resolved",
        "resolved",
    ]
    assert monitor.stop(within=20) == 0


def test_sigkill_between_incident_and_delivery_delivers_once_after_restart(
    tmp_path: Path, servers: list[Server], processes: list[subprocess.Popen]
) -> None:
    channel, receiver = Server(), Server()
    servers += [channel, receiver]
    receiver.post_status = 503  # the delivery stays pending
    plan = portal_plan(
        tmp_path / "plan.toml",
        [("closed", "down", channel.url("/closed"))],
        f'[[alerts]]\ntype = "webhook"\nurl = "{receiver.url("/hook")}"\n',
    )
    db = tmp_path / "monitor.db"
    log = tmp_path / "monitor.log"
    first = start_monitor(processes, plan, db, log)
    wait_for(lambda: receiver.posts, 40, what="the first (refused) delivery attempt")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    (pending,) = outbox(db)
    assert pending[1] == "incident-1-opened" and pending[3] is None

    receiver.post_status = 200
    second = start_monitor(processes, plan, db, log)
    wait_for(receiver.accepted, 40, what="the delivery after the restart")
    wait_for(lambda: outbox(db)[0][3] is not None, 20, what="the outbox row marked delivered")
    second.stop(within=20)

    keys = [body["dedup_key"] for body in receiver.accepted()]
    assert keys == ["incident-1-opened"]
    assert all(
        headers["Idempotency-Key"] == "incident-1-opened" for headers, _, _ in receiver.posts
    )
    assert len(outbox(db)) == 1  # the restart resumed the incident, it did not open another
