"""The query layer (queries.rollups), its API and CLI, against raw events.

The data spans three days so that answers combine daily rollups, hourly rollups
and the pending tail; part of it is left un-rolled-up on purpose.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

from cli.main import cli
from queries import rollups as q
from storage.api_keys import create_key
from storage.rollups import run_until_idle
from tests.rollup_checks import QUANTILES, UTC, ensure_months_for, event, ingest, pending_batches, within_error
from web.app import app

TENANT, OTHER = "acme", "globex"
FEATURES = ("search", "summarize", "forecast")
SPAN = timedelta(days=3)


@pytest.fixture
def data(engine: Engine, clean_tables: None) -> tuple[datetime, datetime]:
    """Events over the last three days; the newest batches stay pending."""
    end = datetime.now(UTC)
    start = end - SPAN
    ensure_months_for(engine, start, end + timedelta(hours=1))
    rng = random.Random(5)
    for batch in range(12):
        rows = []
        for _ in range(40):
            latency = int(rng.lognormvariate(5.5, 0.8))
            # "forecast" never streams: its time-to-first-token figures are None.
            feature = rng.choice(FEATURES)
            streamed = feature != "forecast" and rng.random() < 0.6
            rows.append(
                event(
                    start + timedelta(seconds=rng.randrange(int(SPAN.total_seconds()))),
                    tenant=rng.choice([TENANT, TENANT, OTHER]),
                    feature=feature,
                    model=rng.choice([None, "m1", "m2"]),
                    user=f"user-{rng.randrange(8)}",
                    latency_ms=latency,
                    time_to_first_token_ms=rng.randint(0, latency) if streamed else None,
                    status=rng.choice(["success"] * 9 + ["error"]),
                    input_tokens=rng.randrange(100),
                    output_tokens=rng.randrange(100),
                )
            )
        ingest(engine, rows)
        if batch == 8:
            run_until_idle(engine)
    with engine.connect() as conn:
        assert pending_batches(conn) == 3  # the tail is part of every answer below
    return start, end


RAW_FIGURES = """
SELECT {key} AS key, count(*), count(*) FILTER (WHERE status = 'error'), sum(input_tokens),
       sum(output_tokens), sum(tokens_used), min(latency_ms), max(latency_ms), sum(latency_ms),
       percentile_disc(CAST(:quantiles AS float8[])) WITHIN GROUP (ORDER BY latency_ms),
       count(time_to_first_token_ms), sum(time_to_first_token_ms),
       percentile_disc(CAST(:quantiles AS float8[])) WITHIN GROUP (ORDER BY time_to_first_token_ms)
FROM analytics_events
WHERE tenant_id = :tenant AND timestamp >= :start AND timestamp < :end
  AND (CAST(:feature AS text) IS NULL OR feature_name = :feature)
