"""``python -m bench [NAME ...] [options]``: the benchmarks, each reporting ratios against a
baseline measured in its own run.

Without a name (``make bench``) the short ones run: slots, dispatch, callbacks, a 10 s callback
burst and latency (jobs through a Redis link with 200 ms of latency). The long ones run only when
named (see README "Measuring"): ``load`` (scenario F47 of docs/fault-scenarios.md, 10,000 jobs),
``polling`` (the polling ceiling, 10,000 jobs for 60 s), ``archive`` (copy speed and memory
of the artifact archive), ``scale`` (slot script cost by accounts and backlog, polling over
300 accounts, memory per job; docs/slots.md), ``requests`` (provider requests per completed job,
by provider) and ``soak`` (scenario F48,
``make soak MINUTES=N``). Options after the name go to that benchmark:
``python -m bench load --jobs 500``. ``validation`` (job request validation, the msgspec models
against the hand-written checks they replaced) runs only when named.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from bench import (
    archive,
    callback_burst,
    callbacks,
    dispatch,
    load,
    polling,
    provider_requests,
    redis_latency,
    scale,
    slots,
    soak,
    validation,
)


def _plain(main: Callable[[], None]) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        if argv:
            raise SystemExit(f"this benchmark takes no options: {' '.join(argv)}")
        main()
        return 0

    return run


BENCHMARKS: dict[str, Callable[[list[str]], int]] = {
    "slots": _plain(slots.main),
    "dispatch": _plain(dispatch.main),
    "callbacks": _plain(callbacks.main),
    "burst": callback_burst.main,
    "latency": _plain(redis_latency.main),
    "load": load.main,
    "polling": polling.main,
    "soak": soak.main,
    "validation": _plain(validation.main),
    "archive": archive.main,
    "scale": scale.main,
    "requests": provider_requests.main,
}
SHORT = ("slots", "dispatch", "callbacks", "burst", "latency")


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("benchmarks: " + ", ".join(BENCHMARKS))
        return 0
    if not argv:
        return max(BENCHMARKS[name]([]) for name in SHORT)
    name, options = argv[0], argv[1:]
    if name not in BENCHMARKS:
        raise SystemExit(f"unknown benchmark {name!r}; choose from: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name](options)


try:
    sys.exit(main(sys.argv[1:]))
except KeyboardInterrupt:
    print("interrupted; every process the benchmark started was stopped", file=sys.stderr)
    sys.exit(130)
