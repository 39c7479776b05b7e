"""Why a store cannot be used: `StoreError` and the messages, in both languages, that
say what is wrong with a file and what to do about it.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

#: What a read or a write raises when SQLite fails after the store opened (a full disk, a file
#: damaged under a reader): SQLite's own error, named here so that callers outside the store
#: catch it without knowing the store is SQLite.
SQLiteError = sqlite3.Error


class StoreError(Exception):
    """The store cannot be used; the message says what is wrong and what to do."""


class StoreBusy(StoreError):
    """Another process holds the store (two writers would open every incident twice)."""

    def __init__(self, path: Path, pid: int | None) -> None:
        who = f"process {pid}" if pid else "another process"
        super().__init__(
            f"{path}: in use by {who} (another `channel-monitor run`); stop it or name another "
            f"--db. / 存储正被{'进程 ' + str(pid) if pid else '另一个进程'}使用（另一个 run），"
            "请先停止它或换一个 --db。"
        )
        self.pid = pid


def _os_problem(path: Path, exc: OSError) -> str:
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            f"{path}: cannot be written ({exc.strerror}); run needs a writable store: make the "
            "folder writable or name another --db. / 无法写入，run 需要可写的存储：请让文件夹"
            "可写或换一个 --db。"
        )
    return (
        f"{path}: {exc.strerror or exc}; check the path or name another --db. / "
        "无法使用该路径，请检查或换一个 --db。"
    )


def _sqlite_problem(path: Path, exc: sqlite3.Error, writing: bool) -> str:
    """What an SQLite error at open means to the person who named the file."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    missing_table = not writing and name == "SQLITE_ERROR"  # "no such table"
    if name == "SQLITE_NOTADB" or name.startswith("SQLITE_CORRUPT") or missing_table:
        return (
            f"{path}: not a channel-monitor store, or a damaged one ({exc}); move it aside and "
            "name a new --db (a new store starts empty). / 不是本程序的存储文件或已损坏：请移开"
            "它并换一个新的 --db（新存储从空开始）。"
        )
    if writing and (name.startswith("SQLITE_READONLY") or not _writable(path)):
        return (
            f"{path}: read-only ({exc}); run needs to write its store: make the file and its "
            "folder writable or name another --db (render can read a read-only store). / 存储"
            "只读，run 需要写入：请让文件及其文件夹可写或换一个 --db（render 可以读取只读存储）。"
        )
    if name == "SQLITE_FULL":
        return f"{path}: the disk is full ({exc}); free some space. / 磁盘已满，请腾出空间。"
    return (
        f"{path}: cannot be opened as a store ({exc}); check the file or name another --db. / "
        "无法打开存储，请检查文件或换一个 --db。"
    )


def _writable(path: Path) -> bool:
    target = path if path.exists() else path.parent
    return os.access(target, os.W_OK) and os.access(path.parent, os.W_OK)


def _check_file(path: Path) -> None:
    """Refuse at once what SQLite would only half refuse (a folder, /dev/null, a FIFO)."""
    if path.is_dir():
        raise StoreError(
            f"{path}: is a folder, not a store file; name a file, e.g. {path / 'monitor.db'}. / "
            "这是一个文件夹而不是存储文件，请指定一个文件。"
        )
    if path.exists() and not path.is_file():
        raise StoreError(
            f"{path}: not a regular file; name a file for the store. / 不是普通文件，请为存储"
            "指定一个文件。"
        )
