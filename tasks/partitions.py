"""Partition upkeep run by Celery beat: the current month and N ahead exist."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from config import get_settings
from storage.partitions import ensure_months, months_ahead
from tasks.app import app
from tasks.base import DatabaseTask

logger = logging.getLogger(__name__)


@app.task(bind=True, base=DatabaseTask, name="partitions.ensure_ahead")
def ensure_ahead(self: DatabaseTask) -> list[str]:
    wanted = months_ahead(datetime.now(timezone.utc), get_settings().partition_months_ahead)
    with self.engine.begin() as conn:
        created = ensure_months(conn, wanted)
    for month in created:
        logger.info("created partition %s", month.table_name)
    return [month.table_name for month in created]
