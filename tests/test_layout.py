"""The repository's layout rules hold: modules of ``daemon/`` and ``workers/`` stay small enough to read
in one sitting (the few longer ones are named here with the reason), and no source line cites a
document that lives outside the repository (the provider contracts and the fault scenarios are in
``docs/``)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 400
# Modules allowed past the limit, each with why splitting it would cost more than it gives.
LONGER_MODULES: dict[str, str] = {
    "daemon/settings.py": "the one frozen dataclass of every GENRELAY_* setting, read and validated in one "
    "place (the archive's own settings are already apart in archive_settings.py)",
    "daemon/embedded_redis.py": "one life cycle (lock, start, private files, finding a running server); "
    "its private-file helpers are the next piece to move out",
    "daemon/providers/useapi.py": "the request, status and callback code shared by five useapi.net services "
    "(what differs per service is the table in useapi_services.py)",
    "daemon/providers/vydra.py": "one provider contract: submit, status, callbacks, capacity, listing and "
    "the rate-limit read",
}
CITING_OUTSIDE = re.compile(
    r"(?<![\w/])(providers|reliability|product|style|useapi-services)\.md|\.\./shared|shared/spec|seeds/"
)
SOURCE_ROOTS = ("daemon", "workers", "emulator", "bench")


def source_files(*roots: str, suffixes: tuple[str, ...] = (".py",)) -> list[Path]:
    return [p for root in roots for p in sorted((ROOT / root).rglob("*")) if p.suffix in suffixes]


def test_no_module_of_daemon_or_workers_is_over_the_line_limit() -> None:
    too_long = {
        str(path.relative_to(ROOT)): count
        for path in source_files("daemon", "workers")
        if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    unnamed = {name: count for name, count in too_long.items() if name not in LONGER_MODULES}
    assert unnamed == {}, f"modules over {MAX_MODULE_LINES} lines: split them or name them with a reason"


def test_the_named_longer_modules_exist() -> None:
    """An exception that outlived its module would hide the next one that grows."""
    missing = [name for name in LONGER_MODULES if not (ROOT / name).is_file()]
    assert missing == []


def test_no_source_line_cites_a_document_outside_the_repository() -> None:
    cited = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in source_files(*SOURCE_ROOTS, suffixes=(".py", ".lua", ".js", ".html"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if (match := CITING_OUTSIDE.search(line)) and not line[: match.start()].endswith("docs/")
    ]
    assert cited == []


def test_docs_cited_by_the_sources_exist() -> None:
    cited = {
        match.group(0)
        for path in source_files(*SOURCE_ROOTS, "tests", suffixes=(".py", ".lua"))
        for match in re.finditer(r"docs/[\w-]+\.md", path.read_text(encoding="utf-8"))
    }
    assert cited, "the sources cite docs/ for the provider contracts"
    assert sorted(name for name in cited if not (ROOT / name).is_file()) == []


def test_no_lua_script_names_a_task() -> None:
    """The tasks' queue names live in daemon/tasks.py; the scripts get them as locals."""
    from daemon.tasks import Task

    found = [
        f"{path.relative_to(ROOT)}: {task.value}"
        for path in sorted((ROOT / "daemon" / "lua").glob("*.lua"))
        for task in Task
        if task.value in path.read_text()
    ]
    assert found == []
