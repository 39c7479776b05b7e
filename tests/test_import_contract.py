"""The import contract of monitor/ (pyproject's `[tool.importlinter]`) holds, and it bites.

A cycle of imports is how the runtime grew into one knot before (every part took the daemon);
the contract keeps it out: no cycle among the modules and packages of monitor/, the daemon
imported only by the commands, and the parts it builds knowing nothing of one another.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter on the package under `root` with the project's own contracts."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command as c; c()",
            "--no-cache",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_contract_holds() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    shutil.copytree(ROOT / "monitor", root / "monitor", symlinks=True)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_a_part_that_imports_the_daemon_breaks_it(tmp_path: Path) -> None:
    """What the first version did (a part typed against the daemon) is refused: it is a cycle,
    and it reaches over the composition root."""
    root = _copy(tmp_path)
    metrics = root / "monitor" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\nimport monitor.daemon  # noqa\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "no import cycle in monitor/ BROKEN" in result.stdout
    assert "monitor.metrics -> monitor.daemon" in result.stdout


def test_a_part_that_looks_another_up_breaks_it(tmp_path: Path) -> None:
    """The notices asked the site for a render by finding its listener; now the daemon hands
    them a callable, and an import of the site from the notices is refused."""
    root = _copy(tmp_path)
    board = root / "monitor" / "notices" / "watch.py"
    board.write_text(board.read_text() + "\nimport monitor.site  # noqa\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "monitor.notices.watch is not allowed to import monitor.site" in result.stdout
