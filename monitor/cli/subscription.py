"""`channel-monitor subscription key|list|export|delete|add`: operators' side of citizens'
subscriptions.

`list` shows no address (only a masked one), `export` shows them in clear for a person's
request to see what is kept of them, `delete` removes a subscriber and everything of it, and
`add --webhook` subscribes a partner's system (never offered on the public API, which would let
anyone make the monitor call any URL) and prints, once, the secret its requests are signed with.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from monitor.cli.common import EXIT_BAD_INPUT, EXIT_OK, UsageError, load_plan

if TYPE_CHECKING:
    from monitor.store import Store
    from monitor.subscriptions.keys import Keys


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """The `subscription` family of commands, beside the others in the parser."""
    p = sub.add_parser("subscription", help="citizens' subscriptions: key, list, export, ...")
    actions = p.add_subparsers(dest="subscription_command", required=True, metavar="ACTION")
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", default="monitor.db", help="the store (default: monitor.db)")
    actions.add_parser("key", help="print a new CHANNEL_MONITOR_SUBSCRIPTION_KEY")
    actions.add_parser("list", parents=[db], help="every subscriber, addresses masked")
    p = actions.add_parser("export", parents=[db], help="subscribers with their addresses (JSON)")
    p.add_argument("--email", help="only this address (a person's request for their data)")
    p = actions.add_parser("delete", parents=[db], help="delete a subscriber and all of it")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--id", type=int, help="the subscriber's number from `list`")
    who.add_argument("--email", help="the subscriber's address")
    p = actions.add_parser(
        "add", parents=[common, db], help="subscribe a partner's webhook (signed requests)"
    )
    p.add_argument("--webhook", required=True, metavar="URL", help="http(s) URL to POST to")
    p.add_argument(
        "--service",
        action="append",
        required=True,
        metavar="CHANNEL[/SERVICE]",
        help="a service, or a whole channel (repeat for more)",
    )
    p.add_argument("--lang", choices=("zh", "en"), default="zh")
    for action in actions.choices.values():
        action.set_defaults(func=cmd_subscription)


def _mask(address: str) -> str:
    local, at, domain = address.partition("@")
    if not at:  # a webhook: its host only
        return address.split("/")[2] if "//" in address else "?"
    return f"{local[:1]}***@{domain}"


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC).isoformat()


def cmd_subscription(args: argparse.Namespace) -> int:
    """One action of the family; the store and the keys are imported only here, so the
    parser stays as light as the other commands need it."""
    from monitor.store import Store
    from monitor.subscriptions.keys import KeyProblem, Keys

    action = args.subscription_command
    if action == "key":
        print(Keys.generate())
        return EXIT_OK
    try:
        keys = Keys.from_environment()
    except KeyProblem as exc:
        print(f"channel-monitor: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    store = Store(args.db)
    try:
        subs = store.subscribers
        if action == "list":
            for s in subs.all():
                state = "confirmed" if s.confirmed_at else "unconfirmed"
                print(
                    f"{s.id}\t{s.medium}\t{_mask(keys.open(s.address))}\t{s.lang}\t{state}\t"
                    f"{','.join(s.choices)}"
                )
        elif action == "export":
            wanted = keys.lookup(args.email) if args.email else None
            only = subs.find(wanted) if wanted else None
            rows = [
                {
                    "id": s.id,
                    "medium": s.medium,
                    "address": keys.open(s.address),
                    "lang": s.lang,
                    "services": list(s.choices),
                    "confirmed_at": _iso(s.confirmed_at),
                    "created_at": _iso(s.created_at),
                }
                for s in subs.all()
                if wanted is None or s.id == only
            ]
            print(json.dumps(rows, ensure_ascii=False, indent=2))
        elif action == "delete":
            ident = args.id if args.id is not None else subs.find(keys.lookup(args.email))
            if ident is None or not subs.delete(ident):
                raise UsageError("no such subscriber / 没有这个订阅者")
            print(f"subscriber {ident} deleted / 已删除")
        elif action == "add":
            return _add(args, keys, store)
    finally:
        store.close()
    return EXIT_OK


def _add(args: argparse.Namespace, keys: Keys, store: Store) -> int:
    from monitor.store import Request

    url = args.webhook.strip()
    if not url.startswith(("http://", "https://")) or len(url) > 2000:
        raise UsageError("--webhook takes an http:// or https:// URL")
    plan = load_plan(args.config)
    for choice in args.service:
        channel, slash, service = choice.partition("/")
        known = any(c.id == channel for c in plan.config.channels)
        if not known or (slash and plan.find((channel, service)) is None):
            raise UsageError(f"--service {choice}: not in the plan")
    nonce = keys.nonce()
    ident = store.subscribers.add_confirmed(
        Request(
            lookup=keys.lookup(url),
            address=keys.seal(url),
            medium="webhook",
            lang=args.lang,
            choices=tuple(dict.fromkeys(args.service)),
            nonce=nonce,
            unsubscribe_hash=keys.unsubscribe_hash(nonce),
        ),
        time.time(),
    )
    print(f"subscriber {ident}: requests are signed (X-Channel-Monitor-Signature) with the secret")
    print(keys.webhook_secret(nonce))
    return EXIT_OK
