"""POST /v1/events with token buckets and a provider: accepted ones are stored with them,
refused ones name the field, and the OpenAPI description documents them."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from devtools.processes import wait_for
from devtools.workers import celery_worker, describe
from schema.event import MAX_PROVIDER_LEN
from storage.api_keys import create_key

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
BUCKETS = ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "provider")


def test_the_event_batch_schema_documents_the_buckets(client: TestClient) -> None:
    body = client.app.openapi()["paths"]["/v1/events"]["post"]["requestBody"]
    description = body["content"]["application/json"]["schema"]["properties"]["events"]["description"]
    assert all(name in description for name in BUCKETS)


def test_buckets_and_provider_are_stored_and_bad_ones_refused_by_name(
    client: TestClient, engine: Engine, tmp_path: Path
) -> None:
    tenant = f"buckets-{uuid.uuid4().hex[:8]}"
    with Session(engine) as session, session.begin():
        _, key = create_key(session, name="buckets", tenant_id=tenant)
    base = {"feature_name": "summarization", "input_tokens": 1000, "output_tokens": 200}
    events = [
        {**base, "user_id": "u1", "cache_read_tokens": 600, "cache_write_tokens": 400, "reasoning_tokens": 200,
         "provider": "anthropic"},
        {**base, "user_id": "u2"},  # none given: 0, 0, 0 and no provider
        {**base, "user_id": "u3", "cache_read_tokens": 600, "cache_write_tokens": 401},
        {**base, "user_id": "u4", "reasoning_tokens": 201},
        {**base, "user_id": "u5", "cache_read_tokens": -1},
        {**base, "user_id": "u6", "reasoning_tokens": "5"},
        {**base, "user_id": "u7", "provider": 7},
        {**base, "user_id": "u8", "provider": "p" * (MAX_PROVIDER_LEN + 1)},
    ]  # fmt: skip
    with celery_worker(RABBITMQ, os.environ["INGEST_QUEUE"], log_dir=tmp_path) as worker:
        response = client.post("/v1/events", json={"events": events}, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 207, response.text
        body = response.json()
        assert (body["accepted"], body["rejected"]) == (2, 6)
        errors = {r["index"]: r["error"] for r in body["results"] if r["status"] == "rejected"}
        assert "cache_read_tokens + cache_write_tokens" in errors[2] and "input_tokens" in errors[2]
        assert "reasoning_tokens" in errors[3] and "output_tokens" in errors[3]
        assert "cache_read_tokens" in errors[4] and "negative" in errors[4]
        assert "reasoning_tokens" in errors[5]
        assert "provider" in errors[6]
        assert "provider" in errors[7] and str(MAX_PROVIDER_LEN) in errors[7]

        def stored() -> list:
            with engine.connect() as conn:
                return conn.execute(
                    text(f"SELECT user_id, {', '.join(BUCKETS)} FROM analytics_events WHERE tenant_id = :t"
                         " ORDER BY user_id"), {"t": tenant}).all()  # fmt: skip

        rows = wait_for(lambda: len(s := stored()) == 2 and s, 30, lambda: describe(worker, stored=stored()))
    assert [tuple(row) for row in rows] == [("u1", 600, 400, 200, "anthropic"), ("u2", 0, 0, 0, None)]
