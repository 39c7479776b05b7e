"""`run` and `render` on a store that is busy, bad or read-only, through the real command line.

Two monitors on one store would open every incident twice and alert twice, so the second must
refuse; a store that cannot be used must say so in a sentence (exit 2), never a traceback; a
read-only store is still good for `render`.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import (
    ChannelServer,
    MonitorRun,
    db_rows,
    python_m,
    readonly_file,
    remount_readonly,
    small_tmpfs,
    wait_for,
    write_plan,
)

from monitor.judge import IncidentEvent, OpenIncident, Verdict
from monitor.store import Store

PLAN = """
[monitor]
timezone = "Asia/Shanghai"
interval = "1s"
timeout = "2s"

[[channels]]
id = "portal"
name = "门户"
kind = "web"
group = "online"

[[channels.services]]
id = "medical"
name = "医保缴费"
probe = {{ url = "{url}medical" }}
"""


@pytest.fixture
def config(tmp_path: Path, server: ChannelServer) -> Path:
    return write_plan(tmp_path / "channels.toml", PLAN.format(url=server.url("/")))


def run_once(config: Path, db: Path | str) -> tuple[int, str]:
    """`run` that is expected to refuse at once: its exit code and stderr."""
    done = python_m("run", "--config", str(config), "--db", str(db), "--listen", "127.0.0.1:0")
    return done.returncode, done.stderr


def test_a_second_run_on_the_store_exits_2_naming_the_holder_until_it_dies(
    tmp_path: Path, config: Path, processes: list[MonitorRun]
) -> None:
    db = tmp_path / "monitor.db"
    first = MonitorRun(config, db, tmp_path / "first.log")
    processes.append(first)
    first.wait_ticking()

    code, err = run_once(config, db)
    assert code == 2, err
    assert "Traceback" not in err
    assert f"process {first.pid}" in err
    assert "--db" in err

    first.kill()  # SIGKILL: no chance to remove anything; the kernel drops the lock
    first.wait(timeout=10)
    again = MonitorRun(config, db, tmp_path / "again.log")
    processes.append(again)
    again.wait_ticking()
    assert again.stop() == 0, again.output()


def _random(path: Path) -> Path:
    path.write_bytes(os.urandom(8192))
    return path


def _truncated(path: Path) -> Path:
    store = Store(path)
    store.db.executemany(
        "INSERT INTO incidents (channel, business, direction, opened_at, reason, expected) "
        "VALUES ('portal', 'medical', 'unexpected_up', 0, ?, 'down')",
        [("x" * 200,) for _ in range(3000)],
    )
    store.db.commit()
    store.close()
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.truncate(size // 2)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _foreign(path: Path) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    return path


def _newer(path: Path) -> Path:
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 999")
    return path


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_random, "not a channel-monitor store"),
        (_truncated, "damaged"),
        (lambda _path: Path("/dev/null"), "not a regular file"),
        (_folder, "is a folder"),
        (_foreign, "another program"),
        (_newer, "newer channel-monitor"),
    ],
    ids=["random", "truncated", "dev-null", "folder", "foreign", "newer"],
)
def test_run_on_a_bad_store_exits_2_with_a_sentence(
    tmp_path: Path, config: Path, make, says: str
) -> None:
    db = make(tmp_path / "monitor.db")
    code, err = run_once(config, db)
    assert code == 2, err
    assert "Traceback" not in err
    assert says in err
    assert "--db" in err  # what to do
    assert not Path("/dev/null.lock").exists()


def _store_with_an_incident(db: Path) -> None:
    store = Store(db)
    opened = datetime(2022, 6, 20, 2, 0, tzinfo=UTC)
    up = Verdict.UNEXPECTED_UP
    incident = OpenIncident(None, up, opened, "HTTP 200", "down", "freeze")
    event = IncidentEvent("opened", up, opened, "HTTP 200", "down", "freeze", incident)
    store.record_event("portal", "medical", event)
    store.close()


def test_on_a_read_only_folder_run_exits_2_and_render_reads_the_store(
    tmp_path: Path, config: Path
) -> None:
    with small_tmpfs(tmp_path / "mnt") as mount:
        db = mount / "monitor.db"
        _store_with_an_incident(db)
        remount_readonly(mount)

        code, err = run_once(config, db)
        assert code == 2, err
        assert "Traceback" not in err
        assert "cannot be written" in err or "read-only" in err

        site = tmp_path / "site"
        done = python_m("render", "--config", str(config), "--db", str(db), "--site", str(site))
        assert done.returncode == 0, done.stderr
        assert "no store" not in done.stdout
        assert "unexpected_up" in (site / "status.json").read_text("utf-8")


def test_on_a_read_only_file_run_exits_2_and_render_reads_it(tmp_path: Path, config: Path) -> None:
    db = tmp_path / "monitor.db"
    _store_with_an_incident(db)
    with readonly_file(db):
        code, err = run_once(config, db)
        assert code == 2, err
        assert "Traceback" not in err
        assert "read-only" in err

        site = tmp_path / "site"
        done = python_m("render", "--config", str(config), "--db", str(db), "--site", str(site))
        assert done.returncode == 0, done.stderr


def _healthz(run: MonitorRun) -> tuple[int, dict] | None:
    """/healthz with its status, a 503 included (None while nothing answers)."""
    if run.poll() is not None:
        raise AssertionError(f"run exited with {run.returncode}:\n{run.output()}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{run.port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _metric(run: MonitorRun, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{run.port}/metrics", timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _fill(path: Path) -> None:
    """Write zeros to `path` until the file system is full (unbuffered: a block the disk took
    only part of is not written again when the file closes, which would raise ENOSPC there)."""
    block = b"\0" * 65536
    with open(path, "wb", buffering=0) as file:
        try:
            while True:
                file.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def test_a_full_disk_is_reported_and_writing_resumes_when_space_returns(
    tmp_path: Path, server: ChannelServer, processes: list[MonitorRun]
) -> None:
    services = "".join(
        f'[[channels.services]]\nid = "s{i}"\nname = "业务{i}"\n'
        f'probe = {{ url = "{server.url("/")}s{i}" }}\n'
        for i in range(60)
    )
    text = PLAN.split("[[channels.services]]")[0].format(url="") + services
    config = write_plan(tmp_path / "channels.toml", text)
    with small_tmpfs(tmp_path / "mnt", size="6m") as mount:
        db = mount / "monitor.db"
        run = MonitorRun(config, db, tmp_path / "run.log")
        processes.append(run)
        run.wait_ticking()
        assert _healthz(run)[0] == 200
        _fill(mount / "filler")

        _status, body = wait_for(
            lambda: (h := _healthz(run)) and h[0] == 503 and h,
            timeout=90,
            what="/healthz to report the full disk",
        )
        assert body["status"] == "store_failing"
        assert body["store"]["healthy"] is False
        assert "full" in body["store"]["error"]
        wait_for(  # /metrics is built at most once a second: poll
            lambda: _metric(run, "channel_monitor_store_healthy") == 0,
            timeout=30,
            what="channel_monitor_store_healthy 0",
        )
        wait_for(
            lambda: _metric(run, "channel_monitor_store_pending_observations") > 0,
            timeout=30,
            what="observations waiting in memory",
        )

        (mount / "filler").unlink()  # space returns: as before, writing resumes by itself
        wait_for(
            lambda: (h := _healthz(run)) and h[0] == 200,
            timeout=60,
            what="/healthz to be ok again",
        )
        wait_for(
            lambda: _metric(run, "channel_monitor_store_healthy") == 1,
            timeout=30,
            what="channel_monitor_store_healthy 1",
        )
        stored = db_rows(db, "SELECT coalesce(sum(count), 0) FROM observations")[0][0]
        wait_for(
            lambda: db_rows(db, "SELECT coalesce(sum(count), 0) FROM observations")[0][0] > stored,
            timeout=30,
            what="new observations in the store",
        )
        assert run.stop(within=15) == 0, run.output()
        assert "Traceback" not in run.output()
