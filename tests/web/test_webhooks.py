"""Webhook API: add (secret shown once), list, delete, the delivery log; tenant keys their own tenant only,
admin keys any; refused URLs and formats are 422 naming the field."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import get_args

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from alerts.delivery import attempt, dispatch
from config import get_settings
from devtools.webhook_receiver import WebhookReceiver
from models.webhook import DELIVERY_STATUSES
from storage.api_keys import create_key
from web.webhooks import DeliveryStatus


@pytest.fixture(scope="module")
def tenants() -> tuple[str, str]:
    return f"wh-{uuid.uuid4().hex[:8]}", f"wh-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def keys(engine: Engine, tenants: tuple[str, str]) -> dict[str, str]:
    with Session(engine) as session, session.begin():
        _, admin = create_key(session, name="webhooks admin", tenant_id=None, admin=True)
        _, mine = create_key(session, name="webhooks tenant", tenant_id=tenants[0], admin=False)
        _, other = create_key(session, name="webhooks other", tenant_id=tenants[1], admin=False)
    return {"admin": admin, "mine": mine, "other": other}


@pytest.fixture
def local_receivers_allowed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings that let a webhook point at the local receiver (http, loopback)."""
    monkeypatch.setenv("WEBHOOK_ALLOW_HTTP", "true")
    monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE_ADDRESSES", "true")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    server.start()
    yield server
    server.stop()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_add_list_deliver_log_and_delete(
    client: TestClient,
    engine: Engine,
    keys: dict[str, str],
    tenants: tuple[str, str],
    receiver: WebhookReceiver,
    local_receivers_allowed: None,
) -> None:
    tenant = tenants[0]
    base = f"/api/tenants/{tenant}/webhooks"
    created = client.post(base, json={"url": receiver.url, "format": "slack"}, headers=auth(keys["mine"]))
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["secret"].startswith("whsec_") and hook["format"] == "slack" and hook["tenant_id"] == tenant
    listed = client.get(base, headers=auth(keys["mine"])).json()
    assert [w["id"] for w in listed] == [hook["id"]] and "secret" not in listed[0]

    notification = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO notifications (tenant_id, id, rule_id, kind, state, payload)"
                " VALUES (:t, :id, 1, 'reminder', 'warning', CAST(:p AS jsonb))"
            ),
            {"t": tenant, "id": notification, "p": json.dumps({"rule_name": "spend"})},
        )
    settings = get_settings()
    for key in dispatch(engine, settings).due:
        if key.tenant_id == tenant:
            attempt(engine, key, settings)
    log = client.get(f"{base}/deliveries", headers=auth(keys["mine"])).json()
    assert [(d["notification_id"], d["status"], d["attempt"], d["http_status"]) for d in log] == [
        (str(notification), "delivered", 1, 200)
    ]
    assert client.get(f"{base}/deliveries", params={"status": "failed"}, headers=auth(keys["mine"])).json() == []

    assert client.delete(f"{base}/{hook['id']}", headers=auth(keys["mine"])).status_code == 204
    assert client.delete(f"{base}/{hook['id']}", headers=auth(keys["mine"])).status_code == 404
    assert client.get(base, headers=auth(keys["mine"])).json() == []
    assert client.get(f"{base}/deliveries", headers=auth(keys["mine"])).json() == []  # the log went with it


def test_keys_reach_their_own_tenant_only_admin_any(
    client: TestClient, keys: dict[str, str], tenants: tuple[str, str], local_receivers_allowed: None
) -> None:
    other = f"/api/tenants/{tenants[1]}/webhooks"
    url = "http://127.0.0.1:9/hook"
    assert client.get(other, headers=auth(keys["mine"])).status_code == 403
    assert client.post(other, json={"url": url}, headers=auth(keys["mine"])).status_code == 403
    assert client.get(f"{other}/deliveries", headers=auth(keys["mine"])).status_code == 403
    made = client.post(other, json={"url": url}, headers=auth(keys["admin"]))
    assert made.status_code == 201
    assert client.delete(f"{other}/{made.json()['id']}", headers=auth(keys["mine"])).status_code == 403
    assert [w["id"] for w in client.get(other, headers=auth(keys["other"])).json()] == [made.json()["id"]]
    assert client.delete(f"{other}/{made.json()['id']}", headers=auth(keys["admin"])).status_code == 204
    assert client.get(other).status_code == 401


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"url": "http://127.0.0.1:8080/hook"}, "url", "https"),
        ({"url": "https://127.0.0.1/hook"}, "url", "loopback"),
        ({"url": "https://169.254.169.254/latest"}, "url", "metadata"),
        ({"url": "https://[::1]/hook"}, "url", "loopback"),
        ({"url": "https://localhost/hook"}, "url", "loopback"),
        ({"url": "https://10.0.0.8/hook"}, "url", "private"),
        ({"url": "https://example.com/hook", "format": "xml"}, "format", "json"),
        ({"url": "https://example.com/hook", "secret": "mine"}, "secret", "Extra"),
    ],
)
def test_refused_input_is_422_naming_the_field(
    client: TestClient, keys: dict[str, str], tenants: tuple[str, str], body: dict[str, str], field: str, message: str
) -> None:
    answer = client.post(f"/api/tenants/{tenants[0]}/webhooks", json=body, headers=auth(keys["mine"]))
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["loc"][-1] == field and message in error["msg"]


def test_bad_log_filters_are_422(client: TestClient, keys: dict[str, str], tenants: tuple[str, str]) -> None:
    base = f"/api/tenants/{tenants[0]}/webhooks/deliveries"
    answer = client.get(base, params={"status": "sent"}, headers=auth(keys["mine"]))
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["query", "status"]
    assert client.get(base, params={"limit": 0}, headers=auth(keys["mine"])).status_code == 422


def test_a_tenant_has_at_most_its_limit_of_webhooks(
    client: TestClient, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch, local_receivers_allowed: None
) -> None:
    monkeypatch.setenv("WEBHOOK_MAX_PER_TENANT", "2")
    get_settings.cache_clear()
    tenant = f"wh-{uuid.uuid4().hex[:8]}"
    base = f"/api/tenants/{tenant}/webhooks"
    made = [client.post(base, json={"url": f"http://127.0.0.1:9/{i}"}, headers=auth(keys["admin"])) for i in range(3)]
    assert [answer.status_code for answer in made] == [201, 201, 409]
    assert "WEBHOOK_MAX_PER_TENANT" in made[2].json()["detail"]
    for answer in made[:2]:
        assert client.delete(f"{base}/{answer.json()['id']}", headers=auth(keys["admin"])).status_code == 204


def test_other_methods_are_405_with_the_allowed_ones(
    client: TestClient, keys: dict[str, str], tenants: tuple[str, str]
) -> None:
    answer = client.put(f"/api/tenants/{tenants[0]}/webhooks", headers=auth(keys["mine"]))
    assert answer.status_code == 405 and answer.headers["Allow"] == "GET, HEAD, POST"
    answer = client.delete(f"/api/tenants/{tenants[0]}/webhooks/deliveries", headers=auth(keys["mine"]))
    assert answer.status_code == 405


def test_the_published_statuses_are_the_stored_ones() -> None:
    assert set(get_args(DeliveryStatus)) == set(DELIVERY_STATUSES)
