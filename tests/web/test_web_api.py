"""HTTP API: keys and scopes, tenant isolation on every route, per-event answers of /v1/events."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from devtools.processes import wait_for
from devtools.workers import celery_worker, describe
from storage.api_keys import create_key, revoke

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture(scope="module")
def keys(engine: Engine) -> dict[str, str]:
    """Keys of two tenants, an admin key and a revoked key."""
    suffix = uuid.uuid4().hex[:6]
    made = {}
    with Session(engine) as session, session.begin():
        for name, tenant in (("a", f"tenant-a-{suffix}"), ("b", f"tenant-b-{suffix}")):
            row, made[name] = create_key(session, name=name, tenant_id=tenant)
            made[f"{name}_tenant"] = tenant
        _, made["admin"] = create_key(session, name="ops", tenant_id=None, admin=True)
        row, made["revoked"] = create_key(session, name="old", tenant_id=made["a_tenant"])
        revoke(session, row.prefix)
    return made


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def tenant_routes(client: TestClient) -> list[str]:
    """Every GET route scoped to a tenant, as the OpenAPI schema lists them."""
    paths = client.app.openapi()["paths"]
    return sorted(path for path, ops in paths.items() if "{tenant_id}" in path and "get" in ops)


def test_dashboard_routes_exist(client: TestClient) -> None:
    assert len(tenant_routes(client)) >= 4


@pytest.mark.parametrize(
    "headers, status",
    [({}, 401), (auth("ak_nonsense"), 401), (auth("ak_0123456789ab_wrongsecret"), 401), ("revoked", 401)],
    ids=["missing", "malformed", "unknown", "revoked"],
)
def test_bad_keys_are_refused_everywhere(client: TestClient, keys: dict[str, str], headers, status: int) -> None:
    if headers == "revoked":
        headers = auth(keys["revoked"])
    tenant = keys["a_tenant"]
    for path in tenant_routes(client):
        response = client.get(path.replace("{tenant_id}", tenant), headers=headers)
        assert response.status_code == status, (path, response.text)
    response = client.post("/v1/events", json={"events": [{"feature_name": "f", "user_id": "u"}]}, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers.get("www-authenticate") == "Bearer"


def test_a_tenant_key_cannot_read_another_tenant(client: TestClient, keys: dict[str, str]) -> None:
    for path in tenant_routes(client):
        own = client.get(path.replace("{tenant_id}", keys["a_tenant"]), headers=auth(keys["a"]))
        other = client.get(path.replace("{tenant_id}", keys["b_tenant"]), headers=auth(keys["a"]))
        as_admin = client.get(path.replace("{tenant_id}", keys["b_tenant"]), headers=auth(keys["admin"]))
        assert own.status_code == 200, (path, own.text)
        assert other.status_code == 403, (path, other.text)
        assert as_admin.status_code == 200, (path, as_admin.text)


def test_a_query_parameter_given_twice_is_refused_not_half_read(client: TestClient, keys: dict[str, str]) -> None:
    tenant = keys["a_tenant"]
    once = client.get(f"/api/tenants/{tenant}/top-users", params={"feature": "smart_search"}, headers=auth(keys["a"]))
    twice = client.get(f"/api/tenants/{tenant}/top-users?feature=smart_search&feature=summarization",
                       headers=auth(keys["a"]))  # fmt: skip
    assert once.status_code == 200, once.text
    assert twice.status_code == 422, twice.text
    assert twice.json()["detail"][0]["loc"] == ["query", "feature"]
    assert "given 2 times" in twice.json()["detail"][0]["msg"]


def test_admin_keys_do_not_write_events(client: TestClient, keys: dict[str, str]) -> None:
    response = client.post("/v1/events", json={"events": [{"feature_name": "f", "user_id": "u"}]},
                           headers=auth(keys["admin"]))  # fmt: skip
    assert response.status_code == 403


def test_malformed_batches_are_refused_whole(client: TestClient, keys: dict[str, str]) -> None:
    headers = auth(keys["a"])
    empty = client.post("/v1/events", json={"events": []}, headers=headers)
    assert empty.status_code == 422 and "at least one event" in empty.text
    not_json = client.post("/v1/events", content=b"{nope", headers={**headers, "Content-Type": "application/json"})
    assert not_json.status_code == 422 and "JSON" in not_json.text
    too_many = client.post("/v1/events", json={"events": [{"feature_name": "f", "user_id": "u"}] * 1001},
                           headers=headers)  # fmt: skip
    assert too_many.status_code == 413 and "limit is 1000" in too_many.text


def test_mixed_batch_gets_per_event_answers_and_the_good_events_are_stored(
    client: TestClient, keys: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    tenant = keys["a_tenant"]
    good_id = str(uuid.uuid4())
    events = [
        {"feature_name": "summarization", "user_id": "u1", "input_tokens": 10, "output_tokens": 5,
         "latency_ms": 120.5, "status": "success", "event_id": good_id, "timestamp": "2026-11-20T10:00:00+00:00"},
        {"feature_name": "smart_search", "user_id": "u2", "status": "error", "error_type": "timeout"},
        {"feature_name": "x", "user_id": "u3", "tenant_id": keys["b_tenant"]},
        {"feature_name": "x", "user_id": "u4", "colour": "blue"},
        {"feature_name": "x", "user_id": "u5", "input_tokens": -3},
        {"feature_name": "x", "user_id": "u6", "timestamp": "2026-11-20T10:00:00"},
        {"feature_name": "x", "user_id": "u7", "input_tokens": "3"},
        {"feature_name": "x", "user_id": "u8", "status": "meh"},
        {"feature_name": "x" * 65, "user_id": "u9"},
        {"user_id": "u10"},
    ]  # fmt: skip
    with celery_worker(RABBITMQ, os.environ["INGEST_QUEUE"], log_dir=tmp_path) as worker:
        response = client.post("/v1/events", json={"events": events}, headers=auth(keys["a"]))
        assert response.status_code == 207, response.text
        body = response.json()
        assert (body["accepted"], body["rejected"]) == (2, 8)
        errors = {r["index"]: r["error"] for r in body["results"] if r["status"] == "rejected"}
        assert "tenant_id comes from the API key" in errors[2]
        assert "colour" in errors[3]
        assert "input_tokens" in errors[4] and "negative" in errors[4]
        assert "timezone" in errors[5]
        assert "input_tokens" in errors[6]
        assert "status" in errors[7]
        assert "feature_name" in errors[8]
        assert "feature_name" in errors[9]
        assert body["results"][0]["event_id"] == good_id
        second_id, second_ts = body["results"][1]["event_id"], body["results"][1]["timestamp"]

        def stored() -> list:
            with engine.connect() as conn:
                return conn.execute(
                    text("SELECT event_id::text, tenant_id FROM analytics_events WHERE user_id IN ('u1', 'u2')"
                         " AND tenant_id = :t ORDER BY user_id"), {"t": tenant}).all()  # fmt: skip

        rows = wait_for(lambda: len(s := stored()) == 2 and s, 30, lambda: describe(worker, stored=stored()))
        assert [uuid.UUID(r[0]) for r in rows] == [uuid.UUID(good_id), uuid.UUID(second_id)]

        # The same batch again (a client retry with the returned ids and times) stores nothing twice.
        events[1].update(event_id=second_id, timestamp=second_ts)
        again = client.post("/v1/events", json={"events": events[:2]}, headers=auth(keys["a"]))
        assert again.status_code == 202 and again.json()["accepted"] == 2
        from producer import get_tracker

        assert get_tracker().flush(10)
        wait_for(lambda: "'stored': 0, 'duplicates': 2" in worker.log(), 30, lambda: describe(worker))
        assert len(stored()) == 2


def test_time_to_first_token_is_documented_stored_and_refused_by_name(
    client: TestClient, keys: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    body = client.app.openapi()["paths"]["/v1/events"]["post"]["requestBody"]
    assert (
        "time_to_first_token_ms" in body["content"]["application/json"]["schema"]["properties"]["events"]["description"]
    )
    tenant = keys["a_tenant"]
    user = f"ttft-{uuid.uuid4().hex[:8]}"
    base = {"feature_name": "chat", "latency_ms": 900.4}
    events = [
        {**base, "user_id": f"{user}-1", "time_to_first_token_ms": 212.6},  # streamed: rounded like latency_ms
        {**base, "user_id": f"{user}-2", "time_to_first_token_ms": None},  # did not stream
        {**base, "user_id": f"{user}-3"},  # did not stream
        {**base, "user_id": f"{user}-4", "time_to_first_token_ms": 901},
        {**base, "user_id": f"{user}-5", "time_to_first_token_ms": -2},
        {**base, "user_id": f"{user}-6", "time_to_first_token_ms": "212"},
    ]
    with celery_worker(RABBITMQ, os.environ["INGEST_QUEUE"], log_dir=tmp_path) as worker:
        response = client.post("/v1/events", json={"events": events}, headers=auth(keys["a"]))
        assert response.status_code == 207, response.text
        answer = response.json()
        assert (answer["accepted"], answer["rejected"]) == (3, 3)
        errors = {r["index"]: r["error"] for r in answer["results"] if r["status"] == "rejected"}
        assert "time_to_first_token_ms" in errors[3] and "latency_ms (900)" in errors[3]
        assert "time_to_first_token_ms" in errors[4] and "negative" in errors[4]
        assert "time_to_first_token_ms" in errors[5] and "number" in errors[5]

        def stored() -> list:
            with engine.connect() as conn:
                return conn.execute(
                    text("SELECT user_id, latency_ms, time_to_first_token_ms FROM analytics_events"
                         " WHERE tenant_id = :t AND user_id LIKE :u ORDER BY user_id"),
                    {"t": tenant, "u": f"{user}-%"},
                ).all()  # fmt: skip

        rows = wait_for(lambda: len(s := stored()) == 3 and s, 30, lambda: describe(worker, stored=stored()))
    assert [tuple(row) for row in rows] == [(f"{user}-1", 900, 213), (f"{user}-2", 900, None), (f"{user}-3", 900, None)]
