"""``genrelay archive backfill``: copy into the archive the assets recorded before it existed.
Progress on stderr, the summary on stdout."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from daemon.cli.common import existing_redis, load_settings


def add_parser(sub: Any) -> None:
    archive = sub.add_parser("archive", help="the artifact archive: backfill earlier assets")
    actions = archive.add_subparsers(title="actions", metavar="ACTION", required=True)
    backfill = actions.add_parser(
        "backfill",
        help="copy assets recorded before the archive existed",
        description="Queue every recorded asset that has no archived copy yet and wait while the workers "
        "copy them, with progress on stderr (--no-wait: only queue them).",
    )
    backfill.add_argument("--no-wait", action="store_true", help="only queue them for the workers")
    backfill.set_defaults(command=cmd_archive)


def cmd_archive(args: argparse.Namespace) -> int:
    from daemon.cli.archive_backfill import run_backfill

    settings = load_settings()
    return asyncio.run(run_backfill(settings, existing_redis(settings), args))
