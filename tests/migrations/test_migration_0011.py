"""Migration 0011: webhooks and the delivery log, their constraints, and the way back.

A scratch database is brought to 0011: a webhook and a delivery of a
notification are stored; the constraints refuse an unknown format, an unknown
status, a second delivery of the same notification to the same webhook, a
delivery to another tenant's webhook and a delivered row without its time;
deleting the webhook deletes its log. Downgrading to 0010 drops both tables
and keeps the notifications.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from devtools.scratch_db import ScratchDatabase

TENANT = "mig11"
OTHER_TENANT = "mig11-other"
TABLES = "SELECT table_name FROM information_schema.tables WHERE table_name = ANY(:names) ORDER BY table_name"
ADD_WEBHOOK = (
    "INSERT INTO webhooks (tenant_id, url, secret, format) VALUES (:tenant, 'https://example.com/h', 's', :format)"
    " RETURNING id"
)
ADD_DELIVERY = (
    "INSERT INTO deliveries (tenant_id, notification_id, webhook_id, status, delivered_at)"
    " VALUES (:tenant, :notification, :webhook, :status, :delivered_at)"
)


def refused(scratch: ScratchDatabase, statement: str, **params: object) -> None:
    with pytest.raises(IntegrityError), scratch.engine.begin() as conn:
        conn.execute(text(statement), params)


def test_upgrade_stores_deliveries_enforces_the_constraints_and_downgrade_drops_them(
    scratch: ScratchDatabase,
) -> None:
    scratch.upgrade("0011")
    names = {"names": ["webhooks", "deliveries"]}
    assert [row[0] for row in scratch.rows(TABLES, **names)] == ["deliveries", "webhooks"]
    notification = uuid.uuid4()
    with scratch.engine.begin() as conn:
        webhook = conn.execute(text(ADD_WEBHOOK), {"tenant": TENANT, "format": "json"}).scalar_one()
        other = conn.execute(text(ADD_WEBHOOK), {"tenant": OTHER_TENANT, "format": "slack"}).scalar_one()
        conn.execute(
            text(
                "INSERT INTO notifications (tenant_id, id, rule_id, kind, state, payload)"
                " VALUES (:t, :id, 1, 'reminder', 'warning', '{}')"
            ),
            {"t": TENANT, "id": notification},
        )
        conn.execute(text(ADD_DELIVERY), {"tenant": TENANT, "notification": notification, "webhook": webhook,
                                          "status": "pending", "delivered_at": None})  # fmt: skip
    base = {"tenant": TENANT, "notification": notification, "webhook": webhook, "delivered_at": None}
    refused(scratch, ADD_WEBHOOK, tenant=TENANT, format="xml")
    refused(scratch, ADD_DELIVERY, **{**base, "status": "pending"})  # the same notification and webhook again
    refused(scratch, ADD_DELIVERY, **{**base, "webhook": other, "status": "pending"})  # another tenant's webhook
    refused(scratch, ADD_DELIVERY, **{**base, "notification": uuid.uuid4(), "status": "pending"})  # no notification
    second = uuid.uuid4()
    with scratch.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO notifications (tenant_id, id, rule_id, kind, state, payload)"
                " VALUES (:t, :id, 1, 'reminder', 'critical', '{}')"
            ),
            {"t": TENANT, "id": second},
        )
    refused(scratch, ADD_DELIVERY, **{**base, "notification": second, "status": "sent"})
    refused(scratch, ADD_DELIVERY, **{**base, "notification": second, "status": "delivered"})  # no delivered_at

    with scratch.engine.begin() as conn:
        conn.execute(text("DELETE FROM webhooks WHERE tenant_id = :t AND id = :w"), {"t": TENANT, "w": webhook})
    assert scratch.rows("SELECT count(*) FROM deliveries") == [(0,)]

    scratch.downgrade("0010")
    assert scratch.rows(TABLES, **names) == []
    assert scratch.rows("SELECT count(*) FROM notifications") == [(2,)]
