"""The archive's metrics: outcomes and bytes copied by this worker (its ``/metrics``), and the
archive's size as recorded in Redis (every process reports the same)."""

from __future__ import annotations

from prometheus_client import Counter

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
