"""Atomic publishing of the rendered files.

The site folder (`site/`) is a symbolic link to a versioned folder beside it
(`.site-<stamp>-<random>/`). A render writes every file into a fresh versioned folder, then
points a new link at it and renames that link over `site` with `os.replace`, which is one
`rename(2)`: a reader resolving `site/...` sees either the whole old page or the whole new one,
never a half-written file or a new `index.html` beside an old `status.json`. A crash mid-render
leaves the old link untouched and an orphan folder that the next publish removes.

The previous versions are kept for a while (`KEEP`), so a reader that resolved the old folder
a moment ago can still finish reading it. Web servers should resolve the link per request
(nginx does unless `open_file_cache` is on; the daemon's own handler does).

The one non-atomic step is the first publish over a real folder called `site` (a leftover of
another tool): it is renamed aside before the link takes its place.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

#: Versions kept besides the current one, for readers still inside them.
KEEP = 2


def _prefix(target: Path) -> str:
    return f".{target.name}-"


@contextmanager
def _locked(target: Path):
    """One publisher at a time per target (the daemon and `render` may both write it)."""
    lock = target.parent / f".{target.name}.lock"
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write(folder: Path, files: Mapping[str, bytes], durable: bool) -> None:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
    if durable:
        for directory in {folder, *(folder / n for n in files)}:
            directory = directory if directory.is_dir() else directory.parent
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def publish(files: Mapping[str, bytes], target: Path, durable: bool = False) -> Path:
    """Write `files` (relative path -> bytes) as the new content of `target`; return the
    versioned folder that `target` now points to."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target):
        stamp = time.strftime("%Y%m%dT%H%M%S")
        folder = target.parent / f"{_prefix(target)}{stamp}-{secrets.token_hex(4)}"
        folder.mkdir()
        try:
            _write(folder, files, durable)
            folder.chmod(0o755)
            link = target.parent / f".{target.name}.link-{secrets.token_hex(4)}"
            os.symlink(folder.name, link)
            try:
                if target.is_dir() and not target.is_symlink():
                    target.rename(target.parent / f"{_prefix(target)}old-{secrets.token_hex(4)}")
                os.replace(link, target)
            except BaseException:
                link.unlink(missing_ok=True)
                raise
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if durable:
            fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _prune(target, folder)
    return folder


def _prune(target: Path, current: Path) -> None:
    """Remove versions older than the newest `KEEP` besides the current one, and orphans."""
    versions = [
        p
        for p in target.parent.glob(f"{_prefix(target)}*")
        if p.is_dir() and not p.is_symlink() and p != current
    ]
    versions.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in versions[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    for link in target.parent.glob(f".{target.name}.link-*"):  # left by a crash
        link.unlink(missing_ok=True)


def current(target: Path) -> Path | None:
    """The folder `target` points to now (None before the first publish)."""
    target = Path(target)
    if not target.exists():
        return None
    return target.resolve()
