"""The web service's edge (issue 12): no write without a key, bodies bounded while they stream and
read only after the key is checked, per-key rate limits, per-event errors that name the field,
and the stand-in SaaS app (demo.saas) still tracking its calls now that it runs apart.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from config import get_settings
from devtools.processes import spare_port, wait_for
from devtools.web import Server, uvicorn_server
from devtools.workers import celery_worker, describe
from storage.api_keys import create_key

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
MB = 1_000_000
HUGE_BODY_BYTES = 200 * MB  # the issue's attack: 200 MB, chunked (no Content-Length)
CHUNK_BYTES = 64 * 1024
MOST_SENT_BYTES = HUGE_BODY_BYTES // 4  # a generous bound: refused bodies stop at a few MB
MAX_RSS_GROWTH_KB = 20 * 1024  # the issue's bound on the web process's memory
SMALL_LIMIT = 3  # requests per window in the rate-limit tests
WINDOW_S = 60


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def tenant_key(engine: Engine, name: str) -> tuple[str, str]:
    """A fresh tenant and its key."""
    tenant = f"{name}-{uuid.uuid4().hex[:8]}"
    with Session(engine) as session, session.begin():
        _, key = create_key(session, name=name, tenant_id=tenant)
    return tenant, key


# --- finding 1: no route of the analytics service writes without a key ------------------------


def write_routes() -> list[tuple[str, str]]:
    """(method, path) of every route of web.app.app that takes a write method, schema or not."""
    from fastapi.routing import iter_route_contexts

    from web.app import app

    found = []
    for route in iter_route_contexts(app.routes):
        for method in sorted((route.methods or set()) & WRITE_METHODS):
            found.append((method, route.path))
    return found


def test_every_write_route_of_the_analytics_service_needs_a_key(client: TestClient) -> None:
    routes = write_routes()
    assert ("POST", "/v1/events") in routes  # the walk sees the routes
    for method, path in routes:
        # any value for a path parameter, a number where the route's converter wants one
        concrete = re.sub(r"\{\w+:int\}", "1", path).replace("{", "").replace("}", "")
        body = {"tenant_id": "victim", "user_id": "u", "events": [{"feature_name": "f", "user_id": "u"}]}
        response = client.request(method, concrete, json=body)
        assert response.status_code == 401, (method, path, response.status_code, response.text)


def test_the_saas_demo_app_tracks_its_calls_end_to_end(engine: Engine, tmp_path: Path) -> None:
    from demo.saas import app
    from producer import get_tracker

    tenant, user = f"saas-{uuid.uuid4().hex[:8]}", f"user-{uuid.uuid4().hex[:8]}"
    with celery_worker(RABBITMQ, os.environ["INGEST_QUEUE"], log_dir=tmp_path) as worker, TestClient(app) as saas:
        response = saas.post("/api/ai-feature/summarization", json={"tenant_id": tenant, "user_id": user,
                                                                     "input": "hello " * 20})  # fmt: skip
        assert response.status_code in (200, 502), response.text  # 502: the stand-in AI failed, still tracked
        unknown = saas.post("/api/ai-feature/no_such_feature", json={"tenant_id": tenant, "user_id": user})
        assert unknown.status_code == 404
        assert get_tracker().flush(10)

        def stored() -> list:
            with engine.connect() as conn:
                return conn.execute(text("SELECT feature_name, status FROM analytics_events"
                                         " WHERE tenant_id = :t AND user_id = :u"), {"t": tenant, "u": user}).all()  # fmt: skip

        rows = wait_for(stored, 30, lambda: describe(worker, stored=stored()))
    assert rows == [("summarization", "success" if response.status_code == 200 else "error")]


# --- finding 8: a missing field is named -------------------------------------------------------


def test_an_event_without_a_required_field_is_told_which(client: TestClient, engine: Engine) -> None:
    _, key = tenant_key(engine, "fields")
    events = [{"user_id": "u"}, {"feature_name": "f"}, {"model": "m"}]
    response = client.post("/v1/events", json={"events": events}, headers=auth(key))
    assert response.status_code == 207, response.text
    errors = [result["error"] for result in response.json()["results"]]
    assert errors == ["feature_name is required", "user_id is required", "feature_name and user_id are required"]
    assert "Tracker" not in response.text and "keyword argument" not in response.text


def test_bodies_that_are_not_json_keep_their_clear_errors(client: TestClient, engine: Engine) -> None:
    _, key = tenant_key(engine, "bodies")
    headers = {**auth(key), "Content-Type": "application/json"}
    not_utf8 = client.post("/v1/events", content=b'{"events": ["\xff\xfe"]}', headers=headers)
    assert not_utf8.status_code == 400 and "UTF-8" in not_utf8.json()["detail"]
    not_json = client.post("/v1/events", content=b"{nope", headers=headers)
    assert not_json.status_code == 422 and not_json.json()["detail"][0]["loc"][0] == "body"
    empty = client.post("/v1/events", content=b"", headers=headers)
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body"]
    wrong_shape = client.post("/v1/events", json={"events": "all of them"}, headers=auth(key))
    assert wrong_shape.status_code == 422 and wrong_shape.json()["detail"][0]["loc"] == ["body", "events"]
    not_declared_json = client.post(
        "/v1/events", content=b'{"events": []}', headers={**auth(key), "Content-Type": "text/plain"}
    )
    assert not_declared_json.status_code == 422 and "Content-Type" in not_declared_json.text


@pytest.mark.parametrize("depth", [990, 100_000], ids=["under-the-parser-limit", "over-it"])
@pytest.mark.parametrize("shape", ["%s", '{"events": [%s]}', '{"events": [{"feature_name": "f", "user_id": "u", "model": %s}]}'],
                         ids=["body", "event", "field"])  # fmt: skip
def test_deeply_nested_json_is_refused_not_a_server_error(client: TestClient, engine: Engine, depth: int,
                                                          shape: str) -> None:  # fmt: skip
    _, key = tenant_key(engine, "nested")
    body = shape % ("[" * depth + "]" * depth)
    response = client.post(
        "/v1/events", content=body.encode(), headers={**auth(key), "Content-Type": "application/json"}
    )
    assert response.status_code in (207, 422), response.text[:300]
    assert len(response.content) < 2_000, "a refused list or object is not echoed back"


@pytest.mark.parametrize(
    "body, status",
    [('{"events": [{"feature_name": "f", "user_id": "u", "event_id": "\\ud800"}]}', 207),
     ('{"events": [{"feature_name": "f\\udfff", "user_id": "u"}]}', 207),
     ('{"events": "\\ud800"}', 422),
     ('{"events": [{"feature_name": "f", "user_id": "u", "input_tokens": %s}]}' % ("9" * 5000), 422)],
    ids=["surrogate-event-id", "surrogate-field", "surrogate-events", "5000-digit-int"],
)  # fmt: skip
def test_json_that_python_parses_badly_is_answered_not_a_server_error(client: TestClient, engine: Engine, body: str,
                                                                      status: int) -> None:  # fmt: skip
    _, key = tenant_key(engine, "oddjson")
    response = client.post(
        "/v1/events", content=body.encode(), headers={**auth(key), "Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text[:300]


# --- finding 2: the key before the body, the body bounded while it streams ----------------------


def vm_kb(pid: int, field: str) -> int:
    """A memory figure of a process from /proc/<pid>/status (VmRSS: now, VmHWM: the peak), in kB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


