"""The OpenAPI schema the app publishes holds for the app itself (schemathesis against a running uvicorn).

Every operation in ``/openapi.json`` gets generated requests, valid and
invalid ones, sent with a valid tenant key and the path's ``tenant_id`` fixed
to that key's tenant (so the requests reach the handlers instead of stopping
at 403). schemathesis' default checks run on each answer: no server error,
a documented status code and content type, a body that matches the
documented response schema, invalid input refused, valid input accepted.
Bounded (``MAX_EXAMPLES`` per operation) to stay well under a minute.

A real worker consumes the private ingest queue, so events the fuzzer gets
accepted are stored like any others.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from kombu import Connection
from schemathesis.generation import GenerationMode
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from config import get_settings
from devtools.web import Server, uvicorn_server
from devtools.workers import celery_worker
from storage.api_keys import create_key
from web.app import app
from web.dashboard import DEFAULT_SERIES_FEATURES, EARLIEST, LATEST, MAX_WINDOW

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
MAX_EXAMPLES = 15
SCHEMA_PATH = "/openapi.json"
# The producer publishes within one flush interval; kept short so the server stops quickly.
FLUSH_INTERVAL_MS = "50"
RANGE_FIX = timedelta(hours=1)  # an inconsistent generated range becomes the hour before its end
YEAR_MIDDLE = 5000  # a moment that overflowed in UTC was near year 1 below this, near 9999 above


# The schema is the app's own (read in-process at collection: the app builds it whether or not it
# serves it, which API_DOCS_ENABLED decides); the requests go to a real uvicorn.
TENANT = f"contract-{uuid.uuid4().hex[:8]}"
schema = schemathesis.openapi.from_dict(app.openapi())
schema.config.update(parameters={"path.tenant_id": TENANT})
schema.config.generation.update(max_examples=MAX_EXAMPLES)


def _moment(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is not None else None


def _utc_within_bounds(value: Any) -> datetime | None:
    """A generated moment moved into the range the API reads ([EARLIEST, LATEST], room for an hour
    before it); None for what is not a timezone-aware datetime, which is left to be refused."""
    moment = _moment(value)
    if moment is None:
        return None
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:  # an offset pushed it past year 1 or 9999
        utc = EARLIEST if moment.year < YEAR_MIDDLE else LATEST
    return min(max(utc, EARLIEST + RANGE_FIX), LATEST)


def _keep_range_consistent(case: schemathesis.Case) -> None:
    """Rules between parameters, or on values, that OpenAPI cannot state, so that schema-valid data
    may break them (answered 422): start < end within MAX_WINDOW, both inside [EARLIEST, LATEST],
    and at most API_MAX_POINTS points (hours x top features). Generated values that break them are
    moved inside (an inconsistent range becomes the hour before its end); values that are not
    timezone-aware datetimes are left to be refused."""
    query = case.query
    if not query:
        return
    for name in ("start", "end"):
        if name in query and (moment := _utc_within_bounds(query[name])) is not None and moment != _moment(query[name]):
            query[name] = moment.isoformat()
    if "start" not in query:
        return
    start = _moment(query["start"])
    end = _moment(query.get("end")) if "end" in query else datetime.now(UTC)
    if start is None or end is None:
        return
    top = query.get("top", DEFAULT_SERIES_FEATURES)
    hours = (end - start) / timedelta(hours=1)
    too_many_points = (case.operation.path.endswith("/feature-series") and query.get("granularity", "hour") == "hour"
                       and isinstance(top, int) and hours * top > get_settings().api_max_points)  # fmt: skip
    if not (start < end and end - start <= MAX_WINDOW) or too_many_points:
        query["start"] = (end - RANGE_FIX).isoformat()


# A webhook URL is checked by resolving it (a generated host name does not resolve: 422); the served app
# allows http and private addresses, so this one passes the checks.
RESOLVABLE_WEBHOOK_URL = "http://127.0.0.1:9/hook"


def _keep_bodies_consistent(case: schemathesis.Case) -> None:
    """Rules on bodies that OpenAPI cannot state: a webhook URL must resolve to an allowed address, and an
    alert rule's critical threshold lies beyond its warning one (equal thresholds satisfy every kind)."""
    body = case.body
    positive = case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
    if not positive or case.method.upper() != "POST" or not isinstance(body, dict):
        return  # a schema-violating case stays as generated, to be refused
    if case.operation.path.endswith("/webhooks") and isinstance(body.get("url"), str):
        body["url"] = RESOLVABLE_WEBHOOK_URL
    if case.operation.path.endswith("/alert-rules") and "warning_threshold" in body and "critical_threshold" in body:
        body["critical_threshold"] = body["warning_threshold"]


@pytest.fixture(scope="module")
def served(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A running uvicorn with a worker behind it, and a key of TENANT."""
    log_dir = tmp_path_factory.mktemp("openapi")
    with Session(engine) as session, session.begin():
        _, key = create_key(session, name="openapi contract test", tenant_id=TENANT)
    queue = f"ingest-{TENANT}"
    env = {"INGEST_QUEUE": queue, "CELERY_BROKER_URL": RABBITMQ, "PRODUCER_SPOOL_DIR": str(log_dir / "spool"),
           "PRODUCER_FLUSH_INTERVAL_MS": FLUSH_INTERVAL_MS, "API_DOCS_ENABLED": "true",
           "WEBHOOK_ALLOW_HTTP": "true", "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true"}  # fmt: skip
    try:
        with celery_worker(RABBITMQ, queue, log_dir=log_dir, stop_timeout=2), uvicorn_server(log_dir, env) as server:
            yield server, key
    finally:
        with Connection(RABBITMQ) as conn:
            conn.default_channel.queue_delete(queue)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_its_openapi_contract(case: schemathesis.Case, served: tuple[Server, str]) -> None:
    server, key = served
    _keep_range_consistent(case)
    _keep_bodies_consistent(case)
    try:
        case.call_and_validate(base_url=server.url, headers={"Authorization": f"Bearer {key}"})
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n--- server log ---\n{server.log_tail()}") from None


def test_the_schema_lists_the_dashboard_and_ingest_routes(served: tuple[Server, str]) -> None:
    """A guard for the test above: an empty or partial schema would make it pass vacuously. The served
    schema (API_DOCS_ENABLED, set for this server) is the one the test used."""
    server, _ = served
    served = httpx.get(server.url + SCHEMA_PATH, timeout=10).json()
    assert served == app.openapi()
    paths = served["paths"]
    for path in (
        "/v1/events",
        "/api/me",
        "/api/tenants/{tenant_id}/summary",
        "/api/tenants/{tenant_id}/series",
        "/api/tenants/{tenant_id}/feature-series",
    ):
        assert path in paths, sorted(paths)
