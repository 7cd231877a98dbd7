"""Rollup tasks, on their own queue (ROLLUP_QUEUE) so that they never hold up ingest.

``rollups.run`` (beat, every ROLLUP_INTERVAL_S) adds what was committed since
the last run to the hourly, daily and per-user daily rollups;
``rollups.rebuild`` recomputes whole UTC days from raw events for repairs and
backfills (also ``python -m cli rollups rebuild``).

How a run never misses nor double-counts an event (details in storage.rollups):
progress is tracked per ingest *batch*, not per time window. Each ingest
transaction logs its batch in ``rollup_pending_batches`` and stamps its events
with the batch id, so the log row becomes visible exactly when the rows do,
however late the transaction commits and however old the events' timestamps.
A run takes pending batches with ``FOR UPDATE SKIP LOCKED`` (overlapping runs
take disjoint sets), upsert-adds their aggregates and deletes their log rows
in the same transaction: it either counts a batch once and forgets it, or, if
it dies, counts nothing and leaves the batch pending. Late events simply add
to the old buckets they belong to. A rebuild locks runs out, recomputes from
raw the rows whose batch is not pending, and leaves pending ones to the next run.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from config import get_settings
from storage.rollups import rebuild as rebuild_range
from storage.rollups import run_until_idle
from tasks.app import app
from tasks.base import DatabaseTask
from tasks.names import ROLLUPS_REBUILD, ROLLUPS_RUN

logger = logging.getLogger(__name__)


@app.task(bind=True, base=DatabaseTask, name=ROLLUPS_RUN)
def run(self: DatabaseTask) -> dict[str, Any]:
    report = run_until_idle(self.engine, get_settings().rollup_chunk_batches)
    if report.batches:
        logger.info(
            "rolled up %d events of %d batches in %d chunks, %.2fs",
            report.events,
            report.batches,
            report.chunks,
            report.seconds,
        )
    return {"batches": report.batches, "events": report.events, "seconds": round(report.seconds, 3)}


@app.task(bind=True, base=DatabaseTask, name=ROLLUPS_REBUILD)
def rebuild(self: DatabaseTask, start: str, end: str) -> dict[str, Any]:
    """``start``/``end``: ISO 8601 with a UTC offset; whole UTC days meeting the range are redone."""
    report = rebuild_range(self.engine, datetime.fromisoformat(start), datetime.fromisoformat(end))
    return {
        "days": [day.date().isoformat() for day in report.days],
        "skipped_days": [day.date().isoformat() for day in report.skipped_days],
        "events": report.events,
        "seconds": round(report.seconds, 3),
    }
