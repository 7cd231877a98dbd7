"""Abuse benchmark: ``python -m bench.abuse [--quick] [--strict] [--roles] [--ingest-mode aggregate]``: the security hardening under attack.

Starts the stack on a database and queue of its own (``analytics_bench_abuse``
on the DATABASE_URL server, migrated; ``bench-ingest-<run>`` on the broker):
the ingest worker (INGEST_MODE task, or aggregate with ``--ingest-mode``) and
the web process as the Procfile runs them (with ``--roles``, each connected
as its least-privilege role, bench.abuse_roles). Creates an
attacker tenant's keys, the victim's key and an admin key, and runs every
attack of the catalogue (bench.abuse_attacks, bench.abuse_limits,
bench.abuse_broker) over HTTP and straight on the broker while a normal load
is tracked through ``producer.Tracker`` for the victim and nineteen other
tenants (never through the rate-limited HTTP routes). Then it waits for the
stack to settle, judges each attack, reconciles the normal load event by event
(every event stored exactly once, in its own tenant), and prints a table of
the attacks, the figures beside their targets, and::

    RESULT attacks=<n> refused=<n> server_errors=<n> cross_tenant_effects=<n> normal_lost=<n>
    normal_duplicated=<n> partitions_created_by_attacks=<n> max_web_rss_growth_mb=<n>

The stack's settings make every limit observable within seconds (STACK_SETTINGS);
the normal load stays well inside them. Exit status: 0, or 2 with ``--strict``
when a target is missed, 1 if the run itself failed, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import threading
import time
import traceback
import uuid
from array import array
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Engine, text

# Importing the attack modules registers their attacks (HTTP first, then the broker's).
from bench import abuse_attacks, abuse_broker, abuse_limits, harness  # noqa: F401
from bench.abuse_context import MARKER_PREFIX, AttackContext
from bench.abuse_core import (
    REGISTRY,
    Attack,
    AttackResult,
    Judge,
    Tally,
    attack_table,
    failed_to_run,
    figures,
    targets_table,
)  # fmt: skip
from bench.abuse_roles import RunRoles
from bench.abuse_stack import ProcfileProcess, RssSampler, WebProcess, start_worker
from bench.freshness import _pace
from bench.ingest import TENANTS, generate_events
from storage.partitions import Month
from tasks.broker import DEAD_QUEUE_SUFFIX

ATTACKER = "attacker"
VICTIM = "victim"
WARMUP_TENANT = "warmup"
WARMUP_ROUNDS = 8
FULL_EVENTS, QUICK_EVENTS = 60_000, 5_000
LOAD_RATE = 2_000.0  # events/s: the load spans the attacks (about half a minute)
EVENT_SPREAD_S = 600  # the normal events' timestamps: the last ten minutes
STORED_STALL_S, STORED_MAX_S = 30.0, 600.0
SETTLE_QUIET_S, SETTLE_MAX_S = 5.0, 120.0
NOTE_ITEMS = 12
STACK_SETTINGS = {
    "RATE_LIMIT_INGEST": "20/minute",  # a burst of BURST_REQUESTS meets it; every other attack has fresh keys
    "RATE_LIMIT_READ": "20/minute",
    "TENANT_MAX_FEATURES": "20",  # the normal load has 9 features and 5 models per tenant
    "TENANT_MAX_MODELS": "20",
    "INGEST_MAX_ROWS_PER_MESSAGE": "2000",  # a producer message holds PRODUCER_BATCH_SIZE (1,000) events,
    "INGEST_MAX_MESSAGE_BYTES": "500000",  # about 200 KB; so each cap can be broken alone
    "API_DOCS_ENABLED": "false",
    "WEB_CONCURRENCY": "2",
}


@dataclass(frozen=True)
class NormalCheck:
    lost: int
    duplicated: int
    unexplained_foreign_rows: int  # rows in a normal tenant that neither the load nor a marked attack sent


def normal_load(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """``track()`` arguments of ``n`` events of twenty tenants (the first is the victim), ids and times set."""
    events = generate_events(n, rng)
    newest = datetime.now(UTC)
    for item in events:
        if item["tenant_id"] == TENANTS[0]:
            item["tenant_id"] = VICTIM
        item["event_id"] = uuid.UUID(int=rng.getrandbits(128), version=4).hex
        item["timestamp"] = newest - timedelta(seconds=rng.uniform(0, EVENT_SPREAD_S))
    return events


def normal_tenants() -> list[str]:
    return [VICTIM, *TENANTS[1:]]


def reconcile_normal(engine: Engine, events: list[dict[str, Any]]) -> NormalCheck:
    """Event by event: each (tenant, event_id) of the load stored exactly once in its own tenant."""
    expected = {(e["tenant_id"], e["event_id"]) for e in events}
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT tenant_id, event_id, user_id FROM analytics_events"
                                 " WHERE tenant_id = ANY(:t)"), {"t": normal_tenants()}).all()  # fmt: skip
    found = Counter((tenant, event_id.hex) for tenant, event_id, _ in rows)
    foreign = sum(1 for tenant, event_id, user in rows
                  if (tenant, event_id.hex) not in expected and not user.startswith(MARKER_PREFIX))  # fmt: skip
    return NormalCheck(lost=sum(1 for key in expected if not found[key]),
                       duplicated=sum(found[key] - 1 for key in expected if found[key] > 1),
                       unexplained_foreign_rows=foreign)  # fmt: skip


def _count(engine: Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def wait_stored(engine: Engine, n: int) -> int:
    """Until the normal tenants hold ``n`` rows, or nothing changed for STORED_STALL_S; the count."""
    last, changed, deadline = -1, time.monotonic(), time.monotonic() + STORED_MAX_S
    while time.monotonic() < deadline:
        count = _count(engine, "SELECT count(*) FROM analytics_events WHERE tenant_id = ANY(:t)", t=normal_tenants())
        if count >= n:
            return count
        if count != last:
            last, changed = count, time.monotonic()
        elif time.monotonic() - changed > STORED_STALL_S:
            return count
        time.sleep(0.5)
    return last


def settle(engine: Engine) -> None:
    """Until rows and dead letters stop changing for SETTLE_QUIET_S (the attacks' messages are done)."""
    sql = "SELECT (SELECT count(*) FROM analytics_events) + (SELECT coalesce(sum(attempts), 0) FROM dead_letters)"
    last, changed, deadline = -1, time.monotonic(), time.monotonic() + SETTLE_MAX_S
    while time.monotonic() < deadline and time.monotonic() - changed < SETTLE_QUIET_S:
        if (count := _count(engine, sql)) != last:
            last, changed = count, time.monotonic()
        time.sleep(0.5)


def warm_up(ctx: AttackContext) -> None:
    """Requests of every kind on fresh connections, so that each serving process has its steady state
    (imports, pools, caches) before its RSS baseline is taken."""
    for _ in range(WARMUP_ROUNDS):
        key = ctx.new_key(WARMUP_TENANT, name="abuse warm-up")
        with httpx.Client(base_url=ctx.web.url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
            client.get("/health")
            client.get(f"/api/tenants/{WARMUP_TENANT}/summary")
            client.post("/v1/events", json={"events": [{"feature_name": "warm_up", "user_id": "warm-up"}]})
    time.sleep(1.0)


def launch(ctx: AttackContext, item: Attack) -> tuple[Judge, Tally]:
    ctx.tally = Tally()
    started = time.monotonic()
    try:
        judge = item.launch(ctx)
    except Exception as exc:  # noqa: BLE001 - an attack that breaks is reported as not refused
        judge = (lambda verdict: lambda: verdict)(failed_to_run(exc))
    print(f"  launched {item.name} ({time.monotonic() - started:.1f}s)", flush=True)
    return judge, ctx.tally


def judge_all(launched: list[tuple[Attack, Judge, Tally]]) -> list[AttackResult]:
    results = []
    for item, judge, tally in launched:
        try:
            verdict = judge()
        except Exception as exc:  # noqa: BLE001 - reported as not refused
            verdict = failed_to_run(exc)
        results.append(AttackResult(item, verdict, tally.server_errors))
    return results


def run(args: argparse.Namespace, engine: Engine, ctx: AttackContext, worker: harness.Worker | ProcfileProcess,
        events: list[dict[str, Any]]) -> int:  # fmt: skip
    from config import get_settings
    from producer import Tracker

    months_before = ctx.months()
    attacks = list(REGISTRY.values())
    print(f"\n== {len(attacks)} attacks while {len(events):,} normal events are tracked", flush=True)
    launched = [(a, *launch(ctx, a)) for a in attacks if a.before_load]
    tracker = Tracker(get_settings())
    durations = array("q", bytes(8 * len(events)))
    load = threading.Thread(target=_pace, args=(tracker, events, args.rate, durations), name="abuse-load")
    load_started = time.monotonic()
    load.start()
    try:
        during = [a for a in attacks if not a.before_load]
        spacing = len(events) / args.rate / max(len(during), 1)  # spread over the load
        for item in during:
            started = time.monotonic()
            launched.append((item, *launch(ctx, item)))
            time.sleep(max(0.0, spacing - (time.monotonic() - started)))
        attacks_done = time.monotonic() - load_started
        load.join()
        load_done = time.monotonic() - load_started
        flushed = tracker.flush(timeout=120)
        refused_by_buffer = tracker.stats().dropped_buffer_full
    finally:
        tracker.close(timeout=5)
    stored = wait_stored(engine, len(events))
    print(f"  normal load: {len(events):,} events tracked in {load_done:.1f}s (the attacks during it: until"
          f" {attacks_done:.1f}s), flushed {flushed}, buffer refusals {refused_by_buffer}, stored {stored:,};"
          " settling", flush=True)  # fmt: skip
    settle(engine)
    results = judge_all(launched)
    check = reconcile_normal(engine, events)
    normal_months = {Month.of(e["timestamp"]) for e in events}
    created = (ctx.months() - months_before) - normal_months
    down = [name for name, alive in (("web", ctx.web.alive()), ("worker", worker.alive())) if not alive]
    figs = figures(results, extra_server_errors=len(down), extra_cross_tenant=check.unexplained_foreign_rows,
                   normal_lost=check.lost, normal_duplicated=check.duplicated,
                   partitions_created_by_attacks=len(created), max_web_rss_growth_mb=ctx.rss.growth_mb())  # fmt: skip
    print("\n== attacks\n" + attack_table(results))
    made = sorted(str(m) for m in created)
    notes = [f"normal load reconciled event by event: {len(events):,} sent, {check.lost} lost, {check.duplicated}"
             f" duplicated, {check.unexplained_foreign_rows} rows in its tenants that nobody sent",
             f"partitions created by attacks: {', '.join(made[:NOTE_ITEMS]) or 'none'}"
             + (f" and {len(made) - NOTE_ITEMS} more" if len(made) > NOTE_ITEMS else ""),
             f"processes down at the end: {', '.join(down) or 'none'}"]  # fmt: skip
    notes.append(
        "web processes serving requests (RSS baseline -> peak, MB): "
        + ", ".join(f"pid {pid} {ctx.rss.baseline[pid]:.1f} -> {ctx.rss.peak[pid]:.1f}" for pid in sorted(ctx.rss.peak))
    )
    if ctx.rss.restarted:
        notes.append(f"web workers started again during the run: {sorted(ctx.rss.restarted)}")
    print("\n" + "\n".join(f"  {note}" for note in notes))
    print("\n== figures\n" + targets_table(figs), flush=True)
    if figs.all_met():
        shutil.rmtree(ctx.web.log_path.parent, ignore_errors=True)
    else:
        print(f"\nlogs of the web process and the worker kept in {ctx.web.log_path.parent}")
    print(figs.result_line(), flush=True)
    return 2 if args.strict and not figs.all_met() else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.abuse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK_EVENTS:,} normal events")
    parser.add_argument("--events", type=int, help=f"normal events (default {FULL_EVENTS:,})")
    parser.add_argument("--rate", type=float, default=LOAD_RATE, help="normal events per second")
    parser.add_argument("--strict", action="store_true", help="exit 2 if a target is missed")
    parser.add_argument("--broker-url", help="broker (default: CELERY_BROKER_URL, else the settings default)")
    parser.add_argument("--database", default="analytics_bench_abuse", help="bench database, dropped and recreated")
    parser.add_argument("--seed", type=int, default=12, help="random seed of the normal load")
    parser.add_argument(
        "--roles",
        action="store_true",
        help="the web process and the worker connect as least-privilege roles made for the run",
    )
    parser.add_argument(
        "--ingest-mode",
        choices=("task", "aggregate"),
        default="task",
        help="the worker's INGEST_MODE (default task, the Procfile's default)",
    )
    args = parser.parse_args(argv)
    args.events = args.events or (QUICK_EVENTS if args.quick else FULL_EVENTS)
    if args.database in ("analytics", "analytics_test", "postgres"):
        parser.error(f"--database {args.database} is not a bench database")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.install_signal_handlers()
    env = harness.configure_environment(args.broker_url, args.database)
    os.environ.update(STACK_SETTINGS)
    from config import get_settings

    get_settings.cache_clear()
    print(f"bench.abuse run {env.run_id}: database {env.database_name}, queue {env.ingest_queue},"
          f" INGEST_MODE {args.ingest_mode}{', roles' if args.roles else ''}, logs in {env.workdir}",
          flush=True)  # fmt: skip
    engine, web, ctx, worker = None, None, None, None
    roles = RunRoles(env.run_id, env.database_url) if args.roles else None
    (env.workdir / "metrics").mkdir(exist_ok=True)
    try:
        harness.recreate_database(env)
        if roles is not None:
            roles.create()
            print(f"  roles made for the run: web as {roles.names.web}, worker as {roles.names.worker}", flush=True)
        engine = harness.make_bench_engine(env)
        worker = start_worker(env, args.ingest_mode, roles)
        web = WebProcess(env.workdir, {"PRODUCER_SPOOL_DIR": str(env.workdir / "web-spool"),
                                       "PROMETHEUS_MULTIPROC_DIR": str(env.workdir / "metrics"),
                                       **(roles.web_env() if roles else {})})  # fmt: skip
        web.start_ready()
        events = normal_load(args.events, random.Random(args.seed))
        victim_plan = [{"event_id": e["event_id"], "timestamp": e["timestamp"]} for e in events
                       if e["tenant_id"] == VICTIM]  # fmt: skip
        ctx = AttackContext(settings=get_settings(), engine=engine, web=web, rss=RssSampler(web),
                            broker_url=env.broker_url, queue=env.ingest_queue, attacker=ATTACKER, victim=VICTIM,
                            victim_plan=victim_plan)  # fmt: skip
        warm_up(ctx)
        ctx.rss.start()
        return run(args, engine, ctx, worker, events)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the stack and deleting the queue", file=sys.stderr, flush=True)
        return 130
    except Exception:  # noqa: BLE001 - printed with the web log's tail, then a failing exit code
        traceback.print_exc()
        if web is not None:
            print(f"--- web log (tail)\n{web.log_tail()}", file=sys.stderr)
        return 1
    finally:
        if ctx is not None:
            ctx.rss.stop()
            ctx.close()
        if web is not None:
            web.stop()
        if isinstance(worker, ProcfileProcess):
            worker.stop()
        harness.stop_all_workers()
        # With the queue goes its "<queue>.dead" (RabbitMQ dead-letter exchange and queue, tasks.broker).
        harness.delete_queues(env.broker_url, [env.ingest_queue, f"{env.ingest_queue}{DEAD_QUEUE_SUFFIX}"])
        if engine is not None:
            if roles is not None:
                roles.drop(engine)
            engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
