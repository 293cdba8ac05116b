"""The ``genrelay`` command's entry point: the parser assembled from the command groups, and the
mapping of errors to exit codes (2: usage or configuration, 1: failed, 130: interrupted)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata

from daemon.cli import accounts, archive, assets, deliveries, demo, emulator, jobs, run
from daemon.cli.common import EXIT_FAILED, EXIT_USAGE, Command
from daemon.errors import DaemonError, InvalidRequest, SettingsError


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


def version() -> str:
    try:
        return metadata.version("genrelay")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genrelay",
        description="Job scheduler and webhook receiver for AI media-generation APIs. "
        "Configuration comes from GENRELAY_* variables and the accounts file (see README). "
        "`genrelay COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"genrelay {version()}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    run.add_parsers(sub)
    emulator.add_parser(sub)
    demo.add_parser(sub)
    jobs.add_parsers(sub)
    accounts.add_parser(sub)
    deliveries.add_parser(sub)
    assets.add_parser(sub)
    archive.add_parser(sub)
    return parser
