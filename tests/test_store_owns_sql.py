"""The store owns its SQL: no module of monitor/ outside monitor/store/ imports sqlite3, holds
an SQL statement in a string, or calls a connection's execute. A query elsewhere is a query
the store's migrations and tests do not know about."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "monitor"
STORE = PACKAGE / "store"

#: Statements as the store writes them (keywords in capitals), not English words in prose.
SQL = re.compile(
    r"\bSELECT\b.+\bFROM\b|\bINSERT\s+(OR\s+\w+\s+)?INTO\b|\bUPDATE\s+\w+\s+SET\b"
    r"|\bDELETE\s+FROM\b|\b(CREATE|DROP|ALTER)\s+(TABLE|INDEX|VIEW)\b|\bPRAGMA\s+\w+",
    re.DOTALL,
)
EXECUTE = {"execute", "executemany", "executescript"}


def problems(source: str, name: str) -> list[str]:
    """Where `source` imports sqlite3, holds SQL in a string, or calls `execute`."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name == "sqlite3"]
        elif isinstance(node, ast.ImportFrom) and node.module == "sqlite3":
            found.append(f"{where}: from sqlite3 import")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if SQL.search(node.value):
                found.append(f"{where}: SQL in a string: {node.value[:60]!r}")
        elif isinstance(node, ast.Attribute) and node.attr in EXECUTE:
            found.append(f"{where}: .{node.attr}(...)")
    return found


def test_the_scan_finds_what_it_looks_for() -> None:
    planted = (
        "import sqlite3\n"
        "from sqlite3 import connect\n"
        "Q = f'SELECT id FROM incidents WHERE x = {1}'\n"
        "db.execute('DELETE FROM alert_outbox')\n"
        "W = 'INSERT OR IGNORE INTO t VALUES (1)'\n"
        "P = 'PRAGMA user_version'\n"
    )
    kinds = Counter(p.split(": ", 2)[1] for p in problems(planted, "planted.py"))
    assert kinds == {
        "import sqlite3": 1,
        "from sqlite3 import": 1,
        "SQL in a string": 4,
        ".execute(...)": 1,
    }
    prose = '"""Select the services from the plan; update the page; delete nothing."""\n'
    assert problems(prose, "prose.py") == []


def test_no_sql_outside_the_store() -> None:
    modules = [p for p in PACKAGE.rglob("*.py") if STORE not in p.parents]
    assert len(modules) > 20, "the scan sees the package"
    found = [
        problem
        for path in modules
        for problem in problems(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE)))
    ]
    assert found == [], "SQL outside monitor/store/:\n" + "\n".join(found)
