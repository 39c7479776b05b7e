"""Atomic publishing of the rendered files.

A render writes every file into a fresh folder beside the target (inside the hidden work folder
`.site.render/`), then swaps that folder with `site/` in one `renameat2(RENAME_EXCHANGE)` call:
a reader resolving `site/...` sees either the whole old page or the whole new one, never a
half-written file or a new `index.html` beside an old `status.json`. A crash mid-render leaves
`site/` untouched, and the next publish removes the half-written folder.

Why an exchange and not a symbolic link swapped with `os.replace`: the link would make `site`
a symlink and put versioned folders beside it, which `.gitignore`'s `/site/` does not cover and
which surprise anyone who serves or copies `site/`. With the exchange `site/` stays a plain
folder; the work folder carries its own `.gitignore`.

The previous version stays in the work folder until the next publish, so a reader that opened
it a moment ago (a web server sending a file) can finish. Where the exchange is unsupported
(not Linux, or a file system without it) the swap falls back to two renames (`site` aside, the
new folder in): still never a half-written or mixed page, but for a few microseconds no page.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def work_folder(target: Path) -> Path:
    """The hidden folder beside `target` that holds renders in progress and the last version."""
    return target.parent / f".{target.name}.render"


@contextmanager
def _locked(work: Path) -> Iterator[None]:
    """One publisher at a time per target (the daemon and `render` may both write it)."""
    with open(work / "lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(folder: Path, files: Mapping[str, bytes], durable: bool) -> None:
    directories = {folder}
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        directories.add(path.parent)
        with open(path, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
    if durable:
        for directory in directories:
            _fsync(directory)


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`); False if unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def publish(files: Mapping[str, bytes], target: Path, durable: bool = False) -> Path:
    """Make `files` (relative path -> bytes) the whole content of the folder `target`, at once.

    `durable` also fsyncs every file and folder before the swap, so that not even a power cut
    can leave `target` holding files whose data never reached the disk.
    """
    target = Path(target)
    work = work_folder(target)
    work.mkdir(parents=True, exist_ok=True)
    ignore = work / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# renders in progress and the previous version of the site\n*\n")
    with _locked(work):
        for leftover in work.iterdir():  # the previous version, or a crashed render
            if leftover.is_symlink():
                leftover.unlink()
            elif leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
        fresh = Path(tempfile.mkdtemp(prefix="new-", dir=work))
        try:
            _write(fresh, files, durable)
            fresh.chmod(0o755)
            if not (target.exists() or target.is_symlink()):
                os.rename(fresh, target)  # nothing to replace: one rename
            elif not exchange(fresh, target):
                aside = work / f"old-{fresh.name}"
                os.rename(target, aside)
                try:
                    os.rename(fresh, target)
                except OSError:
                    os.rename(aside, target)
                    raise
        except BaseException:
            if fresh.exists():
                shutil.rmtree(fresh, ignore_errors=True)
            raise
        if durable:
            _fsync(target.parent)
    return target
