"""`report`: planned against observed, from the store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from monitor.cli.common import (
    EXIT_OK,
    UsageError,
    config_dir,
    load_plan,
    parse_option,
)


def cmd_report(args: argparse.Namespace) -> int:
    """Planned against observed from the store, read-only; every format to standard output."""
    from monitor.fields import parse_duration
    from monitor.report import MAX_COVER, ReportError, build_report, open_readonly
    from monitor.report.formats import render
    from monitor.store import SQLiteError

    plan = load_plan(args.config)
    db_path = Path(args.db) if args.db else config_dir(args) / "monitor.db"
    start = parse_option(args.from_, plan, "--from") if args.from_ else None
    end = parse_option(args.until, plan, "--until") if args.until else None
    cover = None
    if args.cover:
        try:
            cover = parse_duration(args.cover)
        except ValueError as exc:
            raise UsageError(f"--cover: {exc}") from None
        if cover.total_seconds() <= 0:
            raise UsageError("--cover: expected a duration above zero")
        if cover > MAX_COVER:
            raise UsageError(
                f"--cover: expected at most {MAX_COVER.days}d "
                f"(一次观测最多代表 {MAX_COVER.days} 天)"
            )
    try:
        db = open_readonly(db_path)
        try:
            result = build_report(plan, db, start, end, cover=cover, resolution=args.resolution)
        finally:
            db.close()
    except ReportError as exc:
        raise UsageError(str(exc)) from None
    except SQLiteError as exc:
        raise UsageError(f"--db {db_path}: cannot read the store ({exc})") from None
    text = render(result, args.format)
    # written as made: `print` would add a bare LF after the CSV's last CRLF (an empty record)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


# --- demo ----------------------------------------------------------------------------------
