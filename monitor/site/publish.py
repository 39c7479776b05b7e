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

The swap is the commit point, so nothing before it needs to reach the disk file by file: with
`durable` the new folder is flushed once (`syncfs` of its file system) just before the swap and
the swap itself after it (an fsync of the folder holding `site/`). A file at a time (an fsync
each) was 10,000 waits on the disk at 10,000 services, most of `render`'s time. A file whose
bytes are those already published is hard-linked from the published folder, not written again:
no data to write or flush, and removing the old version then frees no blocks for it.

The previous version stays in the work folder until the next publish, so a reader that opened
it a moment ago (a web server sending a file) can finish. Where the exchange is unsupported
(not Linux, or a file system without it) the swap falls back to two renames (`site` aside, the
new folder in): still never a half-written or mixed page, but for a few microseconds no page.
`tidy` removes the work folder once nothing publishes any more (`render` after its one publish,
the daemon when it stops), so no hidden folder is left behind.

Publishing replaces what is at `site/`, so it only ever replaces a folder it published itself:
every published folder holds the marker file `.channel-monitor-site`. A plain file, or a folder
with content but no marker (someone's own files), is refused with `SiteError` and left as it
is; an empty folder may be used. A folder published by a version before the marker is known by
the work folder beside it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import struct
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
MARKER = ".channel-monitor-site"
#: The name a folder of ours takes while it is being removed (see `_discard`).
TRASH = "trash-"
_MARKER_TEXT = (
    "This folder is published by channel-monitor: each render replaces all of it.\n"
    "本目录由 channel-monitor 发布，每次渲染都会整个替换它。\n"
).encode()


class SiteError(ValueError):
    """The site path holds something channel-monitor did not publish: it is not replaced."""


def check_target(target: Path) -> None:
    """Refuse a `target` that publishing would destroy: a file, or a folder of someone's own.

    Called before anything is written (and by the commands before they start), because a swap
    would move the user's folder aside and the next publish would delete it.
    """
    target = Path(target)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise SiteError(
            f"--site {target}: is not a folder; channel-monitor replaces the whole site folder, "
            f"so give a new or empty folder / 不是文件夹；请指定新的或空的文件夹"
        )
    if not target.exists() or (target / MARKER).is_file():
        return
    if not any(target.iterdir()):
        return  # an empty folder: nothing to lose
    if work_folder(target).is_dir() and (target / "index.html").is_file():
        return  # published before the marker existed
    raise SiteError(
        f"--site {target}: the folder holds files channel-monitor did not publish (no {MARKER}), "
        f"and publishing would replace them all; give a new or empty folder, or move those files "
        f"away / 该文件夹中有不是 channel-monitor 发布的文件，发布会整个替换它；"
        f"请指定新的或空的文件夹，或先移走这些文件"
    )


def work_folder(target: Path) -> Path:
    """The hidden folder beside `target` that holds renders in progress and the last version."""
    return target.parent / f".{target.name}.render"


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    """One publisher at a time per target (the daemon and `render` may both write it).

    The lock is on the folder holding the target, not on a file in the work folder, so that
    `tidy` can remove the work folder without a waiting publisher holding a lock on a file
    no one else can see any more.
    """
    fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _ours(folder: Path) -> bool:
    """Whether `folder` in the work folder is one we wrote (a marker is written first and
    removed last, see `_discard`), or one we were removing when its marker had just gone: an
    empty folder by our `TRASH` name. Anything else there, a `trash-` folder with something in
    it included, is someone's own and left alone."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    if (folder / MARKER).is_file():
        return True
    return folder.name.startswith(TRASH) and not any(folder.iterdir())


def _discard(folder: Path, deadline: float | None = None) -> bool:
    """Remove a folder of ours, renamed first to a `TRASH` name (it is no version any more)
    and its marker removed last, so that what is left of it (a deadline passed, the process
    ended) is still known as ours and removed next time.
    True when it is gone; with a `deadline` (`time.monotonic`) it stops there: a version of
    100,000 badges takes seconds to remove, and `run` must stop within ten."""
    if not folder.name.startswith(TRASH):
        trash = folder.with_name(f"{TRASH}{folder.name}")
        try:
            folder.rename(trash)
        except OSError:
            trash = folder
        folder = trash
    marker = os.path.join(folder, MARKER)
    for root, dirs, names in os.walk(folder, topdown=False):
        for name in names:
            path = os.path.join(root, name)
            if path == marker:
                continue  # the last to go: what is left is known as ours by it
            with contextlib.suppress(OSError):
                os.unlink(path)
            if deadline is not None and time.monotonic() > deadline:
                return False
        for name in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, name))
    with contextlib.suppress(OSError):
        os.unlink(marker)
    with contextlib.suppress(OSError):
        os.rmdir(folder)
    return not folder.exists()


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(path: str | Path) -> None:
    """Flush the whole file system holding `path` to the disk in one call (Linux `syncfs`;
    elsewhere `sync`). One flush of a folder of 10,000 new files lets the kernel write them
    together, where an fsync per file waited for the disk 10,000 times; it also flushes other
    files on that file system, which costs this call time but is never wrong."""
    syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), os.fspath(path))
    finally:
        os.close(fd)


def _same_as(path: str, pieces: Iterable[bytes], size: int) -> os.stat_result | None:
    """The status of the published file at `path` if it is a plain file holding exactly
    `pieces` (`size` bytes in all), else None. Read and compared, not trusted by name or date:
    `render` is a new process each time, with no record of what it published before."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return None
        old = memoryview(os.read(fd, size + 1))  # one byte more: grown since the fstat
        if len(old) != size:
            return None
        offset = 0
        for piece in pieces:
            if old[offset : offset + len(piece)] != piece:
                return None
            offset += len(piece)
        return st
    except OSError:
        return None
    finally:
        os.close(fd)


#: What this process last published, per target: the folder's identity and, per file, a digest
#: of its bytes with the identity of the file written (inode, size, modification time).
_published: dict[str, tuple[tuple[int, int], dict[str, bytes]]] = {}
_IDENTITY = struct.Struct("<QQQ")
#: A file's bytes, whole or in pieces written one after another (a large JSON file is never
#: joined into one more copy of itself).
#: A file's content: its bytes, its pieces, or pieces made while it is written (never linked,
#: see `_write`: a file of tens of MB is then never held whole, as `status.json` at 100,000
#: services).
Content = bytes | list[bytes] | Iterator[bytes]


def _identity(st: os.stat_result) -> bytes:
    return _IDENTITY.pack(st.st_ino, st.st_size, st.st_mtime_ns)


def _write(
    folder: Path,
    files: Mapping[str, Content] | Iterable[tuple[str, Content]],
    before: tuple[Path, dict] | None,
    published: Path | None = None,
) -> dict[str, bytes]:
    """Write `files` into `folder`; a file whose bytes are those already published is linked
    to that one instead, so that a render at 10,000 services does not write 10,000 unchanged
    badges. What is published is known from `before` (the folder this process published last,
    with a digest and the identity of each file as written), or else read from the folder
    `published` and compared (`render`, a new process each time). Returns the record of what
    was published for the next time. Nothing is flushed here: see `publish`."""
    (folder / MARKER).write_bytes(_MARKER_TEXT)  # first: a crashed render is known as ours
    old, old_records = before if before is not None else (published or folder, {})
    compare = published is not None
    records: dict[str, bytes] = {}
    # Plain strings, not Path objects: at 10,000 files pathlib was a third of the cost.
    root, old_root = os.fspath(folder), os.fspath(old)
    directories = {root}
    for name, data in files.items() if isinstance(files, Mapping) else files:
        path = os.path.join(root, name)
        parent = os.path.dirname(path)
        if parent not in directories:
            os.makedirs(parent, exist_ok=True)
            directories.add(parent)
        if isinstance(data, Iterator):  # made as it is written: hashed on the way, never linked
            records[name] = _write_one(path, data)
            data = None  # not held while the next file is made
            continue
        pieces = (data,) if isinstance(data, bytes) else data
        data = None
        hashing = hashlib.blake2b(digest_size=16)
        for piece in pieces:
            hashing.update(piece)
        digest = hashing.digest()
        record = old_records.get(name)
        source = os.path.join(old_root, name)
        if record is not None and record[:16] == digest:
            try:
                if _identity(os.stat(source)) == record[16:]:  # not touched since we wrote it
                    os.link(source, path, follow_symlinks=False)
                    records[name] = record
                    continue
            except OSError:
                pass  # gone or not linkable (another file system): write it
        elif compare and record is None:
            st = _same_as(source, pieces, sum(map(len, pieces)))
            if st is not None:
                try:
                    os.link(source, path, follow_symlinks=False)
                    records[name] = digest + _identity(st)
                    continue
                except OSError:
                    pass  # not linkable (another owner's file, another file system): write it
        records[name] = _write_one(path, pieces, digest)
        pieces = ()
    return records


def _write_one(path: str, pieces: Iterable[bytes], digest: bytes | None = None) -> bytes:
    """Write one file; its record (the digest of its bytes, worked out here when not given,
    and the identity of the file as written)."""
    hashing = hashlib.blake2b(digest_size=16) if digest is None else None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        for piece in pieces:
            if hashing is not None:
                hashing.update(piece)
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view) :]
        if hashing is not None:
            digest = hashing.digest()
        return digest + _identity(os.fstat(fd))  # type: ignore[operator]
    finally:
        os.close(fd)


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


