"""The 2022 plan ships inside the package: `demo` and `plan --example` work from any folder,
while `--config` and a `channels.toml` in the current folder still win. Each command runs as a
real process from a temporary folder, with PYTHONPATH naming the code under test (this checkout,
or a wheel built from it and unpacked, as `pip install` would lay it out)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import MONITOR, REAL_PLAN, ROOT

from monitor.plan.shipped import LABEL, shipped_text


def monitor_in(cwd: Path, *args: str, code: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`python -m monitor ARGS` run to its end in `cwd`, importing `monitor` from `code`."""
    return subprocess.run(
        [*MONITOR, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def demo_started_in(cwd: Path, *args: str, code: Path = ROOT) -> tuple[int, str, str]:
    """Start `demo --no-serve` in `cwd`, interrupt it once its replay runs (the first round
    prints a line with " plan "), and return its exit code and output."""
    process = subprocess.Popen(
        [*MONITOR, "demo", "--no-serve", "--site", str(cwd / "site"), *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        head = []
        for line in process.stdout:  # ends at the first round, or when the demo exits early
            head.append(line)
            if " plan " in line:
                process.send_signal(signal.SIGINT)
                break
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, "".join(head) + out, err


def test_plan_example_prints_the_shipped_plan_from_any_folder(tmp_path: Path) -> None:
    result = monitor_in(tmp_path, "plan", "--example")
    assert result.returncode == 0, result.stderr
    assert result.stdout == REAL_PLAN.read_text("utf-8") == shipped_text()
    (tmp_path / "channels.toml").write_text(result.stdout, "utf-8")  # a starting point
    check = monitor_in(tmp_path, "validate")
    assert check.returncode == 0 and "15 channels, 73 services" in check.stdout


def test_a_missing_plan_says_how_to_start(tmp_path: Path) -> None:
    result = monitor_in(tmp_path, "validate")
    assert result.returncode == 2
    assert result.stderr.startswith("channels.toml: cannot read the plan file")
    assert "channel-monitor plan --example > channels.toml" in result.stderr


def test_demo_runs_from_a_folder_without_a_plan(tmp_path: Path) -> None:
    code, out, err = demo_started_in(tmp_path)
    assert code == 0, err
    assert f"channel-monitor demo: {LABEL}" in out
    assert "73 services on 15 channels" in out and "interrupted at 06-22 " in out
    assert (tmp_path / "site" / "index.html").exists()
    assert "Traceback" not in err


def test_a_plan_in_the_folder_wins_over_the_shipped_one(tmp_path: Path) -> None:
    (tmp_path / "channels.toml").write_text("[monitor]\ninterval = \n", "utf-8")
    code, out, err = demo_started_in(tmp_path)
    assert code == 2  # it read this folder's (broken) plan, not the shipped one
    assert err.startswith("channels.toml: TOML syntax error")
    assert LABEL not in out


def test_config_wins_over_the_plan_in_the_folder(tmp_path: Path) -> None:
    (tmp_path / "channels.toml").write_text("[monitor]\ninterval = \n", "utf-8")
    mine = tmp_path / "mine" / "plan.toml"
    mine.parent.mkdir()
    shutil.copyfile(REAL_PLAN, mine)
    code, out, err = demo_started_in(tmp_path, "--config", str(mine))
    assert code == 0, err
    assert f"channel-monitor demo: {mine}" in out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from this checkout (offline, with the installed setuptools and wheel),
    unpacked as `pip install` would lay it out."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy: building writes build/ and *.egg-info into the source
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "channels.toml"):
        shutil.copyfile(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "monitor",
        source / "monitor",
        symlinks=True,  # as in the repository: monitor/channels.toml links to the plan
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    offline = ("--no-deps", "--no-build-isolation", "--no-index", "--quiet")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", *offline, "--wheel-dir", str(tmp / "dist"), source],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp / "dist").glob("channel_monitor-*.whl")
    site = tmp / "site-packages"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def test_the_wheel_holds_the_plan_and_plan_example_works_from_it(
    installed: Path, tmp_path: Path
) -> None:
    packaged = installed / "monitor" / "channels.toml"
    assert not packaged.is_symlink() and packaged.read_text("utf-8") == REAL_PLAN.read_text("utf-8")
    result = subprocess.run(
        [sys.executable, "-c", "import monitor; print(monitor.__file__)"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(installed)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == str(installed / "monitor" / "__init__.py")
    example = monitor_in(tmp_path, "plan", "--example", code=installed)
    assert example.returncode == 0 and example.stdout == REAL_PLAN.read_text("utf-8")
    code, out, err = demo_started_in(tmp_path, code=installed)
    assert code == 0, err
    assert f"channel-monitor demo: {LABEL}" in out and "73 services on 15 channels" in out
