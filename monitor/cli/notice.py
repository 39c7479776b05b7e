"""`notice add|update|list|validate`: operators' notices in `notices.toml`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from monitor.cli.common import (
    EXIT_OK,
    config_dir,
    instant,
    load_plan,
    local,
    notices_file,
    store_incidents,
)
from monitor.clock import RealClock
from monitor.table import render_table


def cmd_notice(args: argparse.Namespace) -> int:
    """Validate, list, add to or update the notices file; nothing is written unless the
    result validates."""
    from monitor import notices

    plan = load_plan(args.config)
    path = notices_file(args)
    db = Path(args.db) if args.db else config_dir(args) / "monitor.db"
    incidents = store_incidents(db)
    if args.notice_command == "add":
        incident = args.incident
        notices.add_notice(
            path,
            plan,
            ident=args.id,
            title=args.title,
            title_en=args.title_en,
            services=args.service or (),
            incident=incident,
            notify=args.notify,
            incidents=incidents,
        )
        print(f"{path}: notice {args.id} added; it shows once `notice update` posts an update")
        return EXIT_OK
    if args.notice_command == "update":
        at = instant(args, plan)
        item, kept = notices.add_update(
            path,
            plan,
            ident=args.id,
            status=args.status,
            text=args.text,
            text_en=args.text_en,
            at=at,
            incidents=incidents,
        )
        print(
            f"{path}: notice {args.id}: update {len(item.updates)} ({args.status}) at "
            f"{local(plan, at.isoformat())}"
        )
        if not kept:
            print(
                f"{path}: the file was not laid out as [[notices]] tables, so it was written "
                "anew: its comments were not kept",
                file=sys.stderr,
            )
        return EXIT_OK
    loaded = notices.load_notices(path, plan, incidents)
    if args.notice_command == "validate":
        print(f"{path}: OK: {len(loaded.notices)} notice(s)")
        return EXIT_OK
    now = RealClock().now()
    rows = []
    for item in loaded.notices:
        latest = item.latest(now)
        rows.append(
            [
                item.id,
                item.title,
                latest.status if latest else "(not posted)",
                local(plan, latest.at.isoformat()) if latest else "-",
                "active" if item.active(now) else "-",
                "yes" if item.notify else "no",
            ]
        )
    print(render_table(["id", "title", "status", "latest", "shown", "notify"], rows))
    return EXIT_OK


# --- push ----------------------------------------------------------------------------------
