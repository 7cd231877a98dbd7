"""Price upkeep run by Celery beat (schedule in celeryconfig, every PRICES_REFRESH_INTERVAL_S).

``prices.refresh`` recomputes the whole materialized rate table
(pricing.rates.refresh) in one transaction, so a catalog upgraded with the
installed genai-prices (taken by a worker restart) reaches every figure, old
ones included. Override changes refresh what they touch themselves; two runs
at once queue on the prices lock (pricing.locks) and write the same rows.
"""

from __future__ import annotations

import logging
from typing import Any

from pricing.rates import refresh as refresh_rates
from tasks.app import app
from tasks.base import DatabaseTask
from tasks.names import PRICES_REFRESH

logger = logging.getLogger(__name__)


@app.task(bind=True, base=DatabaseTask, name=PRICES_REFRESH)
def refresh(self: DatabaseTask) -> dict[str, Any]:
    with self.session_factory() as session, session.begin():
        result = refresh_rates(session)
    logger.info(
        "refreshed %d rate schedules of %d pairs (%d rows) in %.2fs",
        result.schedules,
        result.pairs,
        result.rows,
        result.seconds,
    )
    return {
        "pairs": result.pairs,
        "schedules": result.schedules,
        "rows": result.rows,
        "seconds": round(result.seconds, 3),
    }
