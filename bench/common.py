"""What the benchmark scripts share: the local probe target, a generated plan, CPU readings.

Run as a script it serves the target on an inherited listening socket (`python bench/common.py FD`;
over TLS when `BENCH_TLS_CERT` and `BENCH_TLS_KEY` name a certificate and its key);
the benchmarks start one or more such processes with `start_target`, so the target's CPU is
never counted as the monitor's. Everything listens on 127.0.0.1 only.

Paths:
  /open    200, a small page of a channel that is serving
  /closed  200, the same page size with a maintenance notice (a channel switched off)
  /hang    (`BENCH_RAW` only) read, never answered, the connection left open: a hung server

With `BENCH_RAW=1` the target is not aiohttp but a bare asyncio protocol (on uvloop) that answers
each request with the same bytes and closes: about a tenth of aiohttp's CPU per request, so that
at thousands of probes a second the monitor, not the target, is what the two cores run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# The scripts run as `python bench/NAME.py` from a checkout: make `monitor` importable from it.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))

FILLER = "<p>" + "办理指南 " * 40 + "</p>\n"
OPEN_PAGE = (
    "<!doctype html><html><head><title>社保业务</title></head><body>\n"
    "<h1>社会保险业务办理</h1><p>网上办理正常受理。</p>\n" + FILLER * 3 + "</body></html>\n"
).encode()
CLOSED_PAGE = (
    "<!doctype html><html><head><title>社保业务</title></head><body>\n"
    "<h1>系统维护中</h1><p>系统切换期间暂停办理。</p>\n" + FILLER * 3 + "</body></html>\n"
).encode()


def serve(fds: list[int]) -> None:
    """Serve the target pages on the listening sockets `fds` until SIGTERM."""
    import asyncio

    from aiohttp import web

    async def page_open(_request: web.Request) -> web.Response:
        return web.Response(body=OPEN_PAGE, content_type="text/html", charset="utf-8")

    async def page_closed(_request: web.Request) -> web.Response:
        return web.Response(body=CLOSED_PAGE, content_type="text/html", charset="utf-8")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/open", page_open)
        app.router.add_get("/closed", page_closed)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        context = None
        if os.environ.get("BENCH_TLS_CERT"):
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(os.environ["BENCH_TLS_CERT"], os.environ["BENCH_TLS_KEY"])
        for fd in fds:
            sock = socket.socket(fileno=fd)
            await web.SockSite(runner, sock, backlog=4096, ssl_context=context).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


def _canned(body: bytes) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def serve_raw(fds: list[int]) -> None:
    """The same two pages from a bare protocol: read up to the end of the request's head,
    answer, close. Loopback benchmarks only (no parsing beyond the path)."""
    import asyncio

    answers = {b"/open": _canned(OPEN_PAGE), b"/closed": _canned(CLOSED_PAGE)}
    missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.head = b""

        def data_received(self, data: bytes) -> None:
            if self.head is None:
                return  # /hang: read and never answered
            self.head += data
            if b"\r\n\r\n" not in self.head:
                if len(self.head) > 65536:
                    self.transport.close()
                return
            path = self.head.split(b" ", 2)[1] if self.head.count(b" ") >= 2 else b""
            path = path.split(b"?", 1)[0]
            if path == b"/hang":  # a hung server: the connection stays open, unanswered
                self.head = None
                return
            self.transport.write(answers.get(path, missing))
            self.transport.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        servers = [
            await loop.create_server(Answer, sock=socket.socket(fileno=fd), backlog=4096)
            for fd in fds
        ]
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        for server in servers:
            server.close()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


class Target:
    """The target on `hosts` loopback addresses (127.0.0.1, 127.0.0.2, ...), one port, served
    by `workers` separate processes.

    Several addresses stand for several hosts: tens of thousands of fresh connections a minute
    to a single address and port make the kernel search longer for a free source port (every
    closed connection waits in TIME_WAIT), a cost that real channels on many hosts do not have.
    """

    def __init__(
        self,
        workers: int = 1,
        hosts: int = 1,
        tls: tuple[Path, Path] | None = None,
        raw: bool = False,
    ) -> None:
        """`tls`: (certificate, key) files to serve HTTPS with; the bases are then https.
        `raw`: the bare protocol of `serve_raw` instead of aiohttp (plain HTTP only)."""
        self.socks: list[socket.socket] = []
        port = 0
        for index in range(hosts):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((f"127.0.0.{index + 1}", port))
            sock.listen(4096)
            port = sock.getsockname()[1]
            self.socks.append(sock)
        self.port = port
        scheme = "https" if tls else "http"
        self.bases = [f"{scheme}://127.0.0.{index + 1}:{port}" for index in range(hosts)]
        env = dict(os.environ)
        if tls:
            env["BENCH_TLS_CERT"], env["BENCH_TLS_KEY"] = map(str, tls)
        if raw:
            env["BENCH_RAW"] = "1"
        self.base = self.bases[0]
        fds = [sock.fileno() for sock in self.socks]
        self.procs = [
            subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), *map(str, fds)],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                env=env,
            )
            for _ in range(workers)
        ]
        try:
            for base in self.bases:
                wait_http(f"{base}/open", self.procs, context=_readiness_context() if tls else None)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        stop_processes(self.procs)
        for sock in self.socks:
            sock.close()

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _readiness_context():
    """Only asks whether the target answers: its certificate is checked by the probes."""
    import ssl

    return ssl._create_unverified_context()


def wait_http(url: str, procs: list[subprocess.Popen], timeout: float = 15.0, context=None) -> None:
    """Wait until `url` answers 200; fail if a process died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"process {proc.pid} exited with {proc.returncode}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=1, context=context) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def stop_processes(procs: list[subprocess.Popen], timeout: float = 5.0) -> None:
    """SIGTERM each process we started, then SIGKILL whatever is left after `timeout`."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


BLACKBOX = "prometheus-blackbox-exporter"
BLACKBOX_CONFIG = """\
modules:
  http_2xx:
    prober: http
    timeout: 10s
    http:
      preferred_ip_protocol: ip4
