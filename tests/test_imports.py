"""Commands import what they use (issue 22, item 5): `validate`, `plan` and `plan diff` read
a plan and load no network stack. Each kind imports its network code with its prober, never
with its plan table, so a civil servant checking a plan on an office machine waits for no TLS
library, and the commands stay quick however many kinds there are.

Each command runs in a fresh interpreter (the test process has loaded everything already), and
the wrapper reports which modules were loaded when the command returned.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The network stacks and the modules of ours that pull them in.
NETWORK = (
    "aiohttp",
    "httpx",
    "httptools",
    "cryptography",
    "prometheus_client",
    "dns",
    "monitor.net.http1",
    "monitor.net.tls",
    "playwright",
)

#: Runs `channel-monitor ARGS` in this interpreter, then prints the loaded modules as JSON.
_WRAPPER = """
import json, sys
from monitor.cli import main
args = json.loads(sys.argv[1])
if args and args[0] == "--probers":  # the control: build every kind's prober
    from monitor.pipeline import make_probers
    make_probers()
    code = 0
else:
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""

#: One service of each kind the monitor had before `dns`, so every kind's table is validated.
PLAN = """\
[[channels]]
id = "portal"
name = "湖北政务服务网"
kind = "web"
group = "online"

[[channels.services]]
id = "pension"
name = "养老保险"
[channels.services.probe]
url = "https://zwfw.example.gov.cn/pension"
body_not_matches = "系统升级"

[[channels.services]]
id = "medical"
name = "医疗保险"
[channels.services.probe]
kind = "browser"
url = "https://zwfw.example.gov.cn/medical"
text_matches = "缴费"

[[channels.services]]
id = "tax"
name = "税费缴纳"
[channels.services.probe]
kind = "prometheus"
url = "http://127.0.0.1:9090"
query = "sum(payments_total)"
serving_if = "> 0"

[[channels.services]]
id = "kiosk"
name = "自助终端"
[channels.services.push]
token = "0123456789abcdef-kiosk"
"""


def loaded_by(*args: str, cwd: Path = ROOT) -> tuple[int, set[str]]:
    """(exit code, modules loaded) of `channel-monitor ARGS` run in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, json.dumps(list(args))],
        cwd=cwd,  # the checkout's `monitor` first on sys.path, as `python -m monitor` has it
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["code"], set(report["modules"])


def network_in(modules: set[str]) -> list[str]:
    """The network stacks among `modules` (a package counts when any of its modules does)."""
    return sorted(
        name for name in NETWORK if any(m == name or m.startswith(name + ".") for m in modules)
    )


@pytest.fixture
def plan(tmp_path: Path) -> Path:
    path = tmp_path / "channels.toml"
    path.write_text(PLAN, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "command",
    [
        ("validate", "--config", "{plan}"),
        ("plan", "--config", "{plan}", "--at", "2022-07-06T10:00:00"),
        ("plan", "--config", "{plan}", "--format", "json"),
        ("plan", "diff", "{plan}", "{plan}"),
        ("validate", "--config", "{shipped}"),
    ],
    ids=lambda command: " ".join(command),
)
def test_plan_commands_load_no_network_stack(command: tuple[str, ...], plan: Path) -> None:
    shipped = ROOT / "monitor" / "channels.toml"
    args = [part.format(plan=plan, shipped=shipped) for part in command]
    code, modules = loaded_by(*args)
    assert code == 0
    assert {"monitor.plan.schema", "monitor.kinds.http", "monitor.kinds.prometheus"} <= modules
    assert network_in(modules) == []


def test_the_check_sees_a_network_stack_when_one_is_loaded() -> None:
    # The control: building the probers loads the probes' network code, so the test above
    # would see it if a command loaded it.
    code, modules = loaded_by("--probers")
    assert code == 0
    assert {"httptools", "monitor.net.http1", "monitor.net.tls", "aiohttp"} <= set(
        network_in(modules)
    )
