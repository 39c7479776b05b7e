"""The README is part of the product: its example plan must validate as written."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from helpers import ROOT, load_plan
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def test_readme_example_plan_validates(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    assert blocks, "the README shows an example plan"
    plan = load_plan(tmp_path / "example.toml", blocks[0])
    ref = plan.service("hubei-zwfw", "certificate-print")
    assert ref.service.probe is not None
    assert [r.during for r in ref.service.expect] == ["freeze", "certificate-window"]


LOCK_INSTALL = "python3 -m pip install --require-hashes -r requirements.lock"
SELF_INSTALL = "python3 -m pip install --no-deps -e ."


def _section(text: str, title: str) -> str:
    """The README's text from the heading that starts with `title` to the next heading."""
    start = text.index(f"\n{title}")
    body = text.index("\n", start + 1)
    end = text.find("\n#", body)
    return text[body : end if end != -1 else len(text)]


def test_readme_names_the_two_setup_commands() -> None:
    """Set-up is two commands, a demo and the tests, and both install the locked releases
    with their hashes before the project itself: a README that went back to resolving
    whatever the registry holds today would let a fresh clone fail its tests."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = _section(text, "## Set-up")
    commands = re.findall(r"```sh\n(.*?)\n```", setup, flags=re.S)
    assert commands == [
        f"{LOCK_INSTALL} && {SELF_INSTALL} && channel-monitor demo",
        f"{LOCK_INSTALL} && {SELF_INSTALL} && python3 -m pytest -q",
    ]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    lines = [line.strip() for line in ci.splitlines() if not line.lstrip().startswith("#")]
    installs = [line for line in lines if "pip install" in line]
    assert installs and all("requirements.lock" in line or "--no-deps" in line for line in installs)
    assert any("--require-hashes -r requirements.lock" in line for line in installs)
    assert "python3 -m pytest -q" in lines
    assert "bash .ci/offline-install" in lines


def _requirements() -> dict[str, Requirement]:
    """Every dependency pyproject.toml names for the runtime and the test and browser extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    named = [*project["dependencies"], *extras["test"], *extras["browser"]]
    return {canonicalize_name(Requirement(r).name): Requirement(r) for r in named}


def _locked() -> dict[str, tuple[str, list[str]]]:
    """The lock's pins: name -> (version, hashes)."""
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    pins = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", block)
        if match:
            hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
            pins[canonicalize_name(match[1])] = (match[2], hashes)
    return pins


def test_the_lock_pins_every_dependency_within_its_bounds_with_hashes() -> None:
    """A dependency added to pyproject.toml or a bound moved without writing the lock again
    fails here; so does a pin without a hash (pip would refuse the whole file)."""
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    header = text.split("\n", 2)[:2]
    assert "uv pip compile pyproject.toml" in header[1] and "--generate-hashes" in header[1]
    locked = _locked()
    assert all(hashes for _version, hashes in locked.values())
    for name, requirement in _requirements().items():
        if requirement.marker is not None and not requirement.marker.evaluate(
            {"sys_platform": "linux"}
        ):
            continue
        assert name in locked, f"{name} is not in requirements.lock"
        assert requirement.specifier.contains(locked[name][0]), (requirement, locked[name][0])


def test_every_dependency_is_bounded_above() -> None:
    """Only tzdata, which is data, may take any later release."""
    open_above = {
        name
        for name, requirement in _requirements().items()
        if not any(spec.operator in ("<", "<=", "==", "~=") for spec in requirement.specifier)
    }
    assert open_above == {"tzdata"}