"""


def start_blackbox(directory: Path, http_extra: str = "") -> tuple[subprocess.Popen, str]:
    """The Debian exporter on a free loopback port with an `http_2xx` module (`http_extra`: more
    lines of its `http:` block, indented by six spaces); (process, base URL) once it answers."""
    import shutil

    binary = shutil.which(BLACKBOX)
    if binary is None:
        raise SystemExit(f"{BLACKBOX} is not installed (Debian: prometheus-blackbox-exporter)")
    config = directory / "blackbox.yml"
    config.write_text(BLACKBOX_CONFIG + http_extra)
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/-/healthy", [proc])
    except BaseException:
        stop_processes([proc])
        raise
    return proc, base


def run_command(config: Path, port: int, *extra: str) -> list[str]:
    """The command line of `channel-monitor run` on `config`, listening on 127.0.0.1:`port`."""
    return [
        sys.executable,
        "-m",
        "monitor",
        "run",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        *extra,
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_cpu_seconds(pid: int, reaped: bool = False) -> float:
    """utime + stime of a process (all its threads) from /proc/<pid>/stat; with `reaped`, also
    the CPU of the children it has waited for (cutime + cstime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # after the ")" that closes comm: state is field 3, utime 14, stime 15, cutime 16, cstime 17
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> set[int]:
    """`root` and its live descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


def tree_cpu_seconds(root: int) -> tuple[float, float]:
    """CPU of `root` and of its live descendants (utime + stime, and the children they reaped):
    (root, descendants)."""
    own = proc_cpu_seconds(root, reaped=True)
    others = 0.0
    for pid in process_tree(root) - {root}:
        with contextlib.suppress(OSError):
            others += proc_cpu_seconds(pid, reaped=True)
    return own, others


def vm_hwm_kib(pid: int, field: str = "VmHWM") -> int:
    """The peak resident set of a live process (VmHWM; or another `field` of its status, as
    VmRSS for the resident set now), KiB; 0 once it is gone."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return 0


def loadavg() -> str:
    """The 1-minute load average: other work on the machine skews every number."""
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def machine() -> dict[str, str]:
    """What the results were measured on."""
    import platform

    import aiohttp

    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
    }


