"""100,000 subscribers mailed at the 08:30 reopening, while 1,000 probes keep their schedule.

    python bench/subscriptions.py [--subscribers 100000] [--services 1000] [--interval 10]
                                  [--sessions 8] [--rate 1000] [--lead 60]

The monitor is `run`'s own composition root (`monitor.daemon.Daemon`, built and started here
as `cmd_run` does, on the loop `run` uses) with the shipped 2022 plan, every probe of it taken
out (nothing leaves this machine), plus `--services` http services at `--interval` against the
bare local target of `common.py`, and `[subscriptions]` pointing at a counting relay: aiosmtpd
on 127.0.0.1 in a process of its own, which counts messages and sessions and keeps nothing.

`--subscribers` confirmed subscribers are seeded before the start through the store's bulk
insert (`Subscribers.add_confirmed_many`, addresses sealed as the API seals them), each of one
of the 53 services the plan reopens at 2022-07-25 08:30. The monitor's clock is the real clock
shifted so that it starts `--lead` seconds before 08:30 (a `RealClock` whose `now` adds an
offset: the planner then runs its real-time loop, as in production, and wakes at 08:30 by
itself). Reminders are off (`remind_before = []`): only the reopened mails are counted.

Reported: mails a second (first to last at the relay), the time from 08:30 to the last mail,
the relay's sessions, the scheduler's lag p99 read from `/healthz` every 2 s while mails are
sent (its window is the last 10,000 probes, 100 s at 100 probes a second), the peak RSS of the
monitor and of the relay, and the 1-minute load average before and after. Loopback only; every
process it starts is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
from common import Target, loadavg, machine, vm_hwm_kib

from monitor.cli import loop_factory
from monitor.clock import RealClock
from monitor.daemon import Daemon
from monitor.plan import Plan
from monitor.plan.load import validate_config
from monitor.store import Store
from monitor.subscriptions.keys import ENV, Keys

SHIPPED = Path(__file__).resolve().parent.parent / "monitor" / "channels.toml"
ZONE = ZoneInfo("Asia/Shanghai")
REOPENING = datetime(2022, 7, 25, 8, 30, tzinfo=ZONE)
#: How long after the last mail is due the bench waits before it gives up.
PATIENCE = 900.0


class Shifted(RealClock):
    """The wall clock moved by a fixed offset: real time passes, on another day."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


# --- the relay ---------------------------------------------------------------------------------


def relay_main(sock: socket.socket, counts) -> None:
    """The counting relay (a process of its own): every message answered 250 and counted."""
    from aiosmtpd.smtp import SMTP

    messages, sessions, first, last = counts

    class Counting:
        async def handle_DATA(self, _server, _session, _envelope) -> str:
            now = time.time()
            with messages.get_lock():
                messages.value += 1
            if not first.value:
                first.value = now
            last.value = now
            return "250 OK"

    class Session(SMTP):
        def connection_made(self, transport) -> None:
            with sessions.get_lock():
                sessions.value += 1
            super().connection_made(transport)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Session(Counting()), sock=sock)
        async with server:
            await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())


