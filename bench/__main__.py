"""``make bench``: every benchmark, each reporting ratios against a baseline measured in its own run."""

from bench import callbacks, dispatch, redis_latency, slots

slots.main()
dispatch.main()
callbacks.main()
redis_latency.main()
