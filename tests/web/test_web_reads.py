"""Read-side bounds of the web API (issue 12): statement timeout, points per answer, extreme dates, /docs.

Against the real database through the real app (TestClient runs its lifespan,
so each client opens the web engine with the settings of that moment): the
timeout is PostgreSQL's own ``statement_timeout`` cancelling a read of seeded
rollups, not a mock.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from config import get_settings
from storage.api_keys import create_key
from web import docs
from web.app import app

UTC = UTC
SEED_DAYS = 400
SEED_FEATURES = 20
HIST_BUCKETS = 10  # elements per histogram cell (one call each): the reads merge them all
# A cell per feature and day (or hour) before :end: calls, errors, input, output and total tokens,
# latency sum, min and max, then the histogram.
SEED_CELLS = (
    "INSERT INTO {table} SELECT :tenant, :end - s * CAST(:step AS interval), 'feature-' || f, 'm1',"
    f" {HIST_BUCKETS}, 1, 100, 50, 150, 1000, 5, 400,"
    f" ARRAY(SELECT generate_series(1, {HIST_BUCKETS})::smallint), array_fill(1, ARRAY[{HIST_BUCKETS}])"
    " FROM generate_series(1, :count) AS s, generate_series(1, :features) AS f"
)
SEED_USERS = (
    "INSERT INTO rollup_daily_users SELECT :tenant, :end - s * interval '1 day', 'feature-' || f, 'u1', 1, 0, 1"
    " FROM generate_series(1, 10) AS s, generate_series(1, :features) AS f"
)
TINY_TIMEOUT_MS = "1"  # below what a read of SEED_DAYS x SEED_FEATURES cells can take
SMALL_MAX_POINTS = "30"
TWO_DAYS = {"start": "2026-10-01T12:00:00Z", "end": "2026-10-03T12:00:00Z"}  # 48 hours over 3 UTC days


@contextmanager
def client_with(monkeypatch: pytest.MonkeyPatch, **env: str) -> Iterator[TestClient]:
    """The app started with these settings (environment variables), the previous ones restored after."""
    with monkeypatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        try:
            with TestClient(app) as client:
                yield client
        finally:
            get_settings.cache_clear()
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def tenant(engine: Engine) -> Iterator[tuple[str, str]]:
    """A tenant with SEED_FEATURES features of daily and hourly rollups over SEED_DAYS days, and its key."""
    name = f"reads-{uuid.uuid4().hex[:8]}"
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with engine.begin() as conn:
        for table, step, count in (("rollup_daily", "1 day", SEED_DAYS), ("rollup_hourly", "1 hour", 48)):
            conn.execute(text(SEED_CELLS.format(table=table)),
                         {"tenant": name, "end": end, "step": step, "count": count, "features": SEED_FEATURES})  # fmt: skip
        conn.execute(text(SEED_USERS), {"tenant": name, "end": end, "features": SEED_FEATURES})
    with Session(engine) as session, session.begin():
        _, key = create_key(session, name="reads test", tenant_id=name)
    yield name, key


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def window(days: float) -> dict[str, str]:
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return {"start": (end - timedelta(days=days)).isoformat(), "end": end.isoformat()}


def refusal(response: Any) -> tuple[list[str], str]:
    assert response.status_code == 422, response.text
    [detail] = response.json()["detail"]
    return detail["loc"], detail["msg"]


# --- statement timeout ----------------------------------------------------------


def test_a_read_over_the_statement_timeout_is_a_503_naming_the_setting(
    tenant: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, key = tenant
    url = f"/api/tenants/{name}/summary"
    # The same read answers under the default timeout: what cancels it below is the timeout alone.
    with client_with(monkeypatch) as client:
        answered = client.get(url, params=window(SEED_DAYS - 1), headers=auth(key))
        assert answered.status_code == 200, answered.text
        assert len(answered.json()["features"]) == SEED_FEATURES
    with client_with(monkeypatch, API_STATEMENT_TIMEOUT_MS=TINY_TIMEOUT_MS) as client:
        for path in ("summary", "error-rates", "feature-series"):
            response = client.get(f"/api/tenants/{name}/{path}", params=window(SEED_DAYS - 1) | {"granularity": "day"},
                                  headers=auth(key))  # fmt: skip
            assert response.status_code == 503, (path, response.text)
            assert response.json() == {
                "detail": "the query took longer than API_STATEMENT_TIMEOUT_MS (1 ms) and was cancelled; "
                "narrow the range (or ask for one feature) and try again"
            }
        # The cancelled statements left the pool usable: the process still answers (here /api/me, whose
        # key lookup may itself be cancelled at 1 ms: a 503 then, never a 500).
        assert client.get("/api/me", headers=auth(key)).status_code in (200, 503)


def test_web_connections_carry_the_statement_timeout(tenant: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    with client_with(monkeypatch, API_STATEMENT_TIMEOUT_MS="4321") as client:
        engine = client.app.state.sessions.kw["bind"]
        with engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "4321ms"


# --- points per answer ----------------------------------------------------------


def test_an_hourly_series_of_many_features_over_a_long_range_is_refused_naming_the_limit(
    tenant: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, key = tenant
    end = datetime(2026, 11, 1, tzinfo=UTC)
    params = {"start": (end - timedelta(days=SEED_DAYS)).isoformat(), "end": end.isoformat(),
              "granularity": "hour", "top": "3"}  # fmt: skip
    with client_with(monkeypatch) as client:
        loc, msg = refusal(client.get(f"/api/tenants/{name}/feature-series", params=params, headers=auth(key)))
        assert loc == ["query", "top"]
        assert msg == (
            "would return 9,600 hours x 3 features = 28,800 points; the limit is API_MAX_POINTS = 5,000; "
            "narrow the range or use granularity=day or ask for fewer (top)"
        )
        per_day = client.get(f"/api/tenants/{name}/feature-series", params=params | {"granularity": "day"},
                             headers=auth(key))  # fmt: skip
        assert per_day.status_code == 200, per_day.text
        body = per_day.json()
        assert body["features_with_calls"] == SEED_FEATURES
        assert len(body["features"]) == 3


def test_an_hourly_series_over_the_longest_range_is_refused_by_default(
    tenant: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, key = tenant
    end = datetime(2026, 11, 1, tzinfo=UTC)
    params = {"start": (end - timedelta(days=SEED_DAYS)).isoformat(), "end": end.isoformat(), "granularity": "hour"}
    with client_with(monkeypatch) as client:
        loc, msg = refusal(client.get(f"/api/tenants/{name}/series", params=params, headers=auth(key)))
        assert loc == ["query", "end"]
        assert "API_MAX_POINTS = 5,000" in msg, msg
        per_day = client.get(f"/api/tenants/{name}/series", params=params | {"granularity": "day"}, headers=auth(key))
        assert per_day.status_code == 200, per_day.text


@pytest.mark.parametrize(
    "path, params, loc, count",
    [
        ("series", {"granularity": "hour"}, "end", "48 hours x 1 series = 48 points"),
        ("feature-series", {"granularity": "day", "top": "20"}, "top", "3 days x 20 features = 60 points"),
        ("top-users", {"limit": "31"}, "limit", "31 users x 1 series = 31 points"),
    ],
)
def test_points_are_counted_before_the_query(
    tenant: tuple[str, str], monkeypatch: pytest.MonkeyPatch, path: str, params: dict[str, str], loc: str, count: str
) -> None:
    name, key = tenant
    with client_with(monkeypatch, API_MAX_POINTS=SMALL_MAX_POINTS) as client:
        loc_, msg = refusal(client.get(f"/api/tenants/{name}/{path}", params=TWO_DAYS | params, headers=auth(key)))
        assert loc_ == ["query", loc]
        assert msg.startswith(f"would return {count}; the limit is API_MAX_POINTS = 30; "), msg


@pytest.mark.parametrize("path", ["summary", "error-rates", "active-users"])
def test_answers_whose_size_depends_on_the_data_stop_at_the_limit(
    tenant: tuple[str, str], monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """SEED_FEATURES features (x days for active users) over a limit of 5 points: refused; one feature fits."""
    name, key = tenant
    with client_with(monkeypatch, API_MAX_POINTS="5") as client:
        loc, msg = refusal(client.get(f"/api/tenants/{name}/{path}", params=window(3), headers=auth(key)))
        assert "would return more than 5 points" in msg and "API_MAX_POINTS = 5" in msg, msg
        assert loc == ["query", "feature" if path == "active-users" else "end"]
        if path == "active-users":
            one = client.get(f"/api/tenants/{name}/{path}", params=window(3) | {"feature": "feature-1"},
                             headers=auth(key))  # fmt: skip
            assert one.status_code == 200, one.text
            assert {row["feature_name"] for row in one.json()["days"]} == {"feature-1"}
    with client_with(monkeypatch, API_MAX_POINTS=str(SEED_FEATURES)) as client:  # exactly at the limit: answered
        response = client.get(f"/api/tenants/{name}/{path}", params=window(1), headers=auth(key))
        assert response.status_code == 200, response.text


def test_feature_series_returns_the_top_features_by_calls(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"top-{uuid.uuid4().hex[:8]}"
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    calls = {"rare": 1, "common": 30, "middle": 7, "also-middle": 7}
    with engine.begin() as conn:
        for feature, count in calls.items():
            conn.execute(
                text(
                    "INSERT INTO rollup_hourly VALUES (:t, :b, :f, 'm1', :c, 0, 1, 1, 2, :c, 1, 1,"
                    " ARRAY[1]::smallint[], ARRAY[:c])"
                ),
                {"t": name, "b": hour, "f": feature, "c": count},
            )
    with Session(engine) as session, session.begin():
        _, key = create_key(session, name="top test", tenant_id=name)
    with client_with(monkeypatch) as client:
        response = client.get(f"/api/tenants/{name}/feature-series", params=window(1) | {"top": "3"}, headers=auth(key))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["features_with_calls"] == 4
        assert [f["feature_name"] for f in body["features"]] == ["common", "also-middle", "middle"]
        assert [[p["calls"] for p in f["points"]] for f in body["features"]] == [[30], [7], [7]]


# --- dates near year 1 and 9999 ----------------------------------------------------


@pytest.mark.parametrize(
    "params, loc",
    [
        ({"start": "0001-01-01T00:00:00Z", "end": "0001-01-01T05:00:00Z"}, "start"),
        ({"end": "0001-01-01T12:00:00Z"}, "end"),
        ({"start": "0001-01-01T00:00:00+05:00", "end": "0001-01-02T00:00:00Z"}, "start"),
        ({"start": "9999-12-31T00:00:00Z", "end": "9999-12-31T23:30:00Z"}, "start"),
        ({"start": "9999-12-01T00:00:00Z", "end": "9999-12-31T23:30:00Z"}, "end"),
        ({"start": "9999-12-01T00:00:00Z", "end": "9999-12-31T23:59:59-05:00"}, "end"),
    ],
)
def test_dates_near_year_1_or_9999_are_a_422_naming_the_parameter(
    tenant: tuple[str, str], monkeypatch: pytest.MonkeyPatch, params: dict[str, str], loc: str
) -> None:
    name, key = tenant
    with client_with(monkeypatch) as client:
        for path in ("summary", "series", "feature-series", "top-users", "error-rates", "active-users"):
            got, msg = refusal(client.get(f"/api/tenants/{name}/{path}", params=params, headers=auth(key)))
            assert got == ["query", loc], (path, msg)
            assert msg == f"{loc} must lie between 0001-01-02 and 9999-12-30 (UTC)", (path, msg)


def test_ranges_just_inside_the_bounds_are_answered(tenant: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    name, key = tenant
    with client_with(monkeypatch) as client:
        for params in ({"start": "0001-01-02T00:00:00Z", "end": "0001-01-03T00:00:00Z"},
                       {"end": "0001-01-03T00:00:00Z"},
                       {"start": "9999-12-29T00:00:00Z", "end": "9999-12-29T23:30:00Z"}):  # fmt: skip
            for path in ("summary", "series", "feature-series", "top-users", "error-rates", "active-users"):
                response = client.get(f"/api/tenants/{name}/{path}", params=params, headers=auth(key))
                assert response.status_code == 200, (path, params, response.text)


# --- /docs ------------------------------------------------------------------------


def test_docs_and_schema_are_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("API_DOCS_ENABLED", raising=False)
    with client_with(monkeypatch) as client:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
            assert client.get(path).status_code == 404, path


def _local_references(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', page)


def test_docs_when_enabled_load_only_local_assets_under_a_csp(monkeypatch: pytest.MonkeyPatch) -> None:
    assert docs.swagger_ui_dir() is not None, "swagger-ui-dist is not installed: run scripts/setup"
    with client_with(monkeypatch, API_DOCS_ENABLED="true") as client:
        page = client.get("/docs")
        assert page.status_code == 200, page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src" not in csp and "unsafe" not in csp, csp
        assert "http" not in page.text
        references = _local_references(page.text)
        assert f"{docs.SWAGGER_UI_URL}/swagger-ui-bundle.js" in references, references
        for reference in references:
            assert reference.startswith("/") and not reference.startswith("//"), reference
            assert client.get(reference).status_code == 200, reference
        schema = client.get("/openapi.json")
        assert schema.status_code == 200
        assert "/api/tenants/{tenant_id}/feature-series" in schema.json()["paths"]
        assert client.get("/redoc").status_code == 404


def test_docs_without_the_npm_package_say_so_instead_of_using_a_cdn(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(docs, "SWAGGER_UI_DIR", tmp_path / "no-swagger-ui")
    with client_with(monkeypatch, API_DOCS_ENABLED="true") as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert "Swagger UI is not installed on this server" in page.text
        assert "content-security-policy" in page.headers
        assert all(ref.startswith("/") for ref in _local_references(page.text)), page.text
        assert "swagger-ui-bundle" not in page.text


def test_nul_in_a_feature_or_tenant_is_a_422_not_a_500(tenant: tuple[str, str], engine: Engine,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """psycopg2 refuses NUL in any string parameter: it must be refused before it reaches the database."""
    name, key = tenant
    with Session(engine) as session, session.begin():
        _, admin = create_key(session, name="reads admin", tenant_id=None, admin=True)
    with client_with(monkeypatch) as client:
        for path in ("series", "top-users", "active-users"):
            loc, _ = refusal(client.get(f"/api/tenants/{name}/{path}", params={"feature": "a\x00b"}, headers=auth(key)))
            assert loc == ["query", "feature"], path
        loc, msg = refusal(client.get("/api/tenants/a%00b/summary", headers=auth(admin)))
        assert loc == ["path", "tenant_id"] and "NUL" in msg