class Relay:
    """The counting relay's process and what it counted."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.counts = (
            ctx.Value("q", 0),
            ctx.Value("q", 0),
            ctx.Value("d", 0.0, lock=False),
            ctx.Value("d", 0.0, lock=False),
        )
        self.proc = ctx.Process(target=relay_main, args=(self.sock, self.counts), daemon=True)
        self.proc.start()

    @property
    def messages(self) -> int:
        return self.counts[0].value

    @property
    def sessions(self) -> int:
        return self.counts[1].value

    @property
    def span(self) -> tuple[float, float]:
        return self.counts[2].value, self.counts[3].value

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
        self.sock.close()


# --- the plan and the subscribers ---------------------------------------------------------------


def plan_of(args: argparse.Namespace, base: str, relay_port: int) -> Plan:
    """The shipped plan without its probes, `--services` local http services, the relay."""
    data = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))
    for channel in data["channels"]:
        for service in channel["services"]:
            service.pop("probe", None)
    data["monitor"]["interval"] = f"{args.interval}s"  # the shipped services are not probed
    per_channel = 20
    for first in range(0, args.services, per_channel):
        data["channels"].append(
            {
                "id": f"bench-{first // per_channel}",
                "name": f"压测渠道 {first // per_channel}",
                "kind": "web",
                "group": "online",
                "services": [
                    {
                        "id": f"s{n}",
                        "name": f"压测业务 {n}",
                        "probe": {"url": f"{base}/open"},
                    }
                    for n in range(first, min(first + per_channel, args.services))
                ],
            }
        )
    data["subscriptions"] = {
        "smtp": f"smtp://127.0.0.1:{relay_port}",
        "from": "湖北人社 <noreply@example.gov.cn>",
        "public_url": "https://status.example.gov.cn",
        "remind_before": [],
        "sessions": args.sessions,
        "rate": args.rate,
    }
    return Plan(validate_config(data))


def reopening(plan: Plan) -> list[str]:
    """`channel/service` of every service the plan reopens at 08:30 (the plan's answer)."""
    found = plan.transitions(REOPENING - timedelta(seconds=1), REOPENING + timedelta(seconds=1))
    return [f"{t.channel}/{t.service}" for t in found if t.to_state == "up"]


def seed(db: Path, keys: Keys, services: list[str], count: int) -> float:
    """`count` confirmed subscribers, each of one reopening service; the seconds it took."""
    began = time.monotonic()
    store = Store(db)
    try:
        requests = (
            keys.request(f"citizen{n}@example.cn", (services[n % len(services)],))
            for n in range(count)
        )
        added = store.subscribers.add_confirmed_many(requests, time.time())
    finally:
        store.close()
    assert added == count, f"seeded {added} of {count}"
    return time.monotonic() - began


# --- the run ------------------------------------------------------------------------------------


async def measure(args: argparse.Namespace, plan: Plan, relay: Relay, directory: Path) -> dict:
    lead = timedelta(seconds=args.lead)
    clock = Shifted(REOPENING - lead - datetime.now(UTC))
    opens_at = time.time() + args.lead  # when the shifted clock reads 08:30
    daemon = Daemon(plan, directory / "monitor.db", directory / "site", port=0, clock=clock)
    healthz: list[tuple[float, dict]] = []
    await daemon.start()
    try:
        url = f"http://127.0.0.1:{daemon.port}/healthz"
        async with aiohttp.ClientSession() as http:
            deadline = opens_at + PATIENCE
            while relay.messages < args.subscribers and time.time() < deadline:
                async with http.get(url) as answer:
                    healthz.append((time.time(), await answer.json()))
                await asyncio.sleep(2)
            async with http.get(url) as answer:
                healthz.append((time.time(), await answer.json()))
        rss_hwm = vm_hwm_kib(os.getpid())
        delivered = daemon.subscriptions.sender.delivered if daemon.subscriptions else 0
        counts = await daemon.store.call(daemon.store.subscribers.counts)
    finally:
        await daemon.stop()
    first, last = relay.span
    sending = [b for at, b in healthz if opens_at <= at]
    lags = [b["scheduler_lag_p99_seconds"] for b in sending]
    return {
        "mails": relay.messages,
        "delivered_by_monitor": delivered,
        "outbox": counts,
        "sessions": relay.sessions,
        "first_mail_after_0830_s": first - opens_at if first else None,
        "last_mail_after_0830_s": last - opens_at if last else None,
        "mails_per_s": relay.messages / (last - first) if last > first else None,
        "lag_p99_s_max": max(lags, default=None),
        "lag_p99_s_median": sorted(lags)[len(lags) // 2] if lags else None,
        "judged": healthz[-1][1]["observations_judged"] if healthz else 0,
        "monitor_hwm_mib": rss_hwm / 1024,
        "relay_hwm_mib": vm_hwm_kib(relay.proc.pid) / 1024 if relay.proc.pid else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--lead", type=float, default=60.0)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    load_before = loadavg()
    relay = Relay()
    try:
        with Target(raw=True) as target, tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            plan = plan_of(args, target.base, relay.port)
            services = reopening(plan)
            key = Keys.generate()
            os.environ[ENV] = key
            seeded = seed(directory / "monitor.db", Keys(key), services, args.subscribers)
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                result = runner.run(measure(args, plan, relay, directory))
    finally:
        relay.close()
    result.update(
        {
            "reopening_services": len(services),
            "subscribers": args.subscribers,
            "seed_s": seeded,
            "probed_services": args.services,
            "interval_s": args.interval,
            "smtp_sessions_configured": args.sessions,
            "rate_configured": args.rate,
            "load_before": load_before,
            "load_after": loadavg(),
            **machine(),
        }
    )
    print(json.dumps(result, indent=2, ensure_ascii=False))
    last = result["last_mail_after_0830_s"]
    ok = result["mails"] >= args.subscribers and last is not None and last <= 300
    print(
        f"{result['mails']} of {args.subscribers} mails, the last {last or float('nan'):.0f} s "
        f"after 08:30 ({'within' if ok else 'NOT within'} 5 minutes); lag p99 max "
        f"{result['lag_p99_s_max']} s",
        file=sys.stderr,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
