"""The core (``daemon/`` outside ``daemon/cli/``) never imports the ``workers`` or ``emulator``
packages, at module level or inside a function: web processes and apps using ``daemon.client`` load
neither, and the dependency runs one way (workers and the CLI build on the core)."""

from __future__ import annotations

import ast
from pathlib import Path

DAEMON = Path(__file__).resolve().parent.parent / "daemon"
FORBIDDEN = ("workers", "emulator")


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in the file, wherever it sits."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def core_modules() -> list[Path]:
    return [p for p in sorted(DAEMON.rglob("*.py")) if DAEMON / "cli" not in p.parents]


def test_the_core_imports_neither_workers_nor_emulator() -> None:
    modules = core_modules()
    assert DAEMON / "client.py" in modules and not any("cli" in p.parts for p in modules)
    offenders = [
        f"{path.relative_to(DAEMON.parent)}:{line} imports {package}"
        for path in modules
        for line, package in imported_packages(path)
        if package in FORBIDDEN
    ]
    assert offenders == []


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    from workers.worker import build_worker\n")
    assert imported_packages(sample) == [(1, "os"), (4, "workers")]
