"""The report's files as other programs read them: its CSV as RFC 4180 says (CRLF after every
record, nothing after the last), its HTML with the landmarks a screen reader navigates by (one
`main`, a `header`, every piece of content inside a landmark, each section named by its
heading: axe's `landmark-one-main` and `region`)."""

from __future__ import annotations

import csv
import io
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_report import at, report_of, setup  # noqa: F401  (the hand-made plan and store)

from monitor.cli import main
from monitor.plan import Plan
from monitor.report.formats import as_csv, as_html


def check_rfc4180(text: str) -> list[list[str]]:
    """The records of `text`, after checking its line endings."""
    assert text.endswith("\r\n") and not text.endswith("\r\n\r\n")
    assert "\n" not in text.replace("\r\n", "")  # no bare LF anywhere
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows and all(rows), "an empty record"
    return rows


def test_the_csv_is_rfc_4180(setup: tuple[Plan, Path]) -> None:  # noqa: F811
    plan, db = setup
    rows = check_rfc4180(as_csv(report_of(plan, db)))
    assert rows[0][:2] == ["level", "channel"]
    assert len({len(row) for row in rows}) == 1


def test_the_command_writes_the_csv_as_made(
    setup: tuple[Plan, Path],  # noqa: F811
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    _, db = setup
    config = db.parent / "channels.toml"
    code = main(["report", "--config", str(config), "--format", "csv"])
    out = capsysbinary.readouterr().out.decode("utf-8")
    assert code == 0
    check_rfc4180(out)


class Landmarks(HTMLParser):
    """Where each piece of text in `body` sits: inside which landmarks, and the sections'
    names."""

    LANDMARKS = frozenset({"main", "header", "footer", "nav", "aside"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, str | None]]] = []
        self.counts: dict[str, int] = {}
        self.outside: list[str] = []
        self.ids: set[str] = set()
        self.labelled_by: list[str] = []
        self.headings_in_sections: list[int] = []
        self.in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "body":
            self.in_body = True
        if named.get("id"):
            self.ids.add(str(named["id"]))
        if tag in self.LANDMARKS or tag == "section":
            self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag == "section":
            self.labelled_by.append(str(named.get("aria-labelledby")))
            self.headings_in_sections.append(0)
        if tag in ("h2", "h3") and self.headings_in_sections:
            self.headings_in_sections[-1] += 1
        if tag not in ("br", "meta", "link"):
            self.stack.append((tag, named))

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if not self.in_body or not data.strip():
            return
        if not any(tag in self.LANDMARKS for tag, _ in self.stack):
            self.outside.append(data.strip())


def test_the_html_has_landmarks_and_every_content_inside_one(
    setup: tuple[Plan, Path],  # noqa: F811
) -> None:
    plan, db = setup
    parser = Landmarks()
    parser.feed(as_html(report_of(plan, db)))
    assert parser.counts.get("main") == 1  # landmark-one-main
    assert parser.counts.get("header") == 1
    assert parser.outside == []  # region: nothing outside a landmark
    assert parser.counts["section"] == 3  # the summary, then one per channel
    assert all(name in parser.ids for name in parser.labelled_by)  # each named by its heading
    assert all(parser.headings_in_sections)