class Upload:
    """A chunked body of ``total`` bytes (no Content-Length) that counts what the client sent."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        chunk = b"x" * CHUNK_BYTES
        while self.sent < self.total:
            piece = chunk[: self.total - self.sent]
            self.sent += len(piece)
            yield piece


@pytest.fixture(scope="module")
def web(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The web app under uvicorn, one process (its RSS is the one measured)."""
    log_dir = tmp_path_factory.mktemp("web-edge")
    with uvicorn_server(log_dir, {"PRODUCER_SPOOL_DIR": str(log_dir / "spool")}) as server:
        yield server


def test_a_200_mb_chunked_body_is_refused_early_without_and_with_a_key(web: Server, engine: Engine) -> None:
    _, key = tenant_key(engine, "huge")
    pid = web.proc.pid
    with httpx.Client(base_url=web.url, timeout=60) as http:
        warm = http.post("/v1/events", json={"events": [{"user_id": "u"}]}, headers=auth(key))  # lazy imports, pools
        assert warm.status_code == 207, warm.text
        rss_before = vm_kb(pid, "VmRSS")
        answers = {}
        for name, headers in (("no key", {}), ("valid key", auth(key))):
            upload = Upload(HUGE_BODY_BYTES)
            started = time.monotonic()
            response = http.post("/v1/events", content=upload, headers={**headers, "Content-Type": "application/json"})
            answers[name] = (response.status_code, response.json()["detail"], upload.sent, time.monotonic() - started)
        peak_growth_kb = vm_kb(pid, "VmHWM") - rss_before
        rss_growth_kb = vm_kb(pid, "VmRSS") - rss_before
    limit = get_settings().http_max_body_bytes
    print(f"answers={answers} rss_growth_kb={rss_growth_kb} peak_growth_kb={peak_growth_kb}")
    assert answers["no key"][0] == 401, answers
    assert answers["valid key"][0] == 413 and str(limit) in answers["valid key"][1], answers
    for name, (_, _, sent, _) in answers.items():
        # The server answered and closed long before the client had sent it all: with a key, it
        # read about HTTP_MAX_BODY_BYTES; without one, nothing (loopback socket buffers take a few MB).
        assert sent < MOST_SENT_BYTES, (name, sent)
    assert rss_growth_kb < MAX_RSS_GROWTH_KB and peak_growth_kb < MAX_RSS_GROWTH_KB, (rss_growth_kb, peak_growth_kb)
    assert web.proc.poll() is None


