"""Citizens' subscriptions end to end, through a real SMTP server on 127.0.0.1 (aiosmtpd,
started and stopped here): the form post, the confirmation, a reminder, a paused and a
reopened mail with the RFC 8058 headers, the one-click unsubscribe that stops them, rate
limits, the cap on unconfirmed addresses, encryption at rest and no address in logs."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiosmtpd.smtp import SMTP as SMTPServer

from monitor.clock import ReplayClock
from monitor.judge import IncidentEvent
from monitor.plan import Plan
from monitor.plan.load import validate_config
from monitor.server import Server
from monitor.store import IncidentRecord, Store
from monitor.subscriptions import Keys, Subscriptions
from monitor.subscriptions.api import Limiter

ZONE = ZoneInfo("Asia/Shanghai")
ADDRESS = "Citizen.Wang@Example.cn"
KEY = Keys.generate()


@dataclass
class Relay:
    """What the local relay received, parsed."""

    messages: list[email.message.EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_DATA(self, _server, _session, envelope) -> str:
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.messages.append(
            email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        )
        return "250 OK"

    def take(self) -> list[email.message.EmailMessage]:
        taken, self.messages = self.messages, []
        return taken


def plan_with(port: int) -> Plan:
    service = {
        "id": "pension",
        "name": "养老保险关系转移",
        "name_en": "Pension transfer",
        "expect": [{"during": "freeze", "state": "down"}],
    }
    card = {"id": "card", "name": "社保卡", "name_en": "Social security card"}
    return Plan(
        validate_config(
            {
                "periods": {
                    "freeze": {
                        "title": "停机",
                        "start": datetime(2022, 6, 23, 9, 0),
                        "end": datetime(2022, 7, 19, 8, 30),
                    }
                },
                "channels": [
                    {
                        "id": "web",
                        "name": "湖北政务服务网",
                        "name_en": "Hubei e-gov",
                        "kind": "web",
                        "group": "online",
                        "services": [service, card],
                    }
                ],
                "subscriptions": {
                    "smtp": f"smtp://127.0.0.1:{port}",
                    "from": "湖北人社 <noreply@example.gov.cn>",
                    "public_url": "http://127.0.0.1:1",  # replaced by the test server's
                    "remind_before": ["1d"],
                    "sessions": 2,
                },
            }
        )
    )


@dataclass
class World:
    relay: Relay
    subs: Subscriptions
    store: Store
    clock: ReplayClock
    url: str
    http: aiohttp.ClientSession
    db: Path


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    relay = Relay()
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(lambda: SMTPServer(relay), "127.0.0.1", 0)
    port = smtp.sockets[0].getsockname()[1]
    plan = plan_with(port)
    store = Store(tmp_path / "store.db")
    clock = ReplayClock(datetime(2022, 6, 22, 8, 59, tzinfo=ZONE))
    server = Server("127.0.0.1", 0, lambda: ({}, 200))
    settings = plan.config.subscriptions
    assert settings is not None
    subs = Subscriptions(lambda: plan, store, clock, settings, Keys(KEY))
    server.add(subs.part())
    await server.start()
    url = f"http://127.0.0.1:{server.port}"
    # the links in mails point at this server
    subs.settings = settings.model_copy(update={"public_url": url})
    subs.sender.settings = subs.settings
    async with aiohttp.ClientSession() as http:
        try:
            yield World(relay, subs, store, clock, url, http, tmp_path / "store.db")
        finally:
            await subs.close()
            await server.stop()
            store.close()
            smtp.close()
            await smtp.wait_closed()


async def drain(world: World) -> list[email.message.EmailMessage]:
    """Send what is due (the sender's own step, without its timer) and return what arrived."""
    while await world.subs.sender.drain_once():
        pass
    return world.relay.take()


def unsubscribe_link(message: email.message.EmailMessage) -> str:
    header = str(message["List-Unsubscribe"])
    assert header.startswith("<") and header.endswith(">")
    assert str(message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    link = header[1:-1]
    assert link in message.get_content(), "the link is visible in the text too"
    return link


async def subscribe(world: World, address: str = ADDRESS, **extra) -> aiohttp.ClientResponse:
    form = {"email": address, "services": ["web/pension", "web"], "lang": "zh", **extra}
    data = [(k, v) for k, vs in form.items() for v in (vs if isinstance(vs, list) else [vs])]
    async with world.http.post(f"{world.url}/api/subscriptions", data=data) as answer:
        await answer.read()
        return answer


async def confirmed(world: World, address: str = ADDRESS) -> str:
    """Subscribe and confirm; the unsubscribe link of the confirmation."""
    assert (await subscribe(world, address)).status == 202
    (confirmation,) = await drain(world)
    link = re.search(r"http://\S+/confirm/\S+", confirmation.get_content()).group(0)
    async with world.http.post(link) as answer:
        assert answer.status == 200
    return unsubscribe_link(confirmation)


async def test_form_confirmation_reminder_paused_reopened_and_one_click_out(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    answer = await subscribe(world)
    assert answer.status == 202
    (confirmation,) = await drain(world)
    assert world.relay.envelopes[0][1] == [ADDRESS.lower()]
    assert "确认" in str(confirmation["Subject"])
    links = re.findall(r"http://\S+", confirmation.get_content())
    confirm = next(link for link in links if "/confirm/" in link)
    assert confirm.startswith(f"{world.url}/api/subscriptions/confirm/")
    # a scanner that opens the link confirms nothing: no mail for a planned change yet
    async with world.http.get(confirm) as page:
        assert page.status == 200 and 'method="post"' in await page.text()
    await world.subs.step(datetime(2022, 6, 22, 8, 59, 30, tzinfo=ZONE))
    assert await drain(world) == []
    async with world.http.post(confirm) as done:
        assert done.status == 200
    # a day before the freeze: the reminder (cursor from 8:59 - 15 min; 09:00 +1d is in it)
    await world.subs.step(datetime(2022, 6, 22, 9, 0, 2, tzinfo=ZONE))
    (reminder,) = await drain(world)
    assert "提醒" in str(reminder["Subject"]) and "养老保险关系转移" in str(reminder["Subject"])
    assert "6月23日 09:00" in reminder.get_content()
    unsubscribe_link(reminder)
    # the freeze begins: paused, with the plan's own reopening instant
    await world.subs.step(datetime(2022, 6, 23, 9, 0, 1, tzinfo=ZONE))
    (paused,) = await drain(world)
    assert "暂停" in str(paused["Subject"])
    assert "7月19日 08:30" in paused.get_content()
    # stepping over the same instant again (a restart) queues nothing twice
    world.subs.cursor = datetime(2022, 6, 23, 8, 0, tzinfo=ZONE)
    await world.subs.step(datetime(2022, 6, 23, 9, 0, 2, tzinfo=ZONE))
    assert await drain(world) == []
    # a day before the end, the reminder of the reopening; then the reopening itself
    await world.subs.step(datetime(2022, 7, 19, 8, 30, 1, tzinfo=ZONE))
    reopened, reminded = sorted(await drain(world), key=lambda m: "提醒" in str(m["Subject"]))
    assert "提醒" in str(reminded["Subject"]) and "恢复" in str(reminded["Subject"])
    assert "【恢复】" in str(reopened["Subject"])
    link = unsubscribe_link(reopened)
    # one-click: the mail client's POST (RFC 8058) deletes the subscription
    async with world.http.post(link, data="List-Unsubscribe=One-Click") as out:
        assert out.status == 200
    assert world.store.subscribers.all() == []
    world.subs.cursor = datetime(2022, 6, 22, 0, 0, tzinfo=ZONE)
    await world.subs.step(datetime(2022, 7, 20, tzinfo=ZONE))
    assert await drain(world) == [], "nothing after unsubscribing"
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("monitor"))
    assert "subscriptions:" in ours
    assert ADDRESS.lower() not in ours.lower()


async def test_one_mail_per_subscriber_per_instant_and_incidents(world: World) -> None:
    await confirmed(world)
    # both services of the channel chosen (one by name, one as the whole channel): the
    # pension pauses alone; an incident on the card is told, without operators' detail
    world.subs.cursor = datetime(2022, 6, 23, 8, 59, tzinfo=ZONE)
    await world.subs.step(datetime(2022, 6, 23, 9, 0, 1, tzinfo=ZONE))
    assert len(await drain(world)) == 1
    record = IncidentRecord(
        7,
        "web",
        "card",
        "unexpected_down",
        datetime(2022, 6, 24, tzinfo=ZONE),
        None,
        "HTTP 502 from 10.0.0.7",
        None,
        "up",
        None,
    )
    event = IncidentEvent(
        "opened", "unexpected_down", record.opened_at, record.reason, "up", None, None
    )
    with world.store.db:
        world.subs.part().incident_hook(record, event)
    (down,) = await drain(world)
    assert "暂停" in str(down["Subject"]) and "社保卡" in str(down["Subject"])
    assert "502" not in down.get_content() and "10.0.0.7" not in down.get_content()


async def test_english_and_json(world: World) -> None:
    body = {"email": "someone@example.org", "services": ["web/card"], "lang": "en"}
    async with world.http.post(f"{world.url}/api/subscriptions", json=body) as answer:
        assert answer.status == 202
        assert "someone" not in await answer.text()
    (confirmation,) = await drain(world)
    assert "confirm" in str(confirmation["Subject"]).lower()
    assert "Social security card" in confirmation.get_content()


@pytest.mark.parametrize(
    ("form", "words"),
    [
        ({"email": "not-an-address"}, "not an e-mail address"),
        ({"email": ""}, "missing"),
        ({"services": ["web/nothing"]}, "not in the plan"),
        ({"services": []}, "at least one"),
        ({"lang": "fr"}, "zh or en"),
    ],
)
async def test_bad_input_is_a_400_with_a_sentence(world: World, form: dict, words: str) -> None:
    data = {"email": "a@example.cn", "services": ["web"], "lang": "zh", **form}
    pairs = [(k, v) for k, vs in data.items() for v in (vs if isinstance(vs, list) else [vs])]
    async with world.http.post(f"{world.url}/api/subscriptions", data=pairs) as answer:
        assert answer.status == 400
        assert words in (await answer.json())["error"]


async def test_bodies_are_bounded(world: World) -> None:
    big = "email=a@example.cn&services=web&lang=zh&pad=" + "x" * 10_000
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with world.http.post(
        f"{world.url}/api/subscriptions", data=big, headers=headers
    ) as answer:
        assert answer.status == 413


async def test_rate_limits_and_the_cap_on_unconfirmed(world: World) -> None:
    api = world.subs.api
    api.per_address = Limiter(2, 3600.0)
    assert (await subscribe(world)).status == 202
    assert (await subscribe(world)).status == 202
    limited = await subscribe(world, ADDRESS.upper())  # the same address, spelt otherwise
    assert limited.status == 429 and int(limited.headers["Retry-After"]) > 0
    api.per_client = Limiter(1, 600.0)
    assert (await subscribe(world, "b@example.cn")).status == 202
    assert (await subscribe(world, "c@example.cn")).status == 429
    api.per_client = Limiter(100, 600.0)
    api.pending_cap = 2
    assert (await subscribe(world, "d@example.cn")).status == 429, "two wait already"


async def test_addresses_are_encrypted_at_rest(world: World) -> None:
    await confirmed(world)
    world.store.close()
    raw = b"".join(p.read_bytes() for p in world.db.parent.glob("store.db*"))
    assert b"example.cn" not in raw.lower() and b"citizen" not in raw.lower()
    world.store.db = None  # closed: the fixture's close does nothing more
    world.store.close = lambda: None  # type: ignore[method-assign]


async def test_an_expired_confirmation_confirms_nothing(world: World) -> None:
    assert (await subscribe(world)).status == 202
    (confirmation,) = await drain(world)
    link = re.search(r"http://\S+/confirm/\S+", confirmation.get_content()).group(0)
    world.store.db.execute("UPDATE subscribers SET created_at = created_at - 49 * 3600")
    world.store.db.commit()
    async with world.http.post(link) as answer:
        assert answer.status == 404
    assert world.store.subscribers.all() == []


def test_the_planner_answers_are_the_plans() -> None:
    plan = plan_with(25)
    ref = plan.service("web", "pension")
    start = datetime(2022, 6, 23, 9, 0, tzinfo=ZONE)
    from monitor.subscriptions.events import items_at

    (item,) = items_at(plan, plan.transitions(start, start + timedelta(seconds=1)))
    assert item["reopens"] == plan.next_up(ref, start).isoformat()


def test_operators_commands_list_masked_export_and_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from monitor.cli import main
    from monitor.store import Request

    monkeypatch.setenv("CHANNEL_MONITOR_SUBSCRIPTION_KEY", KEY)
    keys, db = Keys(KEY), tmp_path / "m.db"
    store = Store(db)
    nonce = keys.nonce()
    store.subscribers.add_confirmed(
        Request(
            keys.lookup(ADDRESS),
            keys.seal(ADDRESS.lower()),
            "email",
            "zh",
            ("web",),
            nonce,
            keys.unsubscribe_hash(nonce),
        ),
        1.0,
    )
    store.close()
    assert main(["subscription", "list", "--db", str(db)]) == 0
    listed = capsys.readouterr().out
    assert "c***@example.cn" in listed and "wang" not in listed
    assert main(["subscription", "export", "--db", str(db), "--email", ADDRESS]) == 0
    assert ADDRESS.lower() in capsys.readouterr().out
    assert main(["subscription", "delete", "--db", str(db), "--email", ADDRESS]) == 0
    assert main(["subscription", "list", "--db", str(db)]) == 0
    assert capsys.readouterr().out.strip().endswith("已删除")


def test_every_page_carries_a_form_that_posts_to_the_api(tmp_path: Path) -> None:
    from html.parser import HTMLParser

    from monitor.site.render import render

    plan = plan_with(25)
    render(plan, tmp_path / "site", datetime(2022, 6, 24, tzinfo=ZONE))
    pages = [p for p in (tmp_path / "site").rglob("*.html")]
    assert len(pages) >= 2  # both languages (one channel: no channel pages of its own)

    class Forms(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.forms: list[dict] = []
            self.inputs: list[dict] = []

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag == "form":
                self.forms.append(dict(attrs))
            elif tag == "input":
                self.inputs.append(dict(attrs))

    for page in pages:
        parsed = Forms()
        text = page.read_text()
        parsed.feed(text)
        (form,) = parsed.forms
        assert form == {"method": "post", "action": "http://127.0.0.1:1/api/subscriptions"}
        names = {i.get("name") for i in parsed.inputs}
        assert {"email", "services", "lang"} <= names
        assert "form-action http://127.0.0.1:1" in text
        assert "<script" not in text.split('id="subscribe"')[1].split("</form>")[0]
