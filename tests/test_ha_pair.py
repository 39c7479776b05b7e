"""An HA pair: two real `channel-monitor run` processes on the same plan, each with its own
store, both pushing to both members of a cluster of two real Alertmanagers (gossiping on
loopback), give one notification per incident transition at a webhook receiver that counts.

Why this holds: both monitors send the same label set for the same incident (the monitor's own
identity is not a label), so each Alertmanager keeps one alert (it merges the two `startsAt` to
the earlier); the two Alertmanagers share their notification log over the cluster, and the
second one in the cluster's order waits `--cluster.peer-timeout` before notifying, finds the
first one's entry and stays silent.

Alertmanager comes from the Debian package `prometheus-alertmanager` (`.ci/run` installs it).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from helpers import ChannelServer, MonitorRun, db_rows, require_binary, wait_for, write_plan
from servers import closed_port

#: Alertmanager's timings for the test: notify fast, never repeat within the test. The group
#: interval must stay above the peer timeout (as Alertmanager's defaults, 5m and 15s, do): the
#: second Alertmanager checks the shared log only after its wait, so a flush of the firing
#: alert still waiting when the first one already sent the resolution would send "firing"
#: once more (seen with 2 s and 3 s).
GROUP_WAIT, GROUP_INTERVAL, PEER_TIMEOUT = 1, 5, 2
#: How long the receiver must stay quiet after a notification for a second one to count as
#: impossible: the second Alertmanager's wait plus a flush of the group, with room to spare.
QUIET = PEER_TIMEOUT + GROUP_INTERVAL + 3


def start_cluster(processes: list[subprocess.Popen], tmp: Path, hook: str) -> list[str]:
    """Two Alertmanagers that peer with each other on loopback; their base URLs once both
    see the other (a cluster that has not formed would notify twice, and prove nothing)."""
    binary = require_binary(
        "prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager"
    )
    config = tmp / "alertmanager.yml"
    config.write_text(
        "route:\n"
        "  receiver: hook\n"
        "  group_by: [alertname, channel, business]\n"
        f"  group_wait: {GROUP_WAIT}s\n"
        f"  group_interval: {GROUP_INTERVAL}s\n"
        "  repeat_interval: 1h\n"
        "receivers:\n"
        "  - name: hook\n"
        "    webhook_configs:\n"
        f'      - url: "{hook}"\n'
        "        send_resolved: true\n"
    )
    gossip = [closed_port(), closed_port()]
    bases = []
    for index in (0, 1):
        web = closed_port()
        command = [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp / f'am-{index}'}",
            f"--web.listen-address=127.0.0.1:{web}",
            f"--cluster.listen-address=127.0.0.1:{gossip[index]}",
            f"--cluster.peer=127.0.0.1:{gossip[1 - index]}",
            f"--cluster.peer-timeout={PEER_TIMEOUT}s",
            "--cluster.settle-timeout=10s",
        ]
        with (tmp / f"alertmanager-{index}.log").open("ab") as out:
            processes.append(subprocess.Popen(command, stdout=out, stderr=out))
        bases.append(f"http://127.0.0.1:{web}")

    def formed() -> bool:
        for base in bases:
            try:
                with urllib.request.urlopen(f"{base}/api/v2/status", timeout=1) as response:
                    cluster = json.load(response)["cluster"]
            except (urllib.error.URLError, OSError, ValueError, KeyError):
                return False
            if cluster.get("status") != "ready" or len(cluster.get("peers") or []) != 2:
                return False
        return True

    wait_for(formed, 60, interval=0.2, what="two Alertmanagers to form a cluster")
    return bases


def pair_plan(path: Path, target: str, alertmanagers: list[str]) -> Path:
    """One service, expected up at all times, probed every second; both Alertmanagers."""
    sinks = "".join(
        f'\n[[alerts]]\ntype = "alertmanager"\nname = "am-{i}"\nurl = "{url}"\n'
        for i, url in enumerate(alertmanagers)
    )
    return write_plan(
        path,
        "[monitor]\n"
        'interval = "1s"\n'
        'timeout = "2s"\n'
        "failure_threshold = 2\n"
        "success_threshold = 2\n"
        "\n[[channels]]\n"
        'id = "portal"\n'
        'name = "测试门户"\n'
        'kind = "web"\n'
        'group = "online"\n'
        "\n[[channels.services]]\n"
        'id = "pay"\n'
        'name = "缴费"\n'
        "[channels.services.probe]\n"
        f'url = "{target}"\n' + sinks,
    )


def delivered(db: Path, kind: str) -> set[str]:
    """The sinks that answered 2xx to this store's `kind` transition of incident 1."""
    rows = db_rows(db, "SELECT sink, dedup_key FROM alert_outbox WHERE delivered_at IS NOT NULL")
    return {sink for sink, key in rows if key == f"incident-1-{kind}"}


