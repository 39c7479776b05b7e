"""What the scale bench relies on (bench/subscriptions.py): the store's bulk insert of confirmed
subscribers, and the fast composer, whose mails must read exactly as the email package's."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import pytest
from test_subscriptions import KEY, plan_with

from monitor.store import Mail, Store
from monitor.subscriptions.keys import Keys
from monitor.subscriptions.mail import Composer, email


def test_the_bulk_insert_keeps_subscribers_confirmed_with_their_choices(tmp_path: Path) -> None:
    keys = Keys(KEY)
    store = Store(tmp_path / "store.db")
    try:
        subs = store.subscribers
        requests = [keys.request(f"c{n}@example.cn", ("web/pension",)) for n in range(50)]
        assert subs.add_confirmed_many(requests, 1.0) == 50
        # an address already kept is left alone
        assert subs.add_confirmed_many([keys.request("C0@example.cn", ("web",))], 2.0) == 0
        assert subs.counts()["confirmed"] == 50
        chosen = subs.choosers(["web"])
        assert len(chosen) == 50 and set(map(tuple, chosen.values())) == {(("web", "pension"),)}
        kept = subs.all()
        assert {keys.open(s.address) for s in kept} == {f"c{n}@example.cn" for n in range(50)}
        assert all(s.confirmed_at == 1.0 for s in kept)
    finally:
        store.close()


def mail_of(kind: str, lang: str, address: bytes, ident: int) -> Mail:
    if kind == "confirm":
        payload = {"kind": "confirm", "choices": ["web/pension"]}
        key = f"confirm:{ident}:1"
    else:
        payload = {
            "kind": "plan",
            "at": "2022-07-19T08:30:00+08:00",
            "items": [
                {"channel": "web", "service": "pension", "change": "reopened"},
                {"channel": "web", "service": "card", "change": "reopened"},
            ],
        }
        key = "plan:2022-07-19T08:30:00+08:00"
    text = json.dumps(payload, ensure_ascii=False)
    return Mail(ident, ident, address, "email", lang, b"n" * 16, 1, key, text, (), 0)


@pytest.mark.parametrize("kind", ["plan", "confirm"])
@pytest.mark.parametrize("lang", ["zh", "en"])
def test_the_composer_writes_what_the_email_package_would(kind: str, lang: str) -> None:
    plan = plan_with(25)
    settings = plan.config.subscriptions
    assert settings is not None
    keys = Keys(KEY)
    composer = Composer(settings, keys)
    now = datetime(2022, 7, 19, 0, 30, 1, tzinfo=UTC)
    for ident in (1, 2):  # the second one of an event uses the shared part
        mail = mail_of(kind, lang, keys.seal(f"person{ident}@example.cn"), ident)
        to, raw = composer.compose(plan, mail, now)
        assert to == f"person{ident}@example.cn"
        assert b"\r\n\r\n" in raw and raw.isascii()
        fast = message_from_bytes(raw, policy=default)
        slow = email(plan, settings, keys, mail, now)
        for header in (
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
            "Auto-Submitted",
        ):
            assert str(fast[header]) == str(slow[header]), header
        assert fast.get_content() == slow.get_content()
    assert len(composer.shared) == (1 if kind == "plan" else 0)


def test_an_address_that_needs_quoting_is_made_by_the_email_package() -> None:
    plan = plan_with(25)
    settings = plan.config.subscriptions
    assert settings is not None
    keys = Keys(KEY)
    composer = Composer(settings, keys)
    now = datetime(2022, 7, 19, 0, 30, 1, tzinfo=UTC)
    odd = '"a b"@example.cn'
    _, raw = composer.compose(plan, mail_of("plan", "zh", keys.seal(odd), 3), now)
    assert composer.shared == {}, "not through the shared part"
    assert message_from_bytes(raw, policy=default)["To"].addresses[0].addr_spec == odd
