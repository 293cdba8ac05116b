"""The ``genrelay`` command (also ``python -m daemon``): the only place that parses argv or prints
tables. One module per command group:

* ``run``: ``run`` (the supervisor), ``web``, ``worker``;
* ``jobs``: ``submit``, ``status``, ``cancel``;
* ``accounts``, ``deliveries``, ``assets`` (``import-assets``);
* ``demo`` (with ``demo_setup``), ``emulator``;
* ``common``: settings, the running genrelay's Redis, JSON and table output;
* ``main``: ``main()`` and the parser.
"""

from __future__ import annotations

from daemon.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
