"""``python -m demo``: run the pipeline under a demo load and print a report.

Starts the Procfile's ``web`` and ``worker``, sends a few real requests to the
web app, then tracks ``--events`` events (nine features, ``--tenants``
tenants) through the same producer client a web process uses, waits until
every one is stored, reconciles sent against stored, and stops every process
it started.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import bindparam, create_engine, func, select, text

from config import get_settings
from demo.processes import ROOT, Processes
from models import AnalyticsEvent
from producer import Tracker
from web.ai import ERROR_TYPES, FEATURES, MODELS

DEFAULT_EVENTS = 50_000
DEFAULT_TENANTS = 20
USERS_PER_TENANT = 200
ERROR_SHARE = 0.03
BUFFER_HIGH_WATER = 50_000  # the demo is a load generator: it waits rather than drop
HTTP_SAMPLE_REQUESTS = 20
STORE_TIMEOUT_S = 300.0
PROGRESS_EVERY_S = 1.0
ID_CHUNK = 10_000


def count_stored(conn, ids: list[uuid.UUID]) -> tuple[int, int]:
    rows = distinct = 0
    query = select(func.count(), func.count(AnalyticsEvent.event_id.distinct())).where(
        AnalyticsEvent.event_id.in_(bindparam("ids", expanding=True))
    )
    for i in range(0, len(ids), ID_CHUNK):
        r, d = conn.execute(query, {"ids": ids[i : i + ID_CHUNK]}).one()
        rows, distinct = rows + r, distinct + d
    return rows, distinct


def send_http_sample(base_url: str, tenants: list[str]) -> int:
    ok = 0
    with httpx.Client(base_url=base_url, timeout=5.0) as client:
        for i in range(HTTP_SAMPLE_REQUESTS):
            response = client.post(
                f"/api/ai-feature/{FEATURES[i % len(FEATURES)]}",
                json={"tenant_id": tenants[i % len(tenants)], "user_id": f"user-{i}", "input": "hello " * 20},
            )
            ok += response.status_code in (200, 502)  # 502: the stand-in AI failed, still tracked
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--tenants", type=int, default=DEFAULT_TENANTS)
    args = parser.parse_args()

    settings = get_settings()
    port = int(os.environ.setdefault("WEB_PORT", "8000"))
    tenants = [f"tenant-{i:02d}" for i in range(1, args.tenants + 1)]
    processes = Processes(["web", "worker"], ROOT / "var" / "demo-processes.log")
    engine = create_engine(settings.database_url)
    print(f"demo: starting web and worker (logs: {processes.log_path.relative_to(ROOT)})")
    processes.start()
    try:
        processes.wait_http(f"http://127.0.0.1:{port}/health")
        answered = send_http_sample(f"http://127.0.0.1:{port}", tenants)
        print(f"demo: web app answered {answered}/{HTTP_SAMPLE_REQUESTS} AI-feature requests")

        with engine.connect() as conn:
            dead_before = conn.execute(text("SELECT count(*) FROM dead_letters")).scalar_one()
        tracker = Tracker(settings)
        ids = [uuid.uuid4() for _ in range(args.events)]
        rng = random.Random(42)
        started = time.monotonic()
        last_progress = started
        for i, event_id in enumerate(ids):
            failed = rng.random() < ERROR_SHARE
            tenant = tenants[i % len(tenants)]
            tracker.track(
                event_id=event_id, tenant_id=tenant, feature_name=rng.choice(FEATURES),
                user_id=f"{tenant}-user-{rng.randrange(USERS_PER_TENANT)}",
                model=rng.choice(MODELS), input_tokens=rng.randint(10, 2000),
                output_tokens=0 if failed else rng.randint(20, 800),
                latency_ms=rng.lognormvariate(5.5, 0.6),
                status="error" if failed else "success",
                error_type=rng.choice(ERROR_TYPES) if failed else None,
            )
            while tracker.stats().buffered > BUFFER_HIGH_WATER:
                time.sleep(0.01)
            now = time.monotonic()
            if now - last_progress >= PROGRESS_EVERY_S:
                print(f"  tracked {i + 1:>9,} / {args.events:,}")
                last_progress = now
        sent_s = time.monotonic() - started
        if not tracker.flush(STORE_TIMEOUT_S):
            print("demo: the producer could not publish everything (is the broker up?)", file=sys.stderr)
        stored = distinct = 0
        with engine.connect() as conn:
            while time.monotonic() - started < STORE_TIMEOUT_S:
                stored, distinct = count_stored(conn, ids)
                print(f"  stored  {distinct:>9,} / {args.events:,}")
                if distinct >= args.events:
                    break
                time.sleep(PROGRESS_EVERY_S)
            stored_s = time.monotonic() - started
            dead = conn.execute(text("SELECT count(*) FROM dead_letters")).scalar_one() - dead_before
            per_feature = conn.execute(
                text(
                    "SELECT feature_name, count(*), sum((status = 'error')::int), sum(tokens_used),"
                    " round(avg(latency_ms)) FROM analytics_events"
                    " WHERE event_id = ANY(:ids) GROUP BY 1 ORDER BY 1"
                ),
                {"ids": ids},
            ).all()
        tracker.close()
    finally:
        processes.stop()
        engine.dispose()

    lost, duplicated = args.events - distinct, stored - distinct
    print()
    print("=" * 64)
    print("Demo report")
    print("=" * 64)
    print(f"events sent         {args.events:>12,}   ({args.events / sent_s:,.0f} events/s into track())")
    print(f"events stored       {distinct:>12,}   ({distinct / stored_s:,.0f} events/s end to end)")
    print(f"lost                {lost:>12,}")
    print(f"duplicated          {duplicated:>12,}")
    print(f"dead-lettered       {dead:>12,}")
    print()
    print(f"{'feature':<22}{'calls':>9}{'errors':>8}{'tokens':>13}{'avg ms':>8}")
    for feature, calls, errors, tokens, avg_ms in per_feature:
        print(f"{feature:<22}{calls:>9,}{errors:>8,}{tokens:>13,}{int(avg_ms):>8}")
    print()
    verdict = "every event stored exactly once" if lost == 0 and duplicated == 0 else "MISMATCH"
    print(f"result: {verdict}")
    return 0 if verdict != "MISMATCH" else 1


if __name__ == "__main__":
    sys.exit(main())