def publish(
    files: Mapping[str, Content] | Iterable[tuple[str, Content]],
    target: Path,
    durable: bool = False,
) -> Path:
    """Make `files` (relative path -> bytes or pieces of bytes, or such pairs as they are
    made: a render gives its files one at a time) the whole content of the folder `target`,
    at once.

    `durable` also flushes the new folder to the disk before the swap, and the swap after
    it, so that not even a power cut can leave `target` holding files whose data never
    reached the disk: once, not per file (see the module's text).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target):
        check_target(target)
        work = work_folder(target)
        work.mkdir(exist_ok=True)
        ignore = work / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# renders in progress and the previous version of the site\n*\n")
        for leftover in work.iterdir():  # the previous version, or a crashed render
            if leftover.is_symlink():
                leftover.unlink()
            elif _ours(leftover):
                _discard(leftover)
        fresh = Path(tempfile.mkdtemp(prefix="new-", dir=work))
        key = os.path.abspath(target)
        before = None
        last = _published.pop(key, None)
        with contextlib.suppress(OSError):
            st = os.stat(target)
            if last is not None and last[0] == (st.st_dev, st.st_ino):
                before = (target, last[1])  # still the folder this process published last
        # else the files are compared with a folder we published (checked above), if any
        published = target if before is None and (target / MARKER).is_file() else None
        try:
            records = _write(fresh, files, before, published)
            fresh.chmod(0o755)
            if durable:  # the commit point is the swap: everything under it on disk first
                _syncfs(fresh)
            if not (target.exists() or target.is_symlink()):
                os.rename(fresh, target)  # nothing to replace: one rename
            elif exchange(fresh, target):
                _mark(fresh)  # the old version, checked above, is removed by the next publish
            else:
                aside = work / f"old-{fresh.name}"
                os.rename(target, aside)
                try:
                    os.rename(fresh, target)
                except OSError:
                    os.rename(aside, target)
                    raise
                _mark(aside)
        except BaseException:
            if fresh.exists() and _ours(fresh):
                shutil.rmtree(fresh, ignore_errors=True)
            raise
        if durable:
            _fsync(target.parent)
        st = os.stat(target)
        _published[key] = ((st.st_dev, st.st_ino), records)
    return target


def _mark(old: Path) -> None:
    """Mark the replaced version (maybe an empty folder, or one from before the marker) as
    ours, so the next publish or `tidy` removes it."""
    if old.is_dir() and not (old / MARKER).exists():
        (old / MARKER).write_bytes(_MARKER_TEXT)


def tidy(target: Path, seconds: float | None = None) -> bool:
    """Remove the work folder beside `target` once nothing will publish there for a while;
    within `seconds` if given (what is left then is removed by the next publish or tidy).
    True when it is gone.

    The previous version is kept between publishes for readers of it that are still busy;
    after the last publish nothing needs it. Anything in the work folder we did not write
    (say, a user's folder an earlier version swapped aside) is kept, and the folder with it.
    """
    target = Path(target)
    work = work_folder(target)
    if not work.is_dir() or not target.parent.is_dir():
        return True
    deadline = None if seconds is None else time.monotonic() + seconds
    with _locked(target):
        for entry in list(work.iterdir()) if work.is_dir() else []:
            if _ours(entry):
                if not _discard(entry, deadline):
                    return False
            elif entry.name in (".gitignore", "lock") and entry.is_file():
                entry.unlink()
        with contextlib.suppress(OSError):  # something of someone else's is in there: leave it
            work.rmdir()
    return not work.exists()
