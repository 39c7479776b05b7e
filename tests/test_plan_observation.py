"""The shipped plan observes every service in the way its channel allows (issue 11 item 6), and
leaves to `${NAME}` environment variables what only the channel operators know."""

from __future__ import annotations

import os
import re
import subprocess

from helpers import MONITOR, REAL_PLAN, ROOT, real_plan

#: How each kind of channel (`kind` in the plan) is observed.
EXPECTED_KIND = {
    "platform": {"http", "browser"},
    "web": {"http"},
    "app": {"http", "prometheus"},
    "alipay": {"http"},
    "wechat": {"http"},
    "tax": {"prometheus"},
    "offline": {"push"},
}
_REFERENCE = re.compile(r"\$\{([A-Z0-9_]+)\}")


def test_every_service_is_observed_in_the_way_its_channel_allows() -> None:
    plan = real_plan()
    seen: dict[str, int] = {}
    for ref in plan.services:
        kind = ref.service.observed_by
        seen[kind] = seen.get(kind, 0) + 1
        assert kind in EXPECTED_KIND[ref.channel.kind], (ref.key, kind)
        probe = ref.service.probe
        if ref.channel.kind in ("app", "alipay", "wechat") and kind == "http":
            assert probe is not None and probe.json_conditions, ref.key  # the back end's JSON
        if ref.channel.id == "chushuitong":
            assert kind == "prometheus", ref.key  # payments seen on the tax system's counter
    assert seen == {"http": 31, "browser": 4, "prometheus": 4, "push": 34}
    # the two homepage probes stay as they were; everything else waits for its operator
    known = [ref.key for ref in plan.services if not ref.service.unset]
    assert known == [("si-12333", "portal"), ("hubei-zwfw", "portal")]


def test_each_channel_says_what_to_fill_in() -> None:
    raw = REAL_PLAN.read_text("utf-8")
    blocks = raw.split("[[channels]]")[1:]
    for block in blocks:
        channel = re.search(r'^id = "([a-z0-9-]+)"', block, re.M)
        assert channel is not None
        comments = "\n".join(line for line in block.splitlines() if line.startswith("# "))
        tables = block.split("# ====")[0]
        code = "\n".join(line for line in tables.splitlines() if not line.lstrip().startswith("#"))
        for name in set(_REFERENCE.findall(code)):
            assert name in comments, (channel.group(1), name)
        assert "# For operators: kind " in block, channel.group(1)


def _validate(*args: str) -> subprocess.CompletedProcess[str]:
    names = set(_REFERENCE.findall(REAL_PLAN.read_text("utf-8")))
    env = {k: v for k, v in os.environ.items() if k not in names}
    return subprocess.run(
        [*MONITOR, "validate", "--config", str(REAL_PLAN), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_validate_passes_without_the_variables_and_names_them() -> None:
    done = _validate()
    assert done.returncode == 0, done.stderr
    assert "http 31, browser 4, prometheus 4, push 34, dns 0, schedule 0" in done.stdout
    for name in ("EHUIBAN_API_URL", "KIOSK_PUSH_TOKEN", "ETAX_PROMETHEUS_URL", "HRSS_PLATFORM_URL"):
        assert name in done.stdout
    strict = _validate("--strict")
    assert strict.returncode == 2
    assert "--strict: 16 environment variable(s) not set" in strict.stderr
