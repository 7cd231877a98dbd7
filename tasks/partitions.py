"""Partition upkeep run by Celery beat (schedule in celeryconfig).

``ensure_ahead`` keeps the current month and ``PARTITION_MONTHS_AHEAD`` after
it created; ``apply_retention`` retires months older than
``PARTITION_RETENTION_MONTHS``. Both are safe to run twice at once: creation
is serialised by an advisory lock and finds nothing left to do the second
time, and a retention run that finds another one in progress skips.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from config import get_settings
from storage.partitions import PartitionPolicy, ensure_partitions, months_ahead, run_retention
from tasks.app import app
from tasks.base import DatabaseTask
from tasks.names import PARTITIONS_APPLY_RETENTION, PARTITIONS_ENSURE_AHEAD

logger = logging.getLogger(__name__)


@app.task(bind=True, base=DatabaseTask, name=PARTITIONS_ENSURE_AHEAD)
def ensure_ahead(self: DatabaseTask) -> list[str]:
    """Create the missing ones of the current month and the months ahead."""
    policy = PartitionPolicy.from_settings(get_settings())
    wanted = months_ahead(datetime.now(UTC), policy.months_ahead)
    return [month.table_name for month in ensure_partitions(self.engine, wanted, policy)]


@app.task(bind=True, base=DatabaseTask, name=PARTITIONS_APPLY_RETENTION)
def apply_retention(self: DatabaseTask) -> dict[str, Any]:
    """Detach and drop (or keep detached) the months older than retention."""
    policy = PartitionPolicy.from_settings(get_settings())
    # DETACH and DROP need the owner, and cannot run inside the worker role's function.
    report = run_retention(self.owner_engine, policy, datetime.now(UTC))
    if report.skipped:
        logger.info("retention skipped: %s", report.skipped)
    return {"detached": report.detached, "dropped": report.dropped, "skipped": report.skipped}
