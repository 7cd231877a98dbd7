"""The ceiling: a raw COPY of the pipeline's rows straight into ``analytics_events``.

Nothing but PostgreSQL's share of the work is timed: the buffer is built
first (by ``storage.writers.copy_buffer``, so it is byte for byte what the
copy writer sends), then one ``copy_expert`` and one commit on a psycopg2
connection. Ids are UUIDv7 from the producer's own generator and timestamps
are "now", so the primary-key index sees the same right-edge inserts as in
the pipeline. What the pipeline reaches of this figure is what the producer,
broker, Celery and the Python side of the worker leave of the machine. For
context, the same rows are then copied again as 1,000-row COPY + commit
transactions (the pipeline's shape) on one connection; that figure is a note.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from bench import harness
from bench.ingest import PhaseResult, expected_sums
from config import DEFAULTS
from producer.ids import uuid7_hex_batch
from schema.event import us_to_timestamp

CEILING_BATCH_ID = 0  # no rollup log row: nothing reads the ceiling's rows back
PIPELINE_BATCH = DEFAULTS.producer_batch_size  # the producer's micro-batch


def _copy_and_commit(raw: Any, buffers: list[io.StringIO]) -> float:
    """Seconds to COPY each buffer and commit after each."""
    from storage.writers import COPY_STATEMENT

    with raw.cursor() as cursor:
        start = time.perf_counter()
        for buffer in buffers:
            cursor.copy_expert(COPY_STATEMENT, buffer)
            raw.commit()
        return time.perf_counter() - start


def ceiling_mappings(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Column mappings of ``events`` as the worker would build them."""
    now_us = time.time_ns() // 1000
    stamps = [now_us + i for i in range(len(events))]  # one microsecond apart, in order
    mappings = []
    for event, ts_us, event_id in zip(events, stamps, uuid7_hex_batch(stamps), strict=False):
        mapping = dict(event)
        mapping["event_id"] = uuid.UUID(hex=event_id)
        mapping["timestamp"] = us_to_timestamp(ts_us)
        mapping["tokens_used"] = event["input_tokens"] + event["output_tokens"]
        mapping["batch_id"] = CEILING_BATCH_ID
        mappings.append(mapping)
    return mappings


def run_ceiling(engine: Engine, events: list[dict[str, Any]]) -> PhaseResult:
    from storage.writers import copy_buffer

    n = len(events)
    print(f"\n== ceiling: one raw COPY of {n:,} pre-built rows + commit (psycopg2 copy_expert)", flush=True)
    harness.truncate_events(engine)
    buffer = copy_buffer(ceiling_mappings(events))
    print(f"  buffer built: {len(buffer.getvalue()) / 1e6:.1f} MB at {datetime.now(UTC):%H:%M:%S}", flush=True)
    raw = engine.raw_connection()
    try:
        cpu_start = harness.cpu_snapshot()
        seconds = _copy_and_commit(raw, [buffer])
        end = harness.cpu_snapshot()
        result = PhaseResult("ceiling", n, seconds)
        result.reconciliation = harness.reconcile(engine, n, expected_sums(events))
        # The pipeline's transaction shape for context: one COPY + commit per producer batch.
        harness.truncate_events(engine)
        mappings = ceiling_mappings(events)
        batches = [copy_buffer(mappings[i : i + PIPELINE_BATCH]) for i in range(0, n, PIPELINE_BATCH)]
        batched_seconds = _copy_and_commit(raw, batches)
    finally:
        raw.close()
    # The COPY's backend is one of the "postgres other" processes: no pid group for it.
    _busy, cores = harness.cpu_breakdown(start=cpu_start, end=end, groups={"bench process": {os.getpid()}})
    result.foreign_cores = cores["other"]
    result.notes.append(
        f"one COPY of all rows; the same rows as {len(batches)} COPY + commit of {PIPELINE_BATCH:,}"
        f" (the pipeline's transactions) on one connection: {n / batched_seconds:,.0f} rows/s"
    )
    result.notes.append(harness.format_breakdown(cores))
    print(f"  [ceiling] done: {n:,} rows in {seconds:.2f}s = {result.eps:,.0f} rows/s", flush=True)
    for note in result.notes:
        print(f"  [ceiling] {note}", flush=True)
    return result
