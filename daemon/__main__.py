"""``python -m daemon``: the same as the ``genrelay`` command."""

import sys

from daemon.cli import main

sys.exit(main())
