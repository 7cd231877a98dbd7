"""Webhook delivery against a real local HTTP receiver and the real database.

Delivered once with a valid signature; a receiver down across several retries
gets every notification afterwards exactly once; the response size cap; the
Slack format; the address checked again at delivery time (a name that now
resolves to a private address is refused, nothing is sent); a row another
attempt holds is left alone; a delivery still failing after
WEBHOOK_RETRY_FOR_S is given up; https goes to the pinned address and still
verifies the URL's host name; dispatchers racing add and claim each delivery
once. Notifications are inserted directly into the outbox (the evaluator fills
it in production).
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import sessionmaker

from alerts.delivery import DeliveryKey, attempt, dispatch, post
from alerts.signing import NOTIFICATION_ID_HEADER, SIGNATURE_HEADER, verify
from alerts.url_safety import UrlPolicy, parse_webhook_url
from alerts.webhooks import create_webhook
from config import Settings
from devtools.webhook_receiver import WebhookReceiver, self_signed_certificate

LOCAL = UrlPolicy(allow_http=True, allow_private=True)
STRICT_HTTPS = UrlPolicy()
FAST_RETRIES = {"webhook_retry_base_s": 0.05, "webhook_retry_max_s": 0.2}
SETTLE_TIMEOUT_S = 20.0
RACING_DISPATCHERS = 6
ADD_NOTIFICATION = text(
    "INSERT INTO notifications (tenant_id, id, rule_id, kind, state, payload)"
    " VALUES (:tenant, :id, 7, 'reminder', :state, CAST(:payload AS jsonb))"
)


def local_settings(**overrides: Any) -> Settings:
    values = {"webhook_allow_http": True, "webhook_allow_private_addresses": True, "webhook_timeout_s": 2.0,
              **FAST_RETRIES, **overrides}  # fmt: skip
    return Settings(**values)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.stop()


@pytest.fixture
def owned(engine: Engine, tenant: str) -> Iterator[str]:
    """The test's tenant; its webhooks (and so their deliveries) and notifications are deleted afterwards."""
    yield tenant
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM webhooks WHERE tenant_id = :t"), {"t": tenant})
        conn.execute(text("DELETE FROM notifications WHERE tenant_id = :t"), {"t": tenant})


def add_webhook(engine: Engine, tenant: str, url: str, fmt: str = "json", policy: UrlPolicy = LOCAL,
                resolver: Any = None) -> tuple[int, str]:  # fmt: skip
    extra = {} if resolver is None else {"resolver": resolver}
    with sessionmaker(engine).begin() as session:
        created = create_webhook(session, tenant, url, fmt, policy=policy, max_per_tenant=10, **extra)
    return created.webhook.id, created.secret


def notify(engine: Engine, tenant: str, state: str = "warning", **payload: Any) -> str:
    notification = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(ADD_NOTIFICATION, {"tenant": tenant, "id": notification, "state": state,
                                        "payload": json.dumps({"rule_name": "daily budget", **payload})})  # fmt: skip
    return notification


def run_once(engine: Engine, tenant: str, settings: Settings, **kwargs: Any) -> list[Any]:
    """One dispatcher run, then an attempt of each of this tenant's rows it claimed."""
    return [attempt(engine, key, settings, **kwargs) for key in dispatch(engine, settings).due
            if key.tenant_id == tenant]  # fmt: skip


def rows(engine: Engine, tenant: str) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM deliveries WHERE tenant_id = :t ORDER BY id"), {"t": tenant}).all()


def test_delivered_once_with_a_valid_signature(engine: Engine, owned: str, receiver: WebhookReceiver) -> None:
    receiver.start()
    _, secret = add_webhook(engine, owned, receiver.url)
    notification = notify(engine, owned, value="12.50", threshold="10")
    settings = local_settings()

    outcomes = run_once(engine, owned, settings)
    assert [(o.sent, o.status, o.http_status) for o in outcomes] == [(True, "delivered", 200)]
    [got] = receiver.received
    assert verify(secret, got.body, got.headers[SIGNATURE_HEADER]) > 0
    assert got.headers[NOTIFICATION_ID_HEADER] == notification
    assert got.headers["Content-Type"] == "application/json"
    body = json.loads(got.body)
    assert body == {"id": notification, "tenant_id": owned, "kind": "reminder", "state": "warning",
                    "rule_name": "daily budget", "value": "12.50", "threshold": "10"}  # fmt: skip
    [row] = rows(engine, owned)
    assert (row.status, row.attempt, row.http_status) == ("delivered", 1, 200) and row.delivered_at is not None

    # Dispatching again adds nothing; attempting the delivered row again sends nothing.
    assert run_once(engine, owned, settings) == []
    again = attempt(engine, DeliveryKey(owned, row.id), settings)
    assert (again.sent, again.status) == (False, "delivered")
    assert len(receiver.received) == 1


