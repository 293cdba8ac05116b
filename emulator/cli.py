from __future__ import annotations

import argparse
import sys

from emulator.app import run
from emulator.config import EmulatorConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = EmulatorConfig()
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8700, help="TCP port, 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        type=_key_spec,
        metavar="KEY=MAXJOBS",
        help="accept this API key with at most MAXJOBS simultaneous jobs; repeatable",
    )
    parser.add_argument(
        "--accept-any-key",
        action="store_true",
        help=f"accept any non-empty bearer key, each allowed {defaults.default_max_jobs} simultaneous jobs",
    )
    parser.add_argument(
        "--job-seconds",
        type=float,
        default=defaults.job_seconds,
        help="how long a job takes to finish, in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--jitter",
        "--job-seconds-jitter",
        dest="jitter",
        type=float,
        default=defaults.job_seconds_jitter,
        help="random +/- fraction applied to --job-seconds per job, 0..1 (default: %(default)s)",
    )
    parser.add_argument(
        "--failure-rate",
        type=float,
        default=defaults.failure_rate,
        help="probability that a job ends as failed, 0..1 (default: %(default)s)",
    )
    parser.add_argument(
        "--retention-seconds",
        type=float,
        default=defaults.retention_seconds,
        help="how long finished jobs stay queryable before GET answers 404 (default: %(default)s)",
    )
    parser.add_argument(
        "--retry-after",
        "--retry-after-seconds",
        dest="retry_after",
        type=int,
        default=defaults.retry_after_seconds,
        help="Retry-After seconds sent with concurrency-limit 429s (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for job ids, jitter and failures")


def _key_spec(text: str) -> tuple[str, int]:
    key, sep, max_jobs = text.rpartition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=MAXJOBS, got {text!r}")
    try:
        return key, int(max_jobs)
    except ValueError:
        raise argparse.ArgumentTypeError(f"MAXJOBS must be an integer, got {max_jobs!r}") from None


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    return EmulatorConfig(
        keys=dict(args.key),
        accept_any_key=args.accept_any_key,
        job_seconds=args.job_seconds,
        job_seconds_jitter=args.jitter,
        failure_rate=args.failure_rate,
        retention_seconds=args.retention_seconds,
        retry_after_seconds=args.retry_after,
        seed=args.seed,
    )


def _announce(host: str, port: int) -> None:
    print(f"emulator listening on http://{host}:{port}", flush=True)


def main(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 2
    if not config.keys and not config.accept_any_key:
        print("emulator: no API keys configured; register some via POST /_emulator/keys", file=sys.stderr)
    try:
        run(config, args.host, args.port, on_ready=_announce)
    except OSError as exc:
        print(f"emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
