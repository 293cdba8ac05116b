"""What the commands share: loading the settings, finding the running genrelay's Redis, and output
(JSON records and tables on stdout; progress and notes on stderr)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from daemon.errors import DaemonError

if TYPE_CHECKING:
    from daemon.client import Client
    from daemon.settings import Settings

# The command modules import what a command needs inside it: `genrelay --help`, `worker --check`
# (a liveness probe) and the short commands start without loading the web, worker or emulator code.

EXIT_USAGE = 2
EXIT_FAILED = 1

Command = Callable[[argparse.Namespace], int]
T = TypeVar("T")


def load_settings(*, require_accounts: bool = True, require_keys: bool = True) -> Settings:
    """The settings from the environment, logging configured from them. ``require_keys=False`` for
    the commands that never call a provider: the accounts file is read for the accounts' names, and
    their key variables may be unset (an app host or an operator's shell holds no provider secrets)."""
    from daemon.logs import configure_logging
    from daemon.settings import Settings

    settings = Settings.from_env(require_accounts=require_accounts, require_keys=require_keys)
    configure_logging(level=settings.log_level, fmt=settings.log_format, secrets=settings.secrets())
    return settings


def existing_redis(settings: Settings) -> str:
    """The Redis of a running genrelay: the setting, or the embedded server of the data dir."""
    from daemon.embedded_redis import find_running

    url = settings.redis_url or find_running(settings.data_dir)
    if url is None:
        raise DaemonError(
            f"no genrelay Redis found: start `genrelay run` (data dir {settings.data_dir}) "
            "or set GENRELAY_REDIS_URL"
        )
    return url


async def with_client(url: str, work: Callable[[Client], Awaitable[T]]) -> T:
    from daemon.client import Client

    client = await Client.connect(url)
    try:
        return await work(client)
    finally:
        await client.close()


def add_json_flag(parser: argparse.ArgumentParser, *, suppress_default: bool = False) -> None:
    """``--json``: the table's data as JSON on stdout instead (for scripts)."""
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress_default else False,
        help="print JSON instead of the table",
    )


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def note(text: str) -> None:
    """A line for the person at the terminal (stderr, so stdout stays the command's result)."""
    print(text, file=sys.stderr, flush=True)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """Left-aligned columns two spaces apart, the header first; no trailing spaces."""
    table = [tuple(columns), *(tuple(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "\n".join(
        (indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))).rstrip()
        for row in table
    )
