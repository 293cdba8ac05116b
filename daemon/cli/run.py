"""``genrelay run`` (the supervisor of web + workers, with the embedded Redis when no Redis is set),
``genrelay web`` and ``genrelay worker``: the long-running commands. They call providers, so every
account's key must be set."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from daemon.cli.common import EXIT_FAILED, existing_redis, load_settings, note
from daemon.errors import InvalidRequest
from daemon.processes import CRASH_LIMIT, CRASH_WINDOW_S, Child, Supervisor, child_env

# On a stop the children get the worker's shutdown grace (GENRELAY_SHUTDOWN_GRACE, for the tasks
# running) plus this margin (the worker's pollers and connections close after the tasks) before SIGKILL.
STOP_MARGIN_S = 15.0


def add_parsers(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="web + workers (+ embedded Redis when GENRELAY_REDIS_URL is unset), kept running",
        description="Start the web process and --workers worker processes (and genrelay's embedded Redis "
        "when GENRELAY_REDIS_URL is unset) and supervise them: a process that exits is started again "
        f"after a backoff; after {CRASH_LIMIT} crashes of one process within {CRASH_WINDOW_S:g} s "
        "everything stops with exit code 1. SIGTERM or Ctrl-C stops every process at once; each gets "
        f"GENRELAY_SHUTDOWN_GRACE + {STOP_MARGIN_S:g} s to finish what it is doing (a submission in "
        "flight completes) before it is killed; a second Ctrl-C kills at once. Worker n reports its "
        "health as GENRELAY_WORKER_NAME-n (the host name by default), for `genrelay worker --check`.",
    )
    run.add_argument(
        "--workers", type=int, default=1, help="worker processes to start (default: %(default)s)"
    )
    run.set_defaults(command=cmd_run)

    web = sub.add_parser(
        "web",
        help="the HTTP API and webhook receiver",
        description="Serve the HTTP API, the providers' webhooks, the dashboard, /metrics and the "
        "probes on GENRELAY_HOST:GENRELAY_PORT.",
    )
    web.set_defaults(command=cmd_web)

    worker = sub.add_parser(
        "worker",
        help="an arq worker: submits, polls and sweeps",
        description="Take jobs from the queue and submit them within each account's maxJobs, poll and "
        "confirm them, deliver to apps, sweep expired leases. Keeps running through Redis outages.",
    )
    worker.add_argument(
        "--check",
        action="store_true",
        help="exit 0 when this worker (GENRELAY_WORKER_NAME, default the host name) reported healthy "
        "within GENRELAY_HEALTH_INTERVAL + 1 s, 1 otherwise",
    )
    worker.set_defaults(command=cmd_worker)


def cmd_run(args: argparse.Namespace) -> int:
    from daemon.embedded_redis import redis_url

    settings = load_settings()
    if args.workers < 1:
        raise InvalidRequest("--workers must be at least 1")
    with redis_url(settings.redis_url, settings.data_dir) as url:
        env = child_env({"GENRELAY_REDIS_URL": url})
        children = [
            Child(
                f"worker-{n}",
                ["daemon", "worker"],
                {**env, "GENRELAY_WORKER_NAME": f"{settings.worker_name}-{n}"},
                die_with_parent=True,
            )
            for n in range(1, args.workers + 1)
        ]
        children.append(Child("web", ["daemon", "web"], env, die_with_parent=True))
        supervisor = Supervisor(children, stop_grace_s=settings.shutdown_grace + STOP_MARGIN_S)
        signal.signal(signal.SIGINT, supervisor.request_stop)
        signal.signal(signal.SIGTERM, supervisor.request_stop)
        note(
            f"genrelay running: web on http://{settings.host}:{settings.port}, "
            f"{args.workers} worker(s) ({settings.worker_name}-1..{args.workers}), Redis {url}. "
            "Ctrl-C stops everything."
        )
        stopped = supervisor.run()
    note("genrelay run: stopped" if stopped else "genrelay run: stopped after repeated crashes")
    return 0 if stopped else EXIT_FAILED


def cmd_web(args: argparse.Namespace) -> int:
    from daemon.embedded_redis import redis_url
    from daemon.web.app import serve

    settings = load_settings()
    with redis_url(settings.redis_url, settings.data_dir) as url:
        asyncio.run(serve(settings, url, on_ready=announce_web))
    return 0


def announce_web(url: str) -> None:
    note(f"genrelay web listening on {url}")


def cmd_worker(args: argparse.Namespace) -> int:
    from daemon.embedded_redis import redis_url
    from workers.supervisor import run_supervised
    from workers.worker import build_worker, check_health

    if args.check:
        # The health record is in Redis: no account, no key needed.
        checking = load_settings(require_accounts=False, require_keys=False)
        return check_health(existing_redis(checking), checking.worker_name)
    settings = load_settings()
    with redis_url(settings.redis_url, settings.data_dir) as url:
        # Supervised: a Redis outage makes the worker wait and reconnect, never exit.
        asyncio.run(run_supervised(lambda: build_worker(settings, url, handle_signals=False), url))
    return 0
