"""Alert evaluation run by Celery beat (schedule in celeryconfig, every ALERT_EVALUATE_INTERVAL_S).

``alerts.evaluate`` measures every enabled rule, steps its state machine and
writes state changes, history and notifications (alerts.evaluate). Runs on
its own queue (ALERTS_QUEUE); two at once are harmless: the second finds the
evaluator lock taken and returns.
"""

from __future__ import annotations

import logging
from typing import Any

from alerts.evaluate import evaluate_all
from config import get_settings
from tasks.app import app
from tasks.base import DatabaseTask
from tasks.names import ALERTS_EVALUATE

logger = logging.getLogger(__name__)


@app.task(bind=True, base=DatabaseTask, name=ALERTS_EVALUATE)
def evaluate(self: DatabaseTask) -> dict[str, Any]:
    report = evaluate_all(self.engine, get_settings())
    if report.skipped:
        logger.info("alert evaluation skipped: %s", report.skipped)
    elif report.changes or report.reminders or report.failed:
        logger.info(
            "evaluated %d alert rules: %d state changes, %d reminders, %d failed, %.2fs",
            report.rules,
            report.changes,
            report.reminders,
            report.failed,
            report.seconds,
        )
    return report.as_dict()
