"""A plan with `[subscriptions]` on a machine without the key: `run` refuses to start with one
sentence that names the variable and the command that makes a key (exit 2, no traceback, no
store left behind), and `validate` warns on stderr while still exiting 0."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import FAST_MONITOR, MONITOR, ROOT, closed_port, write_plan

from monitor.subscriptions.keys import ENV, Keys

PLAN = (
    FAST_MONITOR
    + """
[subscriptions]
smtp = "smtp://127.0.0.1:9"
from = "湖北人社 <noreply@example.gov.cn>"
public_url = "http://127.0.0.1:9"

[[channels]]
id = "portal"
name = "门户"
kind = "web"
group = "online"

[[channels.services]]
id = "kiosk"
name = "自助机"
"""
)


def monitor(*args: str, key: str | None) -> subprocess.CompletedProcess[str]:
    """`python -m monitor ARGS` with the key set to `key`, or unset."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if key is not None:
        env[ENV] = key
    return subprocess.run(
        [*MONITOR, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("key", [None, "not-a-key"])
def test_run_without_a_usable_key_exits_2_with_a_sentence(tmp_path: Path, key: str | None) -> None:
    plan = write_plan(tmp_path / "channels.toml", PLAN)
    proc = monitor(
        "run",
        "--config",
        str(plan),
        "--db",
        str(tmp_path / "m.db"),
        "--site",
        str(tmp_path / "site"),
        "--listen",
        f"127.0.0.1:{closed_port()}",
        key=key,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert ENV in proc.stderr
    assert "channel-monitor subscription key" in proc.stderr
    assert "[subscriptions]" in proc.stderr


def test_validate_warns_when_the_key_is_unset(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "channels.toml", PLAN)
    unset = monitor("validate", "--config", str(plan), key=None)
    assert unset.returncode == 0
    assert ENV in unset.stderr and "channel-monitor subscription key" in unset.stderr
    assert ENV not in unset.stdout
    good = monitor("validate", "--config", str(plan), key=Keys.generate())
    assert good.returncode == 0
    assert ENV not in good.stderr


def test_validate_says_nothing_of_the_key_without_subscriptions(tmp_path: Path) -> None:
    text = PLAN.split("[subscriptions]")[0] + PLAN.split('public_url = "http://127.0.0.1:9"')[1]
    plan = write_plan(tmp_path / "channels.toml", text)
    proc = monitor("validate", "--config", str(plan), key=None)
    assert proc.returncode == 0
    assert ENV not in proc.stderr