def test_readme_offline_install_is_the_script_ci_runs() -> None:
    """The offline section's two steps are the ones `.ci/offline-install` goes through."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"```sh\n(.*?)\n```", _section(text, "### Installing"), flags=re.S)
    assert commands == [
        "python3 -m pip download --require-hashes --only-binary=:all: -r requirements.lock"
        " -d wheelhouse && python3 -m pip wheel --no-deps . -w wheelhouse",
        "python3 -m pip install --no-index --find-links wheelhouse --require-hashes"
        " -r requirements.lock && python3 -m pip install --no-index --find-links wheelhouse"
        " --no-deps channel-monitor",
    ]
    script = (ROOT / ".ci" / "offline-install").read_text(encoding="utf-8")
    flat = re.sub(r"\\\n\s*", "", script)
    for step in (
        "pip download --quiet --disable-pip-version-check --require-hashes --only-binary=:all:"
        " -r requirements.lock",
        "pip wheel --quiet --disable-pip-version-check --no-deps .",
        "install --no-index --find-links",
        "offline_pip --require-hashes -r requirements.lock",
        "offline_pip --no-deps channel-monitor",
        'channel-monitor" validate',
        'channel-monitor" plan --at 2022-07-01T12:00',
    ):
        assert step in flat, step


def test_readme_examples_of_each_kind_validate(tmp_path: Path) -> None:
    """Every example of the kinds section is a working probe or push table as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Kinds of observation") : text.index("## Commands")]
    blocks = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    base = (
        '[[channels]]\nid = "c"\nname = "渠道"\nkind = "web"\ngroup = "online"\n\n'
        '[[channels.services]]\nid = "s"\nname = "业务"\n\n'
    )
    kinds = []
    for index, block in enumerate(blocks):
        plan = load_plan(tmp_path / f"kind-{index}.toml", base + block)
        kinds.append(plan.service("c", "s").service.observed_by)
    assert kinds == ["http", "browser", "prometheus", "push", "dns", "prometheus"]
    assert "scrape_configs:" in section and "run --no-alerts" in section


def test_your_own_plan_in_ten_minutes_runs_as_written(tmp_path: Path) -> None:
    """Every command of "Your own plan in ten minutes", in order, in an empty folder, with the
    plan the section writes: from `plan --example` to a rehearsal that `--until` ends. The
    command is this checkout's (`python -m monitor`, not an installed `channel-monitor`), and
    the rehearsal's `--listen` port is swapped for a free one (others may run beside us)."""
    import os
    import subprocess
    import sys

    from servers import closed_port

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = _section(text, "## Your own plan in ten minutes")
    plans = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    commands = re.findall(r"```sh\n(.*?)\n```", section, flags=re.S)
    assert len(plans) == 1
    assert [c.split()[1] for c in commands] == ["plan", "validate", "plan", "demo", "rehearse"]
    env = {k: v for k, v in os.environ.items() if k not in ("PORTAL_URL", "HALL_PUSH_TOKEN")}
    env["PYTHONPATH"] = str(ROOT)
    outputs = []
    for index, command in enumerate(commands):
        if index == 1:  # "Then write your own channels.toml"
            (tmp_path / "channels.toml").write_text(plans[0], encoding="utf-8")
        line = command.replace("channel-monitor", f"{sys.executable} -m monitor", 1)
        line = re.sub(r"--listen 127\.0\.0\.1:\d+", f"--listen 127.0.0.1:{closed_port()}", line)
        done = subprocess.run(
            line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stdout + done.stderr, command
        outputs.append(done.stdout)
    assert "[periods.freeze]" in (tmp_path / "example.toml").read_text(encoding="utf-8")
    assert "OK: 2 channels, 3 services" in outputs[1]
    assert "certificate" in outputs[2] and "up" in outputs[2]
    assert "0 incident(s)" in outputs[3]
    assert "rehearsal ended at plan time 2026-12-18 18:00" in outputs[4]
    assert "report against the plan" in outputs[4]
    assert (tmp_path / "rehearsal.db").exists() and not (tmp_path / "monitor.db").exists()
    page = (tmp_path / "site-rehearsal" / "index.html").read_text(encoding="utf-8")
    assert 'class="rehearsal"' in page