def test_a_receiver_down_across_retries_gets_each_notification_once_afterwards(
    engine: Engine, owned: str, receiver: WebhookReceiver
) -> None:
    add_webhook(engine, owned, receiver.url)  # the receiver is not started: connections are refused
    sent = {notify(engine, owned, state=state) for state in ("warning", "critical", "resolved")}
    settings = local_settings()
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while min((row.attempt for row in rows(engine, owned)), default=0) < 3:
        assert time.monotonic() < deadline, "the failed deliveries were not retried"
        run_once(engine, owned, settings)
        time.sleep(0.05)
    assert {row.status for row in rows(engine, owned)} == {"failed"}
    assert all(row.http_status is None and "Connection" in row.error for row in rows(engine, owned))

    receiver.start()
    while any(row.status != "delivered" for row in rows(engine, owned)):
        assert time.monotonic() < deadline, "the deliveries did not go through once the receiver was up"
        run_once(engine, owned, settings)
        time.sleep(0.05)
    for _ in range(3):  # and nothing more arrives later
        run_once(engine, owned, settings)
    assert sorted(receiver.notification_ids()) == sorted(sent)
    assert all(row.attempt >= 4 for row in rows(engine, owned))


def test_a_failing_answer_is_retried_and_logged(engine: Engine, owned: str, receiver: WebhookReceiver) -> None:
    receiver.status, receiver.answer = 503, b"busy, come back later"
    receiver.start()
    add_webhook(engine, owned, receiver.url)
    notify(engine, owned)
    [outcome] = run_once(engine, owned, local_settings(webhook_retry_base_s=60))
    assert (outcome.status, outcome.http_status, outcome.error) == ("failed", 503, "HTTP 503: busy, come back later")
    [row] = rows(engine, owned)
    assert row.next_attempt_at > row.last_attempt_at
    assert run_once(engine, owned, local_settings()) == []  # not due before its backoff


def test_the_answer_is_read_up_to_the_cap(receiver: WebhookReceiver) -> None:
    receiver.answer = b"x" * 1_000_000
    receiver.start()
    url = parse_webhook_url(receiver.url, LOCAL)
    answer = post(url, ipaddress.ip_address("127.0.0.1"), b"{}", {}, 2.0, 1024)
    assert (answer.status, len(answer.body), answer.truncated) == (200, 1024, True)
    small = post(url, ipaddress.ip_address("127.0.0.1"), b"{}", {}, 2.0, 2_000_000)
    assert (len(small.body), small.truncated) == (1_000_000, False)


def test_slack_format(engine: Engine, owned: str, receiver: WebhookReceiver) -> None:
    receiver.start()
    add_webhook(engine, owned, receiver.url, fmt="slack")
    message = "[CRITICAL] daily budget: spend is 25 USD (threshold 20 USD); reminder: still critical"
    notify(engine, owned, state="critical", message=message)
    notify(engine, owned, state="warning")  # no message: one is made of the state, the rule and the values
    run_once(engine, owned, local_settings())
    bodies = [json.loads(got.body) for got in receiver.received]
    assert all(list(body) == ["text"] for body in bodies)
    assert sorted(body["text"] for body in bodies) == [
        message,
        f"[WARNING] (reminder) rule 7 (tenant {owned}): rule_name: daily budget",
    ]


def test_the_address_is_checked_again_at_delivery_time(engine: Engine, owned: str, receiver: WebhookReceiver) -> None:
    """Created while the name resolved to a public address; it now resolves to loopback (a DNS rebinding)."""
    receiver.start()
    strict = UrlPolicy(allow_http=True)
    add_webhook(engine, owned, f"http://hooks.example.com:{receiver.port}/hook", policy=strict,
                resolver=lambda host, port: ["93.184.216.34"])  # fmt: skip
    notify(engine, owned)
    settings = local_settings(webhook_allow_private_addresses=False)
    [outcome] = run_once(engine, owned, settings, resolver=lambda host, port: ["127.0.0.1"])
    assert outcome.status == "failed"
    assert outcome.error is not None and "loopback" in outcome.error
    assert receiver.received == []


