"""The ``genrelay`` command (also ``python -m daemon``)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from daemon.archive_backfill import add_archive_parser
from daemon.embedded_redis import find_running, redis_url
from daemon.errors import DaemonError, InvalidRequest, SettingsError
from daemon.logs import configure_logging
from daemon.processes import Child, child_env, stop_all, wait_for_exit
from daemon.settings import Settings

EXIT_USAGE = 2
EXIT_FAILED = 1

Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command = args.command
    try:
        return command(args)
    except SettingsError as exc:
        print(f"genrelay: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InvalidRequest as exc:
        print(f"genrelay: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except DaemonError as exc:
        print(f"genrelay: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genrelay",
        description="Job scheduler and webhook receiver for AI media-generation APIs. "
        "Configuration comes from GENRELAY_* variables and the accounts file (see README).",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="web + workers (+ embedded Redis when GENRELAY_REDIS_URL is unset)")
    run.add_argument(
        "--workers", type=int, default=1, help="worker processes to start (default: %(default)s)"
    )
    run.set_defaults(command=cmd_run)

    web = sub.add_parser("web", help="the HTTP API and webhook receiver")
    web.set_defaults(command=cmd_web)

    worker = sub.add_parser("worker", help="an arq worker: submits, polls and sweeps")
    worker.add_argument(
        "--check",
        action="store_true",
        help="exit 0 when this worker (GENRELAY_WORKER_NAME, default the host name) reported healthy "
        "within GENRELAY_HEALTH_INTERVAL + 1 s, 1 otherwise",
    )
    worker.set_defaults(command=cmd_worker)

    emulator = sub.add_parser(
        "emulator", help="the provider emulator (LTX Video API v2 and useapi.net LTX Studio) on one port"
    )
    from emulator.cli import add_arguments as emulator_arguments

    emulator_arguments(emulator)
    emulator.set_defaults(command=cmd_emulator)

    demo = sub.add_parser("demo", help="run jobs end to end on embedded Redis and the emulator")
    demo.add_argument("--jobs", type=int, default=36, help="jobs to push through (default: %(default)s)")
    demo.add_argument(
        "--failure-rate", type=float, default=0.15, help="emulator failure knob (default: %(default)s)"
    )
    demo.add_argument(
        "--job-seconds", type=float, default=2.0, help="emulated job duration (default: %(default)s)"
    )
    demo.set_defaults(command=cmd_demo)

    submit = sub.add_parser("submit", help="enqueue one job through Redis and print its id")
    submit.add_argument("provider", help="provider name, e.g. ltx")
    submit.add_argument("operation", help="provider operation, e.g. text-to-video")
    submit.add_argument("params", help='JSON object of the provider parameters, e.g. \'{"prompt": "a cat"}\'')
    submit.add_argument("--account", help="pin the job to this account")
    submit.add_argument("--priority", type=int, default=5, help="0..9, higher runs first (default: 5)")
    submit.add_argument("--request-id", help="idempotency key: the same id is the same job")
    submit.add_argument("--wait", action="store_true", help="wait for the job to end and print it")
    submit.set_defaults(command=cmd_submit)

    status = sub.add_parser("status", help="print a job as JSON")
    status.add_argument("job_id", help="the job id printed by submit")
    status.add_argument("--wait", action="store_true", help="wait until the job has ended")
    status.set_defaults(command=cmd_status)

    cancel = sub.add_parser("cancel", help="cancel a job that has not ended")
    cancel.add_argument("job_id", help="the job id printed by submit")
    cancel.set_defaults(command=cmd_cancel)

    accounts = sub.add_parser("accounts", help="show slots per account; enable or disable an account")
    accounts.add_argument("action", nargs="?", choices=("show", "enable", "disable"), default="show")
    accounts.add_argument("name", nargs="?", help="account name (for enable / disable)")
    accounts.add_argument("--provider", help="only this provider (needed when names repeat across providers)")
    accounts.set_defaults(command=cmd_accounts)
    add_deliveries_parser(sub)

    imports = sub.add_parser(
        "import-assets",
        help="record the assets a provider account lists (made before genrelay, or callbacks lost)",
        description="Page through ACCOUNT's asset listing at its provider (useapi.net services, vydra) and "
        "record every asset genrelay does not have yet, so GET /v1/assets shows it. An asset already "
        "recorded is not recorded twice (its link is renewed when the listing's expires later); one made "
        "by a genrelay job gets that job's id. Progress goes to stderr, a summary to stdout. Exit 0 when "
        "done, 1 when the provider fails (nothing recorded is lost: run it again), 2 for bad arguments or "
        "a provider without a listing (ltx).",
    )
    imports.add_argument("account", metavar="ACCOUNT", help="the account's name in the accounts file")
    imports.add_argument(
        "--provider", help="the account's provider (needed when the name repeats across providers)"
    )
    imports.add_argument(
        "--limit", type=int, default=50, help="assets per listing page, 1..100 (default: %(default)s)"
    )
    imports.add_argument(
        "--max-pages", type=int, default=1000, help="stop after this many pages (default: %(default)s)"
    )
    imports.set_defaults(command=cmd_import_assets)
    add_archive_parser(sub, cmd_archive)
    return parser


def add_deliveries_parser(sub: Any) -> None:
    """``genrelay deliveries [list | replay | secret]``: one action parser each, so each has --help."""
    deliveries = sub.add_parser(
        "deliveries",
        help="deliveries to apps' replyUrl that gave up (dead letters); replay them; the signing secret",
        description="Without an action: list the dead letters (deliveries that used up their tries, or "
        "whose URL was refused) as a table.",
    )
    deliveries.set_defaults(command=cmd_deliveries, action="list", job_id=None, all=False)
    actions = deliveries.add_subparsers(title="actions", metavar="ACTION")
    actions.add_parser("list", help="the dead letters as a table (the default)").set_defaults(action="list")
    replay = actions.add_parser(
        "replay",
        help="enqueue dead deliveries again (fresh tries) and remove them from the dead letters",
    )
    replay.add_argument("job_id", nargs="?", help="replay this job's dead deliveries")
    replay.add_argument("--all", action="store_true", help="replay every dead delivery")
    replay.set_defaults(action="replay")
    secret = actions.add_parser(
        "secret",
        help="print the whsec_ secret apps verify webhook-signature with (Standard Webhooks)",
        description="GENRELAY_DELIVERY_SECRET when set, else the key derived from GENRELAY_SECRET (or "
        "from the secret generated into Redis, which is then read from the running genrelay's Redis).",
    )
    secret.set_defaults(action="secret")


def load_settings(*, require_accounts: bool = True) -> Settings:
    settings = Settings.from_env(require_accounts=require_accounts)
    configure_logging(level=settings.log_level, fmt=settings.log_format, secrets=settings.secrets())
    return settings


def existing_redis(settings: Settings) -> str:
    """The Redis of a running genrelay: the setting, or the embedded server of the data dir."""
    url = settings.redis_url or find_running(settings.data_dir)
    if url is None:
        raise DaemonError(
            f"no genrelay Redis found: start `genrelay run` (data dir {settings.data_dir}) "
            "or set GENRELAY_REDIS_URL"
        )
    return url


# --- commands -----------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.workers < 1:
        raise InvalidRequest("--workers must be at least 1")
    stop_requested = [False]

    def request_stop(signum: int, frame: object) -> None:
        stop_requested[0] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    with redis_url(settings.redis_url, settings.data_dir) as url:
        env = child_env({"GENRELAY_REDIS_URL": url})
        children = [Child(f"worker-{n + 1}", ["daemon", "worker"], env).start() for n in range(args.workers)]
        children.append(Child("web", ["daemon", "web"], env).start())
        print(
            f"genrelay running: web on http://{settings.host}:{settings.port}, "
            f"{args.workers} worker(s), Redis {url}. Ctrl-C stops everything.",
            file=sys.stderr,
            flush=True,
        )
        try:
            died = wait_for_exit(children, stop_requested)
        finally:
            stop_all(children)
    if died is not None:
        print(
            f"genrelay: {died.name} exited with code {died.process.returncode if died.process else '?'}; "
            "everything was stopped",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from daemon.web.app import serve

    settings = load_settings()
    with redis_url(settings.redis_url, settings.data_dir) as url:
        asyncio.run(serve(settings, url, on_ready=announce_web))
    return 0


def announce_web(url: str) -> None:
    print(f"genrelay web listening on {url}", file=sys.stderr, flush=True)


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.supervisor import run_supervised
    from workers.worker import build_worker, check_health

    settings = load_settings(require_accounts=not args.check)
    if args.check:
        return check_health(existing_redis(settings), settings.worker_name)
    with redis_url(settings.redis_url, settings.data_dir) as url:
        # Supervised: a Redis outage makes the worker wait and reconnect, never exit.
        asyncio.run(run_supervised(lambda: build_worker(settings, url, handle_signals=False), url))
    return 0


def cmd_emulator(args: argparse.Namespace) -> int:
    from emulator.cli import main as emulator_main

    return emulator_main(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from daemon.demo import run_demo

    return run_demo(jobs=args.jobs, failure_rate=args.failure_rate, job_seconds=args.job_seconds)


def cmd_submit(args: argparse.Namespace) -> int:
    settings = load_settings(require_accounts=False)
    try:
        params = orjson.loads(args.params)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"params is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise InvalidRequest("params must be a JSON object")

    async def submit(client: Any) -> dict[str, Any]:
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
        result: dict[str, Any] = await client.wait(job_id)
        return result

    print_json(asyncio.run(with_client(existing_redis(settings), submit)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings(require_accounts=False)

    async def status(client: Any) -> dict[str, Any] | None:
        if args.wait:
            result: dict[str, Any] = await client.wait(args.job_id)
            return result
        found: dict[str, Any] | None = await client.get(args.job_id)
        return found

    job = asyncio.run(with_client(existing_redis(settings), status))
    if job is None:
        print(f"genrelay: no job {args.job_id!r} (unknown, not accepted yet, or expired)", file=sys.stderr)
        return EXIT_FAILED
    print_json(job)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from daemon.cancellation import cancel_job
    from daemon.services import open_services

    settings = load_settings()

    async def cancel() -> dict[str, Any]:
        services = await open_services(settings, existing_redis(settings), sync_accounts=False)
        try:
            canceled = await cancel_job(services, args.job_id)
        finally:
            await services.close()
        return {**canceled.job, "cancel": {"atProvider": canceled.at_provider}}

    print_json(asyncio.run(cancel()))
    return 0


def cmd_accounts(args: argparse.Namespace) -> int:
    from daemon.accounts_view import run_accounts

    settings = load_settings()
    return asyncio.run(
        run_accounts(settings, existing_redis(settings), args.action, args.name, args.provider)
    )


def cmd_archive(args: argparse.Namespace) -> int:
    from daemon.archive_backfill import run_backfill

    settings = load_settings()
    return asyncio.run(run_backfill(settings, existing_redis(settings), args))


def cmd_import_assets(args: argparse.Namespace) -> int:
    from daemon.asset_import import run_import

    settings = load_settings()
    return asyncio.run(
        run_import(
            settings,
            lambda: existing_redis(settings),
            args.account,
            args.provider,
            page_size=args.limit,
            max_pages=args.max_pages,
        )
    )


def cmd_deliveries(args: argparse.Namespace) -> int:
    from daemon.deliveries import run_deliveries, show_secret

    settings = load_settings(require_accounts=False)
    if args.action == "secret":
        print(asyncio.run(show_secret(settings, lambda: existing_redis(settings))))
        return 0
    return asyncio.run(run_deliveries(existing_redis(settings), args.action, args.job_id, args.all))


async def with_client(url: str, work: Callable[[Any], Any]) -> Any:
    from daemon.client import Client

    client = await Client.connect(url)
    try:
        return await work(client)
    finally:
        await client.close()


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
