"""The checks every HTML page of a rendered site must pass, written once and run over every
page (the index in both languages and, for a large plan, every channel page): language and
its alternates, one `<h1>`, the skip link, labelled sections, unique ids, icons hidden from
screen readers, zoned times, no request leaving the site and no link to a missing file."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit


class Page(HTMLParser):
    """What the checks look at in one page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.ids: list[str] = []
        self.times: list[tuple[str, str]] = []
        self._time: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if a.get("id"):
            self.ids.append(a["id"])
        if tag == "time":
            self._time = a.get("datetime") or ""

    def handle_data(self, data: str) -> None:
        if self._time is not None:
            self.times.append((self._time, data))
            self._time = None

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]


def _target(site: Path, page: Path, href: str) -> Path:
    return (page.parent / urlsplit(href).path).resolve()


def check_page(site: Path, path: Path) -> Page:
    """Assert everything a page of the site must be; returns the parsed page."""
    name = str(path.relative_to(site))
    html = path.read_text("utf-8")
    page = Page(html)
    english = name.startswith("en/")
    assert page.all("html")[0].get("lang") == ("en" if english else "zh-CN"), name
    assert len(page.all("h1")) == 1, name
    assert any(
        m.get("http-equiv") == "Content-Security-Policy" and "default-src 'none'" in m["content"]
        for m in page.all("meta")
    ), name
    assert len(page.ids) == len(set(page.ids)), f"{name}: duplicate ids"
    assert page.all("a")[0].get("href") == "#main" and "main" in page.ids, name
    for section in page.all("section"):
        assert section.get("aria-labelledby") in page.ids or section.get("aria-label"), name
    for svg in page.all("svg"):
        assert svg.get("aria-hidden") == "true" or svg.get("role") == "img", name
    alternates = {
        a.get("hreflang"): a["href"] for a in page.all("link") if a.get("rel") == "alternate"
    }
    assert set(alternates) >= {"zh-CN", "en", "x-default"}, name
    here = {"zh-CN": not english, "en": english}
    for lang, href in alternates.items():
        if lang in here:
            assert (_target(site, path, href) == path.resolve()) == here[lang], (name, href)
    links = [a.get("href") for t, a in page.tags if t in ("a", "link") and a.get("href")]
    links += [a.get("src") for t, a in page.tags if a.get("src")]
    for href in links:
        assert not re.match(r"(?:[a-z]+:)?//", href), f"{name}: {href} leaves the site"
        if href.startswith("#"):
            assert href[1:] in page.ids, f"{name}: {href}"
        elif not href.startswith("data:"):
            target = _target(site, path, href)
            assert target.is_relative_to(site.resolve()) and target.is_file(), f"{name}: {href}"
    for stamp, text in page.times:
        if "T" in stamp:  # an instant: offset in the attribute, zone and HH:MM in the text
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d[+-]\d\d:\d\d", stamp), name
            assert re.search(r"(?<!\d)\d\d:\d\d(?!\d)", text), (name, text)
            assert "UTC" in text or "时间" in text, (name, text)
        else:
            assert re.fullmatch(r"\d{4}-\d\d-\d\d", stamp), name
    return page


def check_site(site: Path) -> list[Path]:
    """Run `check_page` over every HTML page of the site; returns the pages checked."""
    pages = sorted(site.rglob("*.html"))
    assert site / "index.html" in pages and site / "en" / "index.html" in pages
    for path in pages:
        check_page(site, path)
    return pages
