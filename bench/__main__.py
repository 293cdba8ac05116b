"""``make bench``: every benchmark, each reporting ratios against a baseline measured in its own run."""

from bench import callbacks, dispatch, slots

slots.main()
dispatch.main()
callbacks.main()
