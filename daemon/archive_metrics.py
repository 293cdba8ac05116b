"""The archive's metrics on a worker's ``/metrics``: outcomes and bytes copied by this worker, and
the archive's usage (objects, bytes stored) as Redis counts it, read at each retention pass."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from daemon.metrics import METRICS

ARCHIVE_OUTCOMES = Counter(
    "genrelay_archive_attempts_total",
    "Archive attempts by outcome (archived, failed, expired, retry_pending, retry_failed)",
    ["outcome"],
    registry=METRICS.registry,
)
ARCHIVE_BYTES = Counter(
    "genrelay_archive_bytes_total", "Bytes copied into the archive", registry=METRICS.registry
)


def record_outcome(outcome: str, size: int) -> None:
    ARCHIVE_OUTCOMES.labels(outcome=outcome).inc()
    if size:
        ARCHIVE_BYTES.inc(size)


ARCHIVE_OBJECTS = Gauge("genrelay_archive_objects", "Objects in the archive", registry=METRICS.registry)
ARCHIVE_STORED = Gauge(
    "genrelay_archive_stored_bytes",
    "Bytes the archive's objects take (disk or bucket)",
    registry=METRICS.registry,
)


def set_usage(objects: int, stored: int) -> None:
    ARCHIVE_OBJECTS.set(objects)
    ARCHIVE_STORED.set(stored)
