"""``genrelay submit``, ``status`` and ``cancel``: one job through Redis. They need Redis and the
accounts' names, never a provider key. With ``--wait`` the job's state and progress are shown on
stderr as they change, and stdout stays the final JSON record."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from daemon.cli.common import EXIT_FAILED, existing_redis, load_settings, note, print_json, with_client
from daemon.errors import InvalidRequest

if TYPE_CHECKING:
    from daemon.client import Client

WAIT_HELP = (
    "wait until the job has ended, showing its state and progress on stderr as they change; "
    "stdout gets the final record"
)


def add_parsers(sub: Any) -> None:
    submit = sub.add_parser(
        "submit",
        help="enqueue one job through Redis and print its id",
        description="Enqueue one generation on the running genrelay's Redis (no HTTP needed) and print "
        '{"jobId": ...}; a worker accepts and submits it. With --wait, print the finished job instead. '
        "The accounts' key variables need not be set here.",
    )
    submit.add_argument("provider", help="provider name: ltx, ltxstudio or vydra")
    submit.add_argument("operation", help="provider operation, e.g. text-to-video")
    submit.add_argument("params", help='JSON object of the provider parameters, e.g. \'{"prompt": "a cat"}\'')
    submit.add_argument("--account", help="pin the job to this account")
    submit.add_argument("--priority", type=int, default=5, help="0..9, higher runs first (default: 5)")
    submit.add_argument("--request-id", help="idempotency key: the same id is the same job")
    submit.add_argument("--wait", action="store_true", help=WAIT_HELP)
    submit.set_defaults(command=cmd_submit)

    status = sub.add_parser(
        "status",
        help="print a job as JSON",
        description="Print the job in the GET /v1/jobs/{id} shape; exit 1 when it is unknown.",
    )
    status.add_argument("job_id", help="the job id printed by submit")
    status.add_argument("--wait", action="store_true", help=WAIT_HELP)
    status.set_defaults(command=cmd_status)

    cancel = sub.add_parser(
        "cancel",
        help="cancel a job that has not ended",
        description="End the job as canceled at once (its slot goes to the next job, the app is told); "
        "a worker then asks the provider to stop it where the provider can. Prints the job.",
    )
    cancel.add_argument("job_id", help="the job id printed by submit")
    cancel.set_defaults(command=cmd_cancel)


class ProgressLines:
    """Writes a line to stderr each time the job's state, progress or message changes."""

    def __init__(self, job_id: str, write: Callable[[str], None] = note) -> None:
        self.job_id = job_id
        self.write = write
        self.last: tuple[str, int, str] | None = None

    def __call__(self, job: dict[str, Any] | None) -> None:
        if job is None:
            shown = ("not accepted yet", 0, "")
        else:
            status = job["status"]
            shown = (status["type"], int(status.get("progress") or 0), status.get("message") or "")
        if shown == self.last:
            return
        self.last = shown
        state, progress, message = shown
        line = f"{self.job_id}: {state}"
        if progress:
            line += f" {progress}%"
        if job is not None and job.get("account"):
            line += f" (account {job['account']})"
        if message and message != state:
            line += f": {message}"
        self.write(line)


async def wait_showing_progress(client: Client, job_id: str) -> dict[str, Any]:
    from daemon import keys

    if keys.provider_of(job_id) is None:
        raise InvalidRequest(f"{job_id!r} is not a genrelay job id (they look like ltx-<32 hex digits>)")
    return await client.wait(job_id, on_update=ProgressLines(job_id))


def parse_params(text: str) -> dict[str, Any]:
    try:
        params = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"params is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise InvalidRequest("params must be a JSON object")
    return params


def cmd_submit(args: argparse.Namespace) -> int:
    settings = load_settings(require_accounts=False, require_keys=False)
    params = parse_params(args.params)

    async def submit(client: Client) -> dict[str, Any]:
        job_id = await client.submit(
            args.provider,
            args.operation,
            params,
            account=args.account,
            priority=args.priority,
            request_id=args.request_id,
        )
        if not args.wait:
            return {"jobId": job_id}
        note(f"{job_id}: enqueued")
        return await wait_showing_progress(client, job_id)

    print_json(asyncio.run(with_client(existing_redis(settings), submit)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings(require_accounts=False, require_keys=False)

    async def status(client: Client) -> dict[str, Any] | None:
        if args.wait:
            return await wait_showing_progress(client, args.job_id)
        return await client.get(args.job_id)

    job = asyncio.run(with_client(existing_redis(settings), status))
    if job is None:
        note(f"genrelay: no job {args.job_id!r} (unknown, not accepted yet, or expired)")
        return EXIT_FAILED
    print_json(job)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from daemon.cancellation import cancel_job
    from daemon.services import open_services

    settings = load_settings(require_keys=False)

    async def cancel() -> dict[str, Any]:
        services = await open_services(settings, existing_redis(settings), sync_accounts=False)
        try:
            canceled = await cancel_job(services, args.job_id)
        finally:
            await services.close()
        return {**canceled.job, "cancel": {"atProvider": canceled.at_provider}}

    print_json(asyncio.run(cancel()))
    return 0
