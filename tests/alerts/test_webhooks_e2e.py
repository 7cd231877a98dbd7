"""From tracked events to a real receiver: a month budget crossed by tracked calls notifies warning, then
critical, then resolved once the budget is raised; the receiver is down for the last two and gets each of
the three exactly once, signed, once it is back. Real clock: the evaluator stamps notifications with it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import sessionmaker

from alerts.delivery import attempt, dispatch
from alerts.evaluate import evaluate_all
from alerts.signing import NOTIFICATION_ID_HEADER, SIGNATURE_HEADER, verify
from alerts.url_safety import UrlPolicy
from alerts.webhooks import create_webhook
from config import Settings
from devtools.webhook_receiver import WebhookReceiver
from tests.alerts.conftest import CALL_FEE, store_rule, track

pytestmark = pytest.mark.usefixtures("no_rules")

SETTLE_TIMEOUT_S = 20.0
EVALUATOR = Settings()
DELIVERY = Settings(webhook_allow_http=True, webhook_allow_private_addresses=True, webhook_retry_base_s=0.05,
                    webhook_retry_max_s=0.2)  # fmt: skip


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.stop()


def deliver_due(engine: Engine, tenant: str) -> None:
    for key in dispatch(engine, DELIVERY).due:
        if key.tenant_id == tenant:
            attempt(engine, key, DELIVERY)


def evaluate(engine: Engine) -> None:
    assert evaluate_all(engine, EVALUATOR).failed == 0


def test_budget_crossed_by_tracked_calls_reaches_the_receiver_once_each(
    engine: Engine, priced_tenant: str, receiver: WebhookReceiver
) -> None:
    tenant = priced_tenant
    receiver.start()
    with sessionmaker(engine).begin() as session:
        secret = create_webhook(session, tenant, receiver.url, "json", policy=UrlPolicy(allow_http=True, allow_private=True),
                                max_per_tenant=1).secret  # fmt: skip
    rule = store_rule(engine, tenant, name="monthly", kind="budget_month", warning_threshold=3 * CALL_FEE,
                      critical_threshold=5 * CALL_FEE)  # fmt: skip
    moment = datetime.now(UTC) - timedelta(seconds=5)

    track(engine, tenant, [moment] * 3)
    evaluate(engine)
    deliver_due(engine, tenant)
    assert len(receiver.received) == 1

    receiver.stop()  # down for the next two
    track(engine, tenant, [moment] * 2)
    evaluate(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alert_rules SET warning_threshold = 100, critical_threshold = 200"
                          " WHERE tenant_id = :t AND id = :r"), {"t": tenant, "r": rule.id})  # fmt: skip
    evaluate(engine)
    for _ in range(3):
        deliver_due(engine, tenant)
        time.sleep(0.1)
    receiver.start()
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while len(receiver.received) < 3:
        assert time.monotonic() < deadline, "the notifications did not arrive once the receiver was back"
        deliver_due(engine, tenant)
        time.sleep(0.05)
    for _ in range(3):
        deliver_due(engine, tenant)

    with engine.connect() as conn:
        stored = {str(row.id): row.state for row in conn.execute(
            text("SELECT id, state FROM notifications WHERE tenant_id = :t"), {"t": tenant})}  # fmt: skip
    assert sorted(stored.values()) == ["critical", "resolved", "warning"]
    assert sorted(receiver.notification_ids()) == sorted(stored)  # each one, once
    for got in receiver.received:
        assert verify(secret, got.body, got.headers[SIGNATURE_HEADER]) > 0
        body = json.loads(got.body)
        assert body["id"] == got.headers[NOTIFICATION_ID_HEADER] and body["state"] == stored[body["id"]]
        assert body["rule"]["name"] == "monthly" and body["message"].startswith(f"[{body['state'].upper()}] monthly")
