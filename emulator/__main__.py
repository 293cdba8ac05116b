from __future__ import annotations

import argparse

from emulator.cli import add_arguments, main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m emulator",
        description="Serve the LTX Video API v2, useapi.net LTX Studio and vydra.ai emulator over HTTP.",
    )
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    raise SystemExit(main(_parser().parse_args()))