GROUP BY 1 ORDER BY 1
"""


def raw_figures(conn: Connection, key: str, start: datetime, end: datetime, feature: str | None = None) -> list[Any]:
    return conn.execute(
        text(RAW_FIGURES.format(key=key)),
        {"tenant": TENANT, "start": start, "end": end, "feature": feature, "quantiles": list(QUANTILES)},
    ).all()


def assert_figures(answer: q.Figures, row: Any) -> None:
    assert (
        answer.calls,
        answer.errors,
        answer.input_tokens,
        answer.output_tokens,
        answer.tokens_used,
        answer.latency_min_ms,
        answer.latency_max_ms,
    ) == tuple(row[1:8])
    assert answer.latency_avg_ms == row[8] / row[1]
    assert answer.error_rate == row[2] / row[1]
    for estimate, exact in zip(
        (answer.latency_p50_ms, answer.latency_p95_ms, answer.latency_p99_ms), row[9], strict=False
    ):
        assert within_error(estimate, exact)
    streamed, ttft_sum, ttft_exact = row[10:13]
    assert answer.streamed_calls == streamed
    ttft = (answer.ttft_p50_ms, answer.ttft_p95_ms, answer.ttft_p99_ms)
    if not streamed:
        assert answer.ttft_avg_ms is None and ttft == (None, None, None)
        return
    assert answer.ttft_avg_ms == ttft_sum / streamed
    for estimate, exact in zip(ttft, ttft_exact, strict=True):
        assert within_error(estimate, exact)


def test_summary_combines_days_hours_and_the_pending_tail(engine: Engine, data: tuple[datetime, datetime]) -> None:
    start, end = data
    start = start + timedelta(hours=5, minutes=30)  # not aligned: floored to the hour
    with q.snapshot(engine) as conn:
        answer = q.feature_summary(conn, TENANT, start, end)
        raw = raw_figures(conn, "feature_name", *q.hour_span(start, end))
    assert [a.feature_name for a in answer] == [r[0] for r in raw] == sorted(FEATURES)
    for summary, row in zip(answer, raw, strict=False):
        assert_figures(summary, row)
    ttft_p95 = {a.feature_name: a.ttft_p95_ms for a in answer}
    assert ttft_p95["forecast"] is None and ttft_p95["search"] is not None and ttft_p95["summarize"] is not None


@pytest.mark.parametrize("granularity", ["hour", "day"])
def test_time_series_per_hour_and_day(
    engine: Engine, data: tuple[datetime, datetime], granularity: q.Granularity
) -> None:
    start, end = data
    key = f"date_trunc('{granularity}', timestamp, 'UTC')"
    with q.snapshot(engine) as conn:
        for feature in (None, "search"):
            points = q.time_series(conn, TENANT, start, end, granularity, feature)
            raw = raw_figures(conn, key, *q.hour_span(start, end), feature=feature)
            assert [p.bucket for p in points] == [r[0] for r in raw]
            for point, row in zip(points, raw, strict=False):
                assert_figures(point, row)


def test_error_rate_by_feature(engine: Engine, data: tuple[datetime, datetime]) -> None:
    start, end = data
    with q.snapshot(engine) as conn:
        rates = q.error_rate_by_feature(conn, TENANT, start, end)
        raw = raw_figures(conn, "feature_name", *q.hour_span(start, end))
    assert [(r.feature_name, r.calls, r.errors) for r in rates] == [tuple(row[:3]) for row in raw]


def test_top_users_and_active_users_cover_whole_days(engine: Engine, data: tuple[datetime, datetime]) -> None:
    start, end = data
    d0, d1 = q.day_span(start, end)
    with q.snapshot(engine) as conn:
        top = q.top_users(conn, TENANT, start, end, limit=5)
        raw_top = conn.execute(
            text(
                "SELECT user_id, count(*) AS calls, count(*) FILTER (WHERE status = 'error'), sum(tokens_used)"
                " FROM analytics_events WHERE tenant_id = :t AND timestamp >= :s AND timestamp < :e"
                " GROUP BY 1 ORDER BY calls DESC, user_id LIMIT 5"
            ),
            {"t": TENANT, "s": d0, "e": d1},
        ).all()
        dau = q.active_users(conn, TENANT, start, end)
        raw_dau = conn.execute(
            text(
                "SELECT date_trunc('day', timestamp, 'UTC'), feature_name, count(DISTINCT user_id)"
                " FROM analytics_events WHERE tenant_id = :t AND timestamp >= :s AND timestamp < :e"
                " GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            {"t": TENANT, "s": d0, "e": d1},
        ).all()
    assert [(u.user_id, u.calls, u.errors, u.tokens_used) for u in top] == [tuple(r) for r in raw_top]
    assert [(a.day, a.feature_name, a.users) for a in dau] == [tuple(r) for r in raw_dau]


def test_an_unknown_tenant_gets_nothing(engine: Engine, data: tuple[datetime, datetime]) -> None:
    start, end = data
    with q.snapshot(engine) as conn:
        assert q.feature_summary(conn, "nobody' OR '1'='1", start, end) == []
        assert q.top_users(conn, "nobody", start, end) == []


def test_bounds_must_be_timezone_aware(engine: Engine) -> None:
    naive = datetime(2026, 1, 1)
    with q.snapshot(engine) as conn, pytest.raises(ValueError):
        q.feature_summary(conn, TENANT, naive, naive + timedelta(days=1))


def test_api_serves_the_query_layer(engine: Engine, data: tuple[datetime, datetime]) -> None:
    """Values only; keys and tenant scopes of these routes are tests/web/test_web_api.py's subject."""
    start, end = data
    with Session(engine) as session, session.begin():
        _, key = create_key(session, name="rollup-queries", tenant_id=TENANT)
    headers = {"Authorization": f"Bearer {key}"}
    params = {"start": start.isoformat(), "end": end.isoformat()}
    with TestClient(app) as client:
        body = client.get(f"/api/tenants/{TENANT}/summary", params=params, headers=headers).json()
        with q.snapshot(engine) as conn:
            expected = q.feature_summary(conn, TENANT, start, end)
        assert [(f["feature_name"], f["calls"], f["latency_p95_ms"]) for f in body["features"]] == [
            (s.feature_name, s.calls, s.latency_p95_ms) for s in expected
        ]
        ttft = ("streamed_calls", "ttft_avg_ms", "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms")
        assert [[f[name] for name in ttft] for f in body["features"]] == [
            [getattr(s, name) for name in ttft] for s in expected
        ]
        for path in ("series", "top-users", "error-rates", "active-users"):
            assert client.get(f"/api/tenants/{TENANT}/{path}", params=params, headers=headers).status_code == 200
        naive = {"start": "2026-01-01T00:00:00", "end": "2026-01-02T00:00:00"}
        assert client.get(f"/api/tenants/{TENANT}/summary", params=naive, headers=headers).status_code == 422
        week = {**params, "granularity": "week"}
        assert client.get(f"/api/tenants/{TENANT}/series", params=week, headers=headers).status_code == 422


def test_cli_runs_rebuilds_and_reports(engine: Engine, data: tuple[datetime, datetime]) -> None:
    start, end = data
    runner = CliRunner()
    ran = runner.invoke(cli, ["rollups", "run"])
    assert ran.exit_code == 0 and "of 3 batches" in ran.output
    window = ["--from", start.isoformat(), "--to", end.isoformat()]
    rebuilt = runner.invoke(cli, ["rollups", "rebuild", *window])
    assert rebuilt.exit_code == 0 and "rebuilt 4 days" in rebuilt.output
    summary = runner.invoke(cli, ["rollups", "summary", "--tenant", TENANT, *window])
    assert summary.exit_code == 0
    for feature in FEATURES:
        assert feature in summary.output
    for command in ("series", "top-users", "error-rates", "active-users"):
        result = runner.invoke(cli, ["rollups", command, "--tenant", TENANT, *window])
        assert result.exit_code == 0, result.output
    bad = runner.invoke(cli, ["rollups", "rebuild", "--from", "2026-01-02", "--to", "2026-01-01"])
    assert bad.exit_code != 0