def test_a_row_held_by_another_attempt_is_left_alone(engine: Engine, owned: str, receiver: WebhookReceiver) -> None:
    receiver.start()
    add_webhook(engine, owned, receiver.url)
    notify(engine, owned)
    settings = local_settings()
    [key] = [k for k in dispatch(engine, settings).due if k.tenant_id == owned]
    with engine.begin() as holder:
        holder.execute(text("SELECT 1 FROM deliveries WHERE tenant_id = :t AND id = :id FOR UPDATE"),
                       {"t": key.tenant_id, "id": key.id})  # fmt: skip
        busy = attempt(engine, key, settings)
        assert (busy.sent, busy.status) == (False, None)
    assert receiver.received == []
    assert attempt(engine, key, settings).status == "delivered"
    assert len(receiver.received) == 1


def test_given_up_after_the_retry_period(engine: Engine, owned: str, receiver: WebhookReceiver) -> None:
    add_webhook(engine, owned, receiver.url)  # down
    notify(engine, owned)
    [key] = [k for k in dispatch(engine, local_settings()).due if k.tenant_id == owned]
    outcome = attempt(engine, key, local_settings(webhook_retry_for_s=0))  # the period is over at once
    assert (outcome.sent, outcome.status) == (True, "gave_up")
    assert run_once(engine, owned, local_settings()) == []


def test_only_the_tenants_webhooks_created_before_the_notification_get_it(
    engine: Engine, owned: str, receiver: WebhookReceiver
) -> None:
    receiver.start()
    early = notify(engine, owned)  # before any webhook: nobody gets it
    add_webhook(engine, owned, receiver.url)
    other = f"{owned}-other"
    try:
        add_webhook(engine, other, receiver.url)
        mine = notify(engine, owned)
        settings = local_settings()
        run_once(engine, owned, settings)
        assert receiver.notification_ids() == [mine] and early != mine
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM webhooks WHERE tenant_id = :t"), {"t": other})


def test_https_connects_to_the_checked_address_and_verifies_the_urls_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection goes to the pinned address while TLS sends and verifies the URL's host name (SNI)."""
    cert, key = self_signed_certificate(tmp_path, "hooks.test")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust this certificate alone
    server = WebhookReceiver(tls=(cert, key))
    server.start()
    try:
        loopback = ipaddress.ip_address("127.0.0.1")
        good = parse_webhook_url(f"https://hooks.test:{server.port}/hook", STRICT_HTTPS)
        assert post(good, loopback, b"{}", {}, 2.0, 1024).status == 200
        assert server.received[0].headers["Host"] == f"hooks.test:{server.port}"
        wrong = parse_webhook_url(f"https://other.test:{server.port}/hook", STRICT_HTTPS)
        with pytest.raises(ssl.SSLCertVerificationError, match=r"other\.test"):
            post(wrong, loopback, b"{}", {}, 2.0, 1024)
        assert len(server.received) == 1
    finally:
        server.stop()


def test_dispatchers_running_at_once_add_and_claim_each_delivery_once(engine: Engine, owned: str) -> None:
    for i in range(3):
        add_webhook(engine, owned, f"http://127.0.0.1:9/{i}")
    for _ in range(5):
        notify(engine, owned)
    settings = local_settings()
    barrier = threading.Barrier(RACING_DISPATCHERS)

    def run() -> list[DeliveryKey]:
        barrier.wait()
        return [key for key in dispatch(engine, settings).due if key.tenant_id == owned]

    with ThreadPoolExecutor(RACING_DISPATCHERS) as pool:
        claimed = [key for keys in pool.map(lambda _: run(), range(RACING_DISPATCHERS)) for key in keys]
    assert len(rows(engine, owned)) == 15
    assert sorted(claimed, key=lambda k: k.id) == sorted({*claimed}, key=lambda k: k.id)  # none claimed twice
    assert len(claimed) == 15


def test_any_failure_of_the_request_is_a_logged_attempt(engine: Engine, owned: str) -> None:
    """Not only network errors: whatever the request raises is counted, so the row still reaches gave_up."""
    add_webhook(engine, owned, "http://127.0.0.1:9/hook")
    notify(engine, owned)

    def broken(*_: Any) -> Any:
        raise ValueError("unexpected")

    [outcome] = run_once(engine, owned, local_settings(), sender=broken)
    assert (outcome.status, outcome.error) == ("failed", "ValueError: unexpected")
    assert [row.attempt for row in rows(engine, owned)] == [1]