# --- the plan the benchmarks monitor -----------------------------------------------------------

#: Four kinds of service, as in the 2022 cutover: (default, rules, path of the target page).
#: Every one is judged `ok` against the target, so the benchmark measures the steady state.
SERVICE_KINDS = (
    # social-insurance business, suspended during the freeze: the target shows the notice
    ("up", [("freeze", "down")], "/closed"),
    # medical-insurance premiums, kept open
    ("up", [("freeze", "up")], "/open"),
    # certificate printing: suspended, but open again inside the certificate window
    ("up", [("freeze", "down"), ("certificate-window", "up")], "/open"),
    # a service hall window: office hours (a recurring period), closed during the freeze
    ("down", [("office-hours", "up"), ("freeze", "down")], "/closed"),
)


def plan_toml(
    services: int,
    bases: list[str],
    interval: str = "30s",
    per_channel: int = 20,
    hung: float = 0.0,
) -> str:
    """A plan with `services` probed services on channels of `per_channel`, at `urls_of`;
    with `hung`, that share of them (spread evenly) at `/hang` instead.

    The freeze and the certificate window are placed around the current instant, so every
    expectation, grace and body check is live work, as during the real cutover.
    """
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC).replace(microsecond=0)
    urls = urls_of(services, bases)
    if hung > 0:
        every = max(1, round(1 / hung))
        urls = [
            url.rsplit("/", 1)[0] + "/hang" if index % every == every - 1 else url
            for index, url in enumerate(urls)
        ]

    def instant(days: int) -> str:
        return (now + timedelta(days=days)).isoformat()

    lines = [
        "[monitor]",
        'timezone = "Asia/Shanghai"',
        f'interval = "{interval}"',
        'timeout = "10s"',
        'grace = "5m"',
        "",
        "[periods.freeze]",
        f"start = {instant(-10)}",
        f"end = {instant(20)}",
        "",
        "[periods.certificate-window]",
        f"start = {instant(-5)}",
        f"end = {instant(10)}",
        "",
        "[periods.office-hours]",
        'weekdays = ["monday:friday"]',
        'times = [{ start_time = "08:30", end_time = "17:30" }]',
        "",
    ]
    for index in range(services):
        if index % per_channel == 0:
            channel = index // per_channel
            lines += [
                "[[channels]]",
                f'id = "channel-{channel}"',
                f'name = "渠道 {channel}"',
                'kind = "web"',
                'group = "online"',
                "",
            ]
        default, rules, _ = SERVICE_KINDS[index % len(SERVICE_KINDS)]
        expect = ", ".join(f'{{ during = "{p}", state = "{s}" }}' for p, s in rules)
        lines += [
            "[[channels.services]]",
            f'id = "service-{index}"',
            f'name = "业务 {index}"',
            f'default = "{default}"',
            f"expect = [{expect}]",
            f'probe = {{ url = "{urls[index]}", body_not_matches = "系统维护|暂停办理" }}',
            "",
        ]
    return "\n".join(lines)


def load_plan(text: str, directory: Path):
    """Write the plan to `directory` and load it the way `run` does."""
    from monitor.plan import Plan
    from monitor.plan.load import load_config

    path = directory / "channels.toml"
    path.write_text(text, encoding="utf-8")
    return Plan(load_config(path))


def urls_of(services: int, bases: list[str]) -> list[str]:
    """The target URL of each service in plan order: its kind's page, the hosts in turn."""
    return [
        bases[i % len(bases)] + SERVICE_KINDS[i % len(SERVICE_KINDS)][2] for i in range(services)
    ]


if __name__ == "__main__":
    (serve_raw if os.environ.get("BENCH_RAW") else serve)([int(fd) for fd in sys.argv[1:]])
