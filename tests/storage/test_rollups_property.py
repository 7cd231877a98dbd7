"""Property: whatever the events and however ingest and rollup runs interleave,
every rollup figure equals the figure computed straight from raw events.

Hypothesis draws events (several tenants, features, models including none,
users, latencies from 0 to 2**31-1, times to first token (none, or up to the
latency), errors, token buckets and providers,
input sizes on both sides of every input-band boundary, timestamps over the last three days
and late ones 30-45 days old), cuts them into batches, and repeats some
batches and some events (redelivered messages, repeated ids inside a message).
Two writer threads store the batches through storage.events.store_batch, one
transaction each, while two rollup threads run small chunks concurrently and a
reader checks, inside one snapshot, that the query layer (rollups + pending
tail) answers exactly what the raw events say. Afterwards every hourly, daily
and per-user rollup row is compared with SQL over the raw events; percentiles
within the histogram's stated relative error.
"""

from __future__ import annotations

import queue
import random
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, text

from queries.rollups import feature_summary, hour_span, snapshot
from schema.bands import INPUT_BANDS
from storage.events import Row
from storage.rollups import run_chunk, run_until_idle
from tests.rollup_checks import (
    QUANTILES,
    UTC,
    assert_rollups_match_raw,
    ensure_months_for,
    event,
    ingest,
    pending_batches,
    within_error,
)

TENANTS = ("t1", "t2")
FEATURES = ("f1", "f2", "f3")
MODELS = (None, "m1", "m2")
PROVIDERS = (None, "openai", "anthropic")
RECENT_S = 3 * 24 * 3600
LATE_S = (30 * 24 * 3600, 45 * 24 * 3600)
MAX_LATENCY = 2**31 - 1
WRITERS = 2
ROLLERS = 2
EXAMPLES = 30
JOIN_TIMEOUT_S = 120

latencies = st.one_of(st.integers(0, 20), st.integers(0, 100_000), st.sampled_from([0, 1, MAX_LATENCY]))
offsets_s = st.one_of(st.integers(0, RECENT_S), st.integers(*LATE_S))
event_specs = st.fixed_dictionaries(
    {
        "tenant": st.sampled_from(TENANTS),
        "feature": st.sampled_from(FEATURES),
        "model": st.sampled_from(MODELS),
        "user": st.sampled_from([f"u{i}" for i in range(4)]),
        "latency_ms": latencies,
        # Clamped to the latency in build_batches; None: the call did not stream.
        "time_to_first_token_ms": st.one_of(st.none(), latencies),
        "status": st.sampled_from(["success", "success", "error"]),
        "provider": st.sampled_from(PROVIDERS),
        "input_tokens": st.one_of(
            st.integers(0, 5000), st.sampled_from([bound + delta for bound in INPUT_BANDS for delta in (-1, 0, 1)])
        ),
        "output_tokens": st.integers(0, 5000),
        # Clamped to their totals in build_batches.
        "cache_read_tokens": st.integers(0, 5000),
        "cache_write_tokens": st.integers(0, 500),
        "reasoning_tokens": st.integers(0, 5000),
        "extra_tokens": st.integers(0, 3),
        "offset_s": offsets_s,
        "offset_us": st.integers(0, 999_999),
    }
)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    specs = draw(st.lists(event_specs, min_size=1, max_size=80))
    sizes = draw(st.lists(st.integers(1, 12), min_size=1, max_size=20))
    return {
        "specs": specs,
        "sizes": sizes,
        "redeliver": draw(st.lists(st.integers(0, 100), max_size=4)),
        "repeat_inside": draw(st.lists(st.integers(0, 1000), max_size=6)),
        "chunk": draw(st.integers(1, 3)),
        "seed": draw(st.integers(0, 2**16)),
    }


def build_batches(scenario: dict[str, Any], now: datetime) -> list[list[Row]]:
    events = []
    for spec in scenario["specs"]:
        spec = dict(spec)
        offset = timedelta(seconds=spec.pop("offset_s"), microseconds=spec.pop("offset_us"))
        spec["cache_read_tokens"] = min(spec["cache_read_tokens"], spec["input_tokens"])
        spec["cache_write_tokens"] = min(spec["cache_write_tokens"], spec["input_tokens"] - spec["cache_read_tokens"])
        spec["reasoning_tokens"] = min(spec["reasoning_tokens"], spec["output_tokens"])
        if spec["time_to_first_token_ms"] is not None:
            spec["time_to_first_token_ms"] = min(spec["time_to_first_token_ms"], spec["latency_ms"])
        events.append(event(now - offset, event_id=uuid.uuid4(), **spec))
    batches: list[list[Row]] = []
    sizes = scenario["sizes"]
    i = 0
    while i < len(events):
        size = sizes[len(batches) % len(sizes)]
        batches.append(events[i : i + size])
        i += size
    for pick in scenario["repeat_inside"]:  # an event twice in one message, or again later
        target = batches[pick % len(batches)]
        target.append(events[pick % len(events)])
    for pick in scenario["redeliver"]:  # a whole message delivered again
        batches.append(list(batches[pick % len(batches)]))
    random.Random(scenario["seed"]).shuffle(batches)
    return batches