def test_a_content_length_over_the_limit_is_refused_unread(web: Server, engine: Engine) -> None:
    _, key = tenant_key(engine, "declared")
    limit = get_settings().http_max_body_bytes
    upload = Upload(HUGE_BODY_BYTES)
    headers = {**auth(key), "Content-Type": "application/json", "Content-Length": str(HUGE_BODY_BYTES)}
    response = httpx.post(f"{web.url}/v1/events", content=upload, headers=headers, timeout=60)
    assert response.status_code == 413, response.text
    assert f"over {limit} bytes" in response.json()["detail"]
    assert upload.sent < MOST_SENT_BYTES, upload.sent  # refused on its header: what was sent is the socket buffers


def test_a_chunked_body_just_over_the_limit_is_refused_with_a_valid_key(client: TestClient, engine: Engine) -> None:
    """What the Content-Length check missed: a body without one used to be read and parsed whatever its size."""
    _, key = tenant_key(engine, "chunked")
    limit = get_settings().http_max_body_bytes
    padding = "p" * limit
    body = f'{{"events": [{{"feature_name": "f", "user_id": "{padding}"}}]}}'.encode()
    response = client.post("/v1/events", content=iter([body[i : i + CHUNK_BYTES] for i in range(0, len(body), CHUNK_BYTES)]),
                           headers={**auth(key), "Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 413, response.text


# --- finding 7: per-key rate limits -------------------------------------------------------------


@contextmanager
def app_with(monkeypatch: pytest.MonkeyPatch, **env: str) -> Iterator[TestClient]:
    """The web app started with these settings (its lifespan builds the rate limiter from them)."""
    from web.app import app

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        with TestClient(app) as test_client:
            yield test_client
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


@pytest.fixture
def limited_client(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The web app with RATE_LIMIT_INGEST and RATE_LIMIT_READ of SMALL_LIMIT per minute."""
    with app_with(monkeypatch, RATE_LIMIT_INGEST=f"{SMALL_LIMIT}/minute",
                  RATE_LIMIT_READ=f"{SMALL_LIMIT} per {WINDOW_S} seconds") as test_client:  # fmt: skip
        yield test_client


def assert_limited(response: httpx.Response, setting: str) -> None:
    assert response.status_code == 429, response.text
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= WINDOW_S, retry_after
    assert setting in response.json()["detail"] and f"{SMALL_LIMIT} per" in response.json()["detail"]


def test_ingest_is_limited_per_key(limited_client: TestClient, engine: Engine) -> None:
    _, key_a = tenant_key(engine, "limited-a")
    _, key_b = tenant_key(engine, "limited-b")
    rejected_only = {"events": [{"user_id": "u"}]}  # answered per event, nothing tracked

    def post(key: str) -> httpx.Response:
        return limited_client.post("/v1/events", json=rejected_only, headers=auth(key))

    assert [post(key_a).status_code for _ in range(SMALL_LIMIT)] == [207] * SMALL_LIMIT
    assert_limited(post(key_a), "RATE_LIMIT_INGEST")
    # Refused before its body is read: an oversized chunked body gets the 429, not a 413.
    oversized = limited_client.post("/v1/events", content=iter([b"x" * CHUNK_BYTES] * 100),
                                    headers={**auth(key_a), "Content-Type": "application/json"})  # fmt: skip
    assert_limited(oversized, "RATE_LIMIT_INGEST")
    assert post(key_b).status_code == 207  # another key keeps its own budget
    assert (
        limited_client.post("/v1/events", json=rejected_only, headers=auth("ak_0123456789ab_unknown")).status_code
        == 401
    )


def test_reads_are_limited_per_key_and_monitoring_is_not(limited_client: TestClient, engine: Engine) -> None:
    tenant_a, key_a = tenant_key(engine, "reads-a")
    tenant_b, key_b = tenant_key(engine, "reads-b")

    def summary(tenant: str, key: str) -> httpx.Response:
        return limited_client.get(f"/api/tenants/{tenant}/summary", headers=auth(key))

    assert [summary(tenant_a, key_a).status_code for _ in range(SMALL_LIMIT)] == [200] * SMALL_LIMIT
    assert_limited(summary(tenant_a, key_a), "RATE_LIMIT_READ")
    assert_limited(limited_client.get(f"/api/tenants/{tenant_a}/top-users", headers=auth(key_a)), "RATE_LIMIT_READ")
    assert summary(tenant_b, key_b).status_code == 200
    for _ in range(3 * SMALL_LIMIT):
        assert limited_client.get("/health").status_code == 200
        assert limited_client.get("/metrics").status_code == 200


def test_an_unreachable_limiter_storage_is_a_503_not_unlimited(
    database_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant, key = tenant_key(engine, "no-storage")
    with app_with(monkeypatch, RATE_LIMIT_STORAGE_URL=f"redis://127.0.0.1:{spare_port()}/0") as client:
        ingest = client.post("/v1/events", json={"events": [{"user_id": "u"}]}, headers=auth(key))
        read = client.get(f"/api/tenants/{tenant}/summary", headers=auth(key))
        health = client.get("/health")
    for response in (ingest, read):
        assert response.status_code == 503, response.text
        assert "rate limiter" in response.json()["detail"]
    assert health.status_code == 200