def wait_delivered_by_both(homes: list[Path], kind: str) -> None:
    """Both monitors (their stores in `homes`) delivered `kind` to both Alertmanagers: from
    here on, anything more at the receiver would be a duplicate."""
    wait_for(
        lambda: all(delivered(home / "monitor.db", kind) == {"am-0", "am-1"} for home in homes),
        40,
        what=f"both monitors to deliver {kind} to both Alertmanagers",
    )


def notifications(receiver: ChannelServer) -> list[tuple[str, list[dict]]]:
    """What the Alertmanagers told the receiver: (status, labels of each alert) per POST."""
    return [
        (body["status"], [a["labels"] for a in body["alerts"]])
        for body in receiver.received("/hook")
    ]


def stays(check, seconds: float, receiver: ChannelServer) -> None:
    """Assert `check()` holds now and keeps holding for `seconds` (a bound on how late a
    duplicate could come, not a stand-in for synchronisation)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), json.dumps(receiver.received("/hook"), indent=1)
        time.sleep(0.1)
    assert check(), json.dumps(receiver.received("/hook"), indent=1)


def test_ha_pair_notifies_once_per_transition(
    tmp_path: Path, server: ChannelServer, processes: list[subprocess.Popen]
) -> None:
    receiver = server  # the same local aiohttp server: GET /pay is the target, POST /hook counts
    alertmanagers = start_cluster(processes, tmp_path, receiver.url("/hook"))
    plan = pair_plan(tmp_path / "plan.toml", receiver.url("/pay"), alertmanagers)
    monitors = []
    for name in ("a", "b"):
        home = tmp_path / name
        home.mkdir()
        monitor = MonitorRun(
            plan, home / "monitor.db", home / "run.log", args=("--site", str(home / "site"))
        )
        processes.append(monitor)
        monitors.append(monitor)
    for monitor in monitors:
        monitor.wait_ticking()
    receiver.wait_hits(4, "/pay", timeout=30)  # both monitors probe, see it serving

    homes = [tmp_path / "a", tmp_path / "b"]
    receiver.set("error", "/pay")  # down while expected up: 应开未开
    wait_delivered_by_both(homes, "opened")
    firing = wait_for(lambda: notifications(receiver), 30, what="the firing notification")
    stays(lambda: len(notifications(receiver)) == 1, QUIET, receiver)
    assert firing[0] == (
        "firing",
        [
            {
                "alertname": "ChannelDownWhileExpectedUp",
                "channel": "portal",
                "business": "pay",
                "severity": "warning",
            }
        ],
    )

    receiver.set("serving", "/pay")  # back to plan
    wait_delivered_by_both(homes, "resolved")
    wait_for(lambda: len(notifications(receiver)) == 2, 30, what="the resolved notification")
    stays(lambda: len(notifications(receiver)) == 2, QUIET, receiver)
    assert [status for status, _ in notifications(receiver)] == ["firing", "resolved"]

    for monitor in monitors:
        assert monitor.stop(within=20) == 0