RAW_SUMMARY = """
SELECT feature_name, count(*), count(*) FILTER (WHERE status = 'error'), sum(input_tokens),
       sum(output_tokens), sum(tokens_used), min(latency_ms), max(latency_ms), sum(latency_ms),
       percentile_disc(CAST(:quantiles AS float8[])) WITHIN GROUP (ORDER BY latency_ms),
       count(time_to_first_token_ms), sum(time_to_first_token_ms),
       percentile_disc(CAST(:quantiles AS float8[])) WITHIN GROUP (ORDER BY time_to_first_token_ms)
FROM analytics_events
WHERE tenant_id = :tenant AND timestamp >= :start AND timestamp < :end
GROUP BY feature_name ORDER BY feature_name
"""


def check_queries_against_raw(conn: Connection, start: datetime, end: datetime) -> None:
    """In one snapshot: rollups + pending tail == raw, for every tenant's per-feature summary."""
    h0, h1 = hour_span(start, end)
    for tenant in TENANTS:
        answer = feature_summary(conn, tenant, start, end)
        raw = conn.execute(
            text(RAW_SUMMARY), {"tenant": tenant, "start": h0, "end": h1, "quantiles": list(QUANTILES)}
        ).all()
        assert [s.feature_name for s in answer] == [r[0] for r in raw]
        for summary, row in zip(answer, raw, strict=False):
            figures = (
                summary.calls,
                summary.errors,
                summary.input_tokens,
                summary.output_tokens,
                summary.tokens_used,
                summary.latency_min_ms,
                summary.latency_max_ms,
            )
            assert figures == tuple(row[1:8])
            assert summary.latency_avg_ms == row[8] / row[1]
            estimates = (summary.latency_p50_ms, summary.latency_p95_ms, summary.latency_p99_ms)
            for estimate, exact in zip(estimates, row[9], strict=False):
                assert within_error(estimate, exact), (tenant, summary.feature_name, estimate, exact)
            streamed, ttft_sum, ttft_exact = row[10:13]
            assert summary.streamed_calls == streamed
            ttft = (summary.ttft_p50_ms, summary.ttft_p95_ms, summary.ttft_p99_ms)
            if not streamed:  # percentile_disc of no values is NULL
                assert summary.ttft_avg_ms is None and ttft == (None, None, None) and ttft_exact is None
                continue
            assert summary.ttft_avg_ms == ttft_sum / streamed
            for estimate, exact in zip(ttft, ttft_exact, strict=True):
                assert within_error(estimate, exact), (tenant, summary.feature_name, "TTFT", estimate, exact)


def truncate(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE analytics_events, dead_letters, rollup_pending_batches,"
                " rollup_hourly, rollup_daily, rollup_daily_users"
            )
        )


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios())
def test_rollups_equal_raw_under_concurrent_ingest_and_runs(engine: Engine, scenario: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    start, end = now - timedelta(seconds=LATE_S[1] + 3600), now + timedelta(hours=1)
    ensure_months_for(engine, start, end)
    truncate(engine)
    batches = build_batches(scenario, now)
    work: queue.Queue[list[Row]] = queue.Queue()
    for batch in batches:
        work.put(batch)
    errors: list[BaseException] = []
    writers_done = threading.Event()

    def guarded(target: Any) -> Any:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        return run

    def writer() -> None:
        while True:
            try:
                batch = work.get_nowait()
            except queue.Empty:
                return
            ingest(engine, batch)

    def roller() -> None:
        while not writers_done.is_set():
            with engine.begin() as conn:
                if run_chunk(conn, scenario["chunk"]).batches == 0:
                    time.sleep(0.002)

    def reader() -> None:
        while not writers_done.is_set():
            with snapshot(engine) as conn:
                check_queries_against_raw(conn, start, end)

    writers = [threading.Thread(target=guarded(writer)) for _ in range(WRITERS)]
    others = [threading.Thread(target=guarded(roller)) for _ in range(ROLLERS)]
    others.append(threading.Thread(target=guarded(reader)))
    for thread in writers + others:
        thread.start()
    for thread in writers:
        thread.join(JOIN_TIMEOUT_S)
    writers_done.set()
    for thread in others:
        thread.join(JOIN_TIMEOUT_S)
    assert not errors, errors

    run_until_idle(engine)
    with engine.connect() as conn:
        assert pending_batches(conn) == 0
        stored = conn.execute(text("SELECT count(*) FROM analytics_events")).scalar_one()
        assert stored == len({mapping["event_id"] for batch in batches for mapping, _ in batch})
        assert_rollups_match_raw(conn)
    with snapshot(engine) as conn:
        check_queries_against_raw(conn, start, end)
