"""Webhook delivery tasks, on the alerts queue (ALERTS_QUEUE).

``webhooks.dispatch`` (beat, every WEBHOOK_DISPATCH_INTERVAL_S; the evaluator
may also send it right after it adds notifications) turns new notifications
into delivery rows and enqueues one ``webhooks.deliver`` per row due.
``webhooks.deliver`` makes one signed attempt and logs it (alerts.delivery).

The table decides, the messages only wake: ``deliver`` is ``acks_late`` and
``reject_on_worker_lost``, so a worker killed mid-delivery gets the message
redelivered; a message lost altogether leaves its row due again after
alerts.delivery.QUEUED_LEASE_S, for the next dispatch. An attempt that raises
(the database unreachable) is not retried by Celery for the same reason.
"""

from __future__ import annotations

import logging
from typing import Any

from alerts.delivery import DeliveryKey, attempt, dispatch
from config import get_settings
from tasks.app import app
from tasks.base import DatabaseTask
from tasks.names import WEBHOOKS_DELIVER, WEBHOOKS_DISPATCH

logger = logging.getLogger(__name__)


@app.task(bind=True, base=DatabaseTask, name=WEBHOOKS_DISPATCH)
def dispatch_deliveries(self: DatabaseTask) -> dict[str, int]:
    result = dispatch(self.engine, get_settings())
    for key in result.due:
        self.app.send_task(WEBHOOKS_DELIVER, args=[key.tenant_id, key.id],
                           argsrepr=f"[{key.tenant_id!r}, {key.id}]", kwargsrepr="{}")  # fmt: skip
    if result.created or result.due:
        logger.info("webhooks: %d deliveries added, %d enqueued", result.created, len(result.due))
    return {"created": result.created, "enqueued": len(result.due)}


@app.task(bind=True, base=DatabaseTask, name=WEBHOOKS_DELIVER, acks_late=True, reject_on_worker_lost=True)
def deliver(self: DatabaseTask, tenant_id: str, delivery_id: int) -> dict[str, Any]:
    outcome = attempt(self.engine, DeliveryKey(tenant_id, delivery_id), get_settings())
    if outcome.error is not None:
        logger.warning("webhook delivery %s/%d failed (%s); now %s, next attempt %s", tenant_id, delivery_id,
                       outcome.error, outcome.status, outcome.next_attempt_at)  # fmt: skip
    return {"sent": outcome.sent, "status": outcome.status, "http_status": outcome.http_status}
