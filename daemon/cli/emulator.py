"""``genrelay emulator``: the provider emulator for tests, the demo and trying genrelay without
provider accounts. The only module of ``daemon`` that imports the ``emulator`` package."""

from __future__ import annotations

import argparse
from typing import Any

from emulator.cli import add_arguments

SUMMARY = "the provider emulator: LTX Video API, useapi.net LTX Studio and vydra.ai on one port"


def add_parser(sub: Any) -> None:
    emulator = sub.add_parser(
        "emulator",
        help=SUMMARY,
        description=f"Serve {SUMMARY}, with fault knobs (failure rate, 429s, slow answers, dropped or "
        "duplicated webhooks) for tests and the demo. The LTX Video API v2 takes --key accounts, "
        "useapi.net LTX Studio (the reference useapi service; retired upstream) --useapi-account, "
        "vydra.ai --vydra-account. Faults can also be injected at run time: POST /_emulator/faults.",
    )
    add_arguments(emulator)
    emulator.set_defaults(command=cmd_emulator)


def cmd_emulator(args: argparse.Namespace) -> int:
    from emulator.cli import main as emulator_main

    return emulator_main(args)
