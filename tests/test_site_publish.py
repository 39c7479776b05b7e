"""Publishing without a wait on the disk per file: one flush before the swap, and the files
already published linked, not written again (bench/render_cli.py measures what it buys)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import real_plan
from site_data import DURING_LATE, busy_store

from monitor.site import publish as publish_module
from monitor.site.publish import MARKER, publish, work_folder
from monitor.site.render import render_from


def tree(site: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(site)): path.read_bytes()
        for path in sorted(site.rglob("*"))
        if path.is_file()
    }


def test_a_new_render_links_the_published_files_it_would_write_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`render` is a new process each time, with no record of what it published: it reads the
    published folder and links each file whose bytes are the same. The site is byte for byte
    the one a render into an empty folder gives."""
    plan = real_plan()
    db = busy_store(tmp_path / "monitor.db")
    site, fresh = tmp_path / "site", tmp_path / "fresh"
    render_from(plan, site, DURING_LATE, db)
    first = {p: (site / p).stat().st_ino for p in tree(site)}
    monkeypatch.setattr(publish_module, "_published", {})  # as a new process
    later = DURING_LATE + timedelta(seconds=30)
    render_from(plan, site, later, db)
    render_from(plan, fresh, later, db)
    assert tree(site) == tree(fresh)
    badges = [p for p in tree(site) if p.startswith("badges/")]
    assert badges and all((site / p).stat().st_ino == first[p] for p in badges)
    assert (site / "index.html").stat().st_ino != first["index.html"]  # its "updated at" moved
    assert not work_folder(site).exists()  # tidied, as before


def test_only_a_plain_file_with_the_same_bytes_is_linked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is compared is the published file itself: other bytes, another size, a symbolic
    link (even to the same bytes) or a folder in its place are written anew."""
    target = tmp_path / "site"
    files = {"same": b"same", "edited": b"edited", "longer": b"x", "link": b"l", "dir": b"d"}
    publish(files, target)
    monkeypatch.setattr(publish_module, "_published", {})
    (target / "edited").write_bytes(b"EDITED")
    (target / "longer").write_bytes(b"xx")
    outside = tmp_path / "outside"
    outside.write_bytes(b"l")
    (target / "link").unlink()
    (target / "link").symlink_to(outside)
    (target / "dir").unlink()
    (target / "dir").mkdir()
    kept = (target / "same").stat().st_ino
    publish(files, target)
    assert tree(target) == {**files, MARKER: (target / MARKER).read_bytes()}
    assert (target / "same").stat().st_ino == kept
    assert not (target / "link").is_symlink() and outside.read_bytes() == b"l"
    assert (target / "link").stat().st_ino != outside.stat().st_ino


def test_a_durable_publish_flushes_once_before_the_swap_and_the_swap_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The swap is the commit point: every file of the new folder is on the disk before it
    (one `syncfs`, not an fsync per file), and the swap is made durable after it (an fsync of
    the folder holding the site). So a power cut leaves the old page or the new one, whole."""
    target = tmp_path / "site"
    publish({"index.html": b"old"}, target)
    calls: list[str] = []
    real_syncfs, real_exchange, real_fsync = (
        publish_module._syncfs,
        publish_module.exchange,
        os.fsync,
    )

    def syncfs(path: str | Path) -> None:
        assert (Path(path) / "badges/b1.svg").read_bytes() == b"1"  # all written by then
        assert (target / "index.html").read_bytes() == b"old"  # and not yet swapped
        calls.append("syncfs")
        real_syncfs(path)

    def exchange(a: Path, b: Path) -> bool:
        calls.append("exchange")
        return real_exchange(a, b)

    def fsync(fd: int) -> None:
        calls.append("fsync " + os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(publish_module, "_syncfs", syncfs)
    monkeypatch.setattr(publish_module, "exchange", exchange)
    monkeypatch.setattr(os, "fsync", fsync)
    files = {"index.html": b"new", **{f"badges/b{n}.svg": str(n).encode() for n in range(50)}}
    publish(files, target, durable=True)
    assert calls == ["syncfs", "exchange", f"fsync {tmp_path}"]
    assert (target / "index.html").read_bytes() == b"new"


def test_a_crash_before_the_swap_leaves_the_published_files_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Links share the published files' bytes: a render that fails after linking some of
    them changes none of them, and the next publish still links them."""
    target = tmp_path / "site"
    files = {f"b{n}": str(n).encode() for n in range(20)}
    publish(files, target)
    monkeypatch.setattr(publish_module, "_published", {})
    inodes = {name: (target / name).stat().st_ino for name in files}

    def failing():
        yield from list(files.items())[:10]
        raise RuntimeError("the render failed")

    with pytest.raises(RuntimeError):
        publish(failing(), target, durable=True)
    assert tree(target) == {**files, MARKER: (target / MARKER).read_bytes()}
    publish(files, target, durable=True)
    assert {name: (target / name).stat().st_ino for name in files} == inodes
