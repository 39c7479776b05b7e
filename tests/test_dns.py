"""The dns kind against a real resolver: Debian's dnsmasq (package `dnsmasq-base`), started
here on 127.0.0.1, answering one name correctly and one "hijacked", a TXT record and a CNAME,
and NXDOMAIN for other names of its zone; a silent UDP socket for the timeout.

Missing dnsmasq fails the tests in CI (CI=true) and skips them elsewhere, as for Prometheus and
Chromium. Every wait polls with a deadline; dnsmasq is stopped at teardown.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import missing, python_m, wait_for
from test_imports import loaded_by, network_in

from monitor import reasons
from monitor.kinds.dns import DnsProbe, DnsProber

HOST = "127.0.0.1"
GOOD, HIJACKED = "192.0.2.10", "198.51.100.66"
#: The channel's real addresses: GOOD is inside, HIJACKED is not.
EXPECTED = ("192.0.2.0/24",)


@dataclass(frozen=True)
class Resolver:
    port: int

    @property
    def server(self) -> str:
        return f"{HOST}:{self.port}"


def _dnsmasq_binary() -> str:
    found = shutil.which("dnsmasq") or (
        "/usr/sbin/dnsmasq" if os.access("/usr/sbin/dnsmasq", os.X_OK) else None
    )
    if found is None:
        missing("dnsmasq not found (Debian package dnsmasq-base; .ci/run installs it)")
    return found


def _free_dns_port() -> int:
    """A port free for both UDP and TCP on HOST: dnsmasq listens on both and gives up if either
    is taken. The TCP side is chosen by the kernel, which knows the ports held by connections
    in TIME_WAIT (the tests before this one leave some 19,000 of them, most of the ephemeral
    range); a UDP socket knows nothing of those, and a port chosen for UDP alone was taken for
    TCP two times in three."""
    for _attempt in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((HOST, port))
                except OSError:
                    continue
                return port
    pytest.fail("no port free for both UDP and TCP on 127.0.0.1 in 100 tries")


def _answers(port: int) -> bool:
    """Whether a resolver on `port` answers a question (any answer: it is up)."""
    import dns.exception
    import dns.message
    import dns.query

    question = dns.message.make_query("good.example.", "A")
    try:
        dns.query.udp(question, HOST, port=port, timeout=0.2)
    except (OSError, dns.exception.DNSException):
        return False
    return True


@pytest.fixture(scope="module")
def resolver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Resolver]:
    binary = _dnsmasq_binary()
    user = pwd.getpwuid(os.getuid()).pw_name  # run as ourselves: root must not drop to nobody
    log = tmp_path_factory.mktemp("dnsmasq") / "dnsmasq.log"
    for _attempt in range(5):  # a port taken between choosing and binding: choose again
        port = _free_dns_port()
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [
                    binary,
                    "--keep-in-foreground",
                    f"--port={port}",
                    f"--listen-address={HOST}",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    "--pid-file=",
                    f"--user={user}",
                    "--log-facility=-",
                    "--local=/example/",  # other names of the zone: NXDOMAIN
                    f"--address=/good.example/{GOOD}",
                    f"--address=/hijacked.example/{HIJACKED}",
                    "--txt-record=txt.example,channel-monitor",
                    "--cname=alias.example,good.example",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        # Up when it answers; given up on when it exits (the port was taken).
        wait_for(
            lambda p=process, n=port: p.poll() is not None or _answers(n), what="dnsmasq to answer"
        )
        if process.poll() is None:
            break
        process.kill()
        process.wait()
    else:
        pytest.fail(f"dnsmasq did not start: {log.read_text(errors='replace')[-2000:]}")
    try:
        yield Resolver(port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def silent() -> Iterator[str]:
    """A UDP socket on 127.0.0.1 that never answers (its questions are never read)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        yield f"{HOST}:{sock.getsockname()[1]}"


def probe(name: str, server: str, type: str = "A", answers: tuple[str, ...] = ()) -> DnsProbe:
    return DnsProbe(kind="dns", name=name, type=type, server=server, answers=answers)


async def observe(spec: DnsProbe, timeout: float = 2.0):
    prober = DnsProber()
    try:
        return await prober.probe(spec, timedelta(seconds=timeout))
    finally:
        await prober.close()


async def test_a_correct_answer_is_serving(resolver: Resolver) -> None:
    observation = await observe(probe("good.example", resolver.server, answers=EXPECTED))
    assert (observation.serving, observation.reason) == (True, "DNS answered")
    assert 0 < observation.duration_seconds < 2


async def test_a_hijacked_answer_is_not_serving_and_named(resolver: Resolver) -> None:
    observation = await observe(probe("hijacked.example", resolver.server, answers=EXPECTED))
    assert observation.serving is False
    assert observation.reason == f"DNS answer {HIJACKED} outside the expected set"
    # Operators read the address; the page says only that the answer is wrong.
    assert HIJACKED in reasons.describe(observation.reason, "zh")
    assert HIJACKED in reasons.describe(observation.reason, "en")
    assert HIJACKED not in reasons.describe(observation.reason, "zh", public=True)
    assert HIJACKED not in reasons.describe(observation.reason, "en", public=True)


async def test_without_an_expected_set_any_answer_is_serving(resolver: Resolver) -> None:
    observation = await observe(probe("hijacked.example", resolver.server))
    assert (observation.serving, observation.reason) == (True, "DNS answered")


async def test_nxdomain(resolver: Resolver) -> None:
    observation = await observe(probe("missing.example", resolver.server, answers=EXPECTED))
    assert (observation.serving, observation.reason) == (False, "NXDOMAIN")


