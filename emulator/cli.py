from __future__ import annotations

import argparse
import sys

from emulator.app import run
from emulator.config import VYDRA_PLANS, VYDRA_STATUS_SHAPES, EmulatorConfig, check_vydra_account


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
    _add_useapi_arguments(parser, defaults)
    _add_vydra_arguments(parser, defaults)


def _add_vydra_arguments(parser: argparse.ArgumentParser, defaults: EmulatorConfig) -> None:
    """vydra.ai accounts (their webhooks share the callback fault knobs) and vydra's own knobs."""
    parser.add_argument(
        "--vydra-account",
        action="append",
        default=[],
        type=_vydra_account_spec,
        metavar="KEY[=PLAN]",
        help=f"vydra.ai API key KEY (vydra_live_user_<id>_<random>) on PLAN ({', '.join(VYDRA_PLANS)}; "
        "default free); repeatable",
    )
    parser.add_argument(
        "--vydra-rate-window-seconds",
        type=float,
        default=defaults.vydra_rate_window_seconds,
        help="the sliding window vydra's per-minute request limit counts over (default: %(default)s)",
    )
    parser.add_argument(
        "--vydra-status-shape",
        choices=sorted(VYDRA_STATUS_SHAPES),
        default=defaults.vydra_status_shape,
        help="field names of vydra job status reads and webhooks (default: %(default)s)",
    )
    parser.add_argument(
        "--vydra-list-webhook-url",
        action="store_true",
        help="GET /api/v1/jobs entries carry each job's webhookUrl",
    )


def _vydra_account_spec(text: str) -> tuple[str, str]:
    key, _, plan = text.partition("=")
    plan = plan or "free"
    try:
        check_vydra_account(key, {"plan": plan})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return key, plan


def _add_useapi_arguments(parser: argparse.ArgumentParser, defaults: EmulatorConfig) -> None:
    """The useapi.net LTX Studio accounts and its callback (replyUrl) fault knobs."""
    parser.add_argument(
        "--useapi-account",
        action="append",
        default=[],
        type=_useapi_account_spec,
        metavar="TOKEN:EMAIL=MAXJOBS",
        help="useapi.net LTX Studio account EMAIL under API token TOKEN, MAXJOBS slots; repeatable",
    )
    parser.add_argument(
        "--useapi-service-account",
        action="append",
        default=[],
        type=_useapi_service_spec,
        metavar="SERVICE/TOKEN:ACCOUNT=MAXJOBS",
        help="a useapi.net Kling, MiniMax, PixVerse or Runway account (SERVICE kling, minimax, pixverse "
        "or runwayml; ACCOUNT the email or MiniMax account id); repeatable",
    )
    rates = (
        ("--webhook-drop-rate", "probability that a callback is not sent"),
        ("--webhook-duplicate-rate", "probability that a callback is sent twice"),
    )
    for flag, text in rates:
        parser.add_argument(flag, type=float, default=0.0, help=f"{text}, 0..1 (default: %(default)s)")
    parser.add_argument(
        "--webhook-delay-seconds",
        type=float,
        default=defaults.webhook_delay_seconds,
        help="send every callback this much later than its event (default: %(default)s)",
    )
    switches = (
        ("--webhook-reorder", "send a stale progress callback after the terminal one"),
        ("--webhook-before-submit-response", "POST the first callback before answering the create request"),
        ("--webhook-progress", "send progress callbacks too, not only the terminal one"),
        ("--webhook-allow-remote", "allow callbacks to non-loopback hosts (off: nothing leaves the machine)"),
    )
    for flag, text in switches:
        parser.add_argument(flag, action="store_true", help=text)
    parser.add_argument(
        "--completed-without-artifact-reads",
        type=int,
        default=defaults.completed_without_artifact_reads,
        metavar="N",
        help="a completed job misses its artifact in its first N status reads and its completion "
        "callback (default: %(default)s)",
    )


def _key_spec(text: str) -> tuple[str, int]:
    key, sep, max_jobs = text.rpartition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=MAXJOBS, got {text!r}")
    try:
        return key, int(max_jobs)
    except ValueError:
        raise argparse.ArgumentTypeError(f"MAXJOBS must be an integer, got {max_jobs!r}") from None


def _useapi_account_spec(text: str) -> tuple[str, str, int]:
    # Tokens look like user:12345-xxxx, so the email is what follows the last colon.
    left, sep, max_jobs = text.rpartition("=")
    token, colon, email = left.rpartition(":")
    if not sep or not colon or not token or not email:
        raise argparse.ArgumentTypeError(f"expected TOKEN:EMAIL=MAXJOBS, got {text!r}")
    try:
        return token, email, int(max_jobs)
    except ValueError:
        raise argparse.ArgumentTypeError(f"MAXJOBS must be an integer, got {max_jobs!r}") from None


def _useapi_service_spec(text: str) -> tuple[str, str, str, int]:
    service, slash, rest = text.partition("/")
    if not slash or not service:
        raise argparse.ArgumentTypeError(f"expected SERVICE/TOKEN:ACCOUNT=MAXJOBS, got {text!r}")
    return (service, *_useapi_account_spec(rest))


def _useapi_services(specs: list[tuple[str, str, str, int]]) -> dict[str, dict[str, dict[str, int]]]:
    services: dict[str, dict[str, dict[str, int]]] = {}
    for service, token, name, max_jobs in specs:
        services.setdefault(service, {}).setdefault(token, {})[name] = max_jobs
    return services


def _useapi_accounts(specs: list[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    accounts: dict[str, dict[str, int]] = {}
    for token, email, max_jobs in specs:
        accounts.setdefault(token, {})[email] = max_jobs
    return accounts


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
        useapi_accounts=_useapi_accounts(args.useapi_account),
        useapi_services=_useapi_services(args.useapi_service_account),
        webhook_drop_rate=args.webhook_drop_rate,
        webhook_duplicate_rate=args.webhook_duplicate_rate,
        webhook_reorder=args.webhook_reorder,
        webhook_delay_seconds=args.webhook_delay_seconds,
        webhook_before_submit_response=args.webhook_before_submit_response,
        webhook_progress=args.webhook_progress,
        webhook_allow_remote=args.webhook_allow_remote,
        completed_without_artifact_reads=args.completed_without_artifact_reads,
        vydra_accounts={key: {"plan": plan} for key, plan in args.vydra_account},
        vydra_rate_window_seconds=args.vydra_rate_window_seconds,
        vydra_status_shape=args.vydra_status_shape,
        vydra_list_webhook_url=args.vydra_list_webhook_url,
    )


def _announce(host: str, port: int) -> None:
    print(f"emulator listening on http://{host}:{port}", flush=True)


def main(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 2
    accounts = config.useapi_accounts or config.useapi_services or config.vydra_accounts
    if not (config.keys or config.accept_any_key or accounts):
        print("emulator: no API keys configured; register some via POST /_emulator/keys", file=sys.stderr)
    try:
        run(config, args.host, args.port, on_ready=_announce)
    except OSError as exc:
        print(f"emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
