"""``genrelay deliveries [list | replay | secret]``: the dead letters of deliveries to apps' replyUrl
as a table (or ``--json``), replaying them, and the signing secret apps verify with. Needs Redis and
the settings, never a provider key."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from yarl import URL

from daemon.cli.common import add_json_flag, existing_redis, format_table, load_settings, note, print_json
from daemon.errors import InvalidRequest, NotFound

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from daemon.deliveries import DeadLetter

COLUMNS = ("failed", "job", "seq", "tries", "status", "error", "url")


def add_parser(sub: Any) -> None:
    """One action parser each, so each has --help."""
    deliveries = sub.add_parser(
        "deliveries",
        help="deliveries to apps' replyUrl that gave up (dead letters); replay them; the signing secret",
        description="Without an action: list the dead letters (deliveries that used up their tries, or "
        "whose URL was refused) as a table, or as JSON with --json.",
    )
    add_json_flag(deliveries)
    deliveries.set_defaults(command=cmd_deliveries, action="list", job_id=None, all=False)
    actions = deliveries.add_subparsers(title="actions", metavar="ACTION")
    listing = actions.add_parser(
        "list",
        help="the dead letters as a table (the default)",
        description="The dead letters, newest last: when the delivery gave up, the job and transition "
        "(seq), the tries, the app's last HTTP status and error, and the URL without its query.",
    )
    # Not defaulted here: `deliveries --json list` keeps the flag given before the action.
    add_json_flag(listing, suppress_default=True)
    listing.set_defaults(action="list")
    replay_parser = actions.add_parser(
        "replay",
        help="enqueue dead deliveries again (fresh tries) and remove them from the dead letters",
        description="Enqueue the dead deliveries of JOB_ID (or every one with --all) again: the same "
        "message (webhook-id) with a fresh count of tries.",
    )
    replay_parser.add_argument("job_id", nargs="?", help="replay this job's dead deliveries")
    replay_parser.add_argument("--all", action="store_true", help="replay every dead delivery")
    replay_parser.set_defaults(action="replay")
    secret = actions.add_parser(
        "secret",
        help="print the whsec_ secret apps verify webhook-signature with (Standard Webhooks)",
        description="GENRELAY_DELIVERY_SECRET when set, else the key derived from GENRELAY_SECRET (or "
        "from the secret generated into Redis, which is then read from the running genrelay's Redis).",
    )
    secret.set_defaults(action="secret")


def cmd_deliveries(args: argparse.Namespace) -> int:
    from daemon.deliveries import show_secret

    settings = load_settings(require_accounts=False, require_keys=False)
    if args.action == "secret":
        print(asyncio.run(show_secret(settings, lambda: existing_redis(settings))))
        return 0
    return asyncio.run(
        run_deliveries(existing_redis(settings), args.action, args.job_id, args.all, args.json)
    )


def shown_url(url: str) -> str:
    """The URL without credentials, query or fragment: a table is read by people and pasted into
    tickets, and an app's capability token often sits in the query string."""
    try:
        parsed = URL(url)
        return str(parsed.with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<not a valid URL>"


def failed_at(letter: DeadLetter) -> str:
    return datetime.fromtimestamp(letter.failed_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def dead_letter_rows(letters: Iterable[DeadLetter]) -> list[tuple[str, ...]]:
    return [
        (
            failed_at(letter),
            letter.job_id,
            str(letter.seq),
            str(letter.tries),
            "-" if letter.status is None else str(letter.status),
            letter.error,
            shown_url(letter.url),
        )
        for letter in letters
    ]


def dead_letter_json(letter: DeadLetter) -> dict[str, Any]:
    """One dead letter for scripts; the URL shown as in the table (no credentials or query)."""
    return {
        "jobId": letter.job_id,
        "seq": letter.seq,
        "url": shown_url(letter.url),
        "status": letter.status,
        "error": letter.error,
        "tries": letter.tries,
        "failedAt": letter.failed_ms,
    }


async def run_deliveries(
    redis_url: str, action: str, job_id: str | None, replay_all: bool, json: bool
) -> int:
    """``genrelay deliveries`` (``list``) and ``genrelay deliveries replay [JOB_ID | --all]``."""
    from daemon.deliveries import dead_letters
    from daemon.redis_connection import connect

    client = await connect(redis_url)
    try:
        if action == "replay":
            return await _replay_command(client, job_id, replay_all)
        letters = await dead_letters(client)
        if json:
            print_json([dead_letter_json(letter) for letter in letters])
        elif not letters:
            note("no dead deliveries")
        else:
            print(format_table(COLUMNS, dead_letter_rows(letters)))
        return 0
    finally:
        await client.aclose()


async def _replay_command(client: aioredis.Redis, job_id: str | None, replay_all: bool) -> int:
    from daemon.deliveries import dead_letters, replay

    if replay_all == (job_id is not None):
        raise InvalidRequest("`genrelay deliveries replay` needs a JOB_ID or --all (not both)")
    letters = await dead_letters(client, job_id)
    if job_id is not None and not letters:
        raise NotFound(f"no dead delivery for job {job_id!r} (see `genrelay deliveries`)")
    count = await replay(client, letters)
    note(f"{count} delivery(ies) enqueued again")
    return 0