async def test_no_answer_of_the_type(resolver: Resolver) -> None:
    observation = await observe(probe("txt.example", resolver.server, type="A"))
    assert (observation.serving, observation.reason) == (False, "no answer")


async def test_a_resolver_that_refuses(resolver: Resolver) -> None:
    # dnsmasq has no upstream: a name outside its zone is refused.
    observation = await observe(probe("elsewhere.test", resolver.server))
    assert (observation.serving, observation.reason) == (False, "resolver failed")


@pytest.mark.parametrize(
    ("name", "type", "answers", "serving", "reason"),
    [
        ("txt.example", "TXT", ("channel-monitor",), True, "DNS answered"),
        ("txt.example", "TXT", ("other text",), False, "outside"),
        ("alias.example", "CNAME", ("GOOD.example.",), True, "DNS answered"),
        ("alias.example", "CNAME", ("portal.example",), False, "outside"),
    ],
)
async def test_txt_and_cname_answers(
    resolver: Resolver, name: str, type: str, answers: tuple[str, ...], serving: bool, reason: str
) -> None:
    observation = await observe(probe(name, resolver.server, type=type, answers=answers))
    assert observation.serving is serving
    assert reason in observation.reason


async def test_a_silent_resolver_times_out_within_the_probes_timeout(silent: str) -> None:
    started = time.monotonic()
    observation = await observe(probe("good.example", silent), timeout=0.5)
    elapsed = time.monotonic() - started
    assert (observation.serving, observation.reason) == (False, "resolver timeout")
    assert 0.4 < elapsed < 1.5


@pytest.mark.parametrize(
    ("field", "value", "key", "words"),
    [
        ("type", '"MX"', "probe.type", "expected one of"),
        ("server", '"dns.example.net"', "probe.server", "IP address"),
        ("server", '"127.0.0.1:70000"', "probe.server", "port from 1 to 65535"),
        ("answers", '["59.175.0.0/33"]', "probe.answers", "IP address or network"),
        ("answers", '["2001:db8::/32"]', "probe.answers", "IPv4"),
        ("name", '"bad name.example"', "probe.name", "host name"),
    ],
)
def test_a_bad_setting_is_a_config_error_naming_its_key(
    tmp_path: Path, field: str, value: str, key: str, words: str
) -> None:
    settings = {"name": '"www.hbzwfw.gov.cn"', "type": '"A"', field: value}
    plan = tmp_path / "channels.toml"
    plan.write_text(plan_text(probe_lines=settings), encoding="utf-8")
    done = python_m("validate", "--config", str(plan))
    assert done.returncode == 2, done.stderr
    line = next(line for line in done.stderr.splitlines() if key in line)
    assert "channels[0].services[0]." + key in line and words in line


def test_a_good_plan_validates_and_its_schema_loads_no_dnspython(tmp_path: Path) -> None:
    plan = tmp_path / "channels.toml"
    lines = {"name": '"www.hbzwfw.gov.cn"', "server": '"114.114.114.114"'}
    plan.write_text(plan_text(probe_lines={**lines, "answers": '["59.175.0.0/16"]'}))
    code, modules = loaded_by("validate", "--config", str(plan))
    assert code == 0
    assert "monitor.kinds.dns" in modules and network_in(modules) == []


def test_check_judges_dns_services(resolver: Resolver, tmp_path: Path) -> None:
    # The whole path: plan -> registry -> the dns prober -> the judge -> `check`'s JSON.
    plan = tmp_path / "channels.toml"
    services = {
        "good": {"name": '"good.example"', "answers": '["192.0.2.0/24"]'},
        "hijacked": {"name": '"hijacked.example"', "answers": '["192.0.2.0/24"]'},
        "missing": {"name": '"missing.example"'},
    }
    for lines in services.values():
        lines["server"] = f'"{resolver.server}"'
    plan.write_text(plan_text(services=services), encoding="utf-8")
    done = python_m("check", "--config", str(plan), "--format", "json")
    assert done.returncode == 1, done.stderr  # a mismatch was found
    seen = {
        row["service"]: (row["observed_by"], row["observed"]["reason"], row["verdict"])
        for row in json.loads(done.stdout)["services"]
    }
    assert seen == {
        "good": ("dns", "DNS answered", "ok"),
        "hijacked": ("dns", f"DNS answer {HIJACKED} outside the expected set", "unexpected_down"),
        "missing": ("dns", "NXDOMAIN", "unexpected_down"),
    }


def test_the_probe_keeps_its_settings_out_of_logs() -> None:
    spec = probe("good.example", "127.0.0.1:53")
    assert repr(spec) == str(spec) == "DnsProbe(kind='dns')"


def test_the_type_checks_itself_without_the_plan() -> None:
    # Validation lives on the type: the model refuses what `validate` refuses.
    with pytest.raises(ValueError, match="IPv6"):
        DnsProbe(kind="dns", name="www.example", type="AAAA", answers=("192.0.2.0/24",))


def plan_text(
    probe_lines: dict[str, str] | None = None, services: dict[str, dict[str, str]] | None = None
) -> str:
    """A plan of one channel whose services are dns probes with these settings."""
    services = services or {"name": probe_lines or {}}
    text = '[[channels]]\nid = "portal"\nname = "湖北政务服务网"\nkind = "web"\ngroup = "online"\n'
    for service, lines in services.items():
        text += f'\n[[channels.services]]\nid = "{service}"\nname = "{service}"\n'
        text += '[channels.services.probe]\nkind = "dns"\n'
        text += "".join(f"{key} = {value}\n" for key, value in lines.items())
    return text
