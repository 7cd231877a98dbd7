"""``python -m demo`` (behind ``./run``): the pipeline under a demo load, then a report.

Uses the services named by DATABASE_URL / CELERY_BROKER_URL, or starts
embedded ones; migrates; starts the Procfile's web, saas, provider, worker, alerts,
rollups, beat and flower; sends real requests to the stand-in SaaS app
(demo.saas), which calls the fake provider (demo.provider) through the openai
client and records each call with the producer's helpers - one feature as an
OpenTelemetry span exported to the web process's ``POST /v1/traces`` with a
tenant key made for it; tracks ``--events`` events (nine features,
``--tenants`` tenants) through the producer client with a progress bar; waits
until every one is stored, the SaaS app's included (by the event ids its
answers carry); reconciles sent against stored; prints a report; and stops
everything it started, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import sys
import time
import uuid
from datetime import UTC, datetime
from types import FrameType

import httpx
from sqlalchemy import Engine, bindparam, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from tqdm import tqdm

from config import get_settings
from demo.ai import FEATURES, OTLP_FEATURE
from demo.load import LoadSpec, run_load
from demo.processes import ROOT, Processes
from demo.services import Services, start_services
from demo.state import DATA_DIR
from models import AnalyticsEvent
from producer import Tracker
from storage.api_keys import create_key, revoke_named
from storage.migrate import DatabaseUnreachable, migrate

DEFAULT_EVENTS = 200_000
DEFAULT_TENANTS = 20
HTTP_SAMPLE_REQUESTS = 27  # three calls of each feature
STORE_TIMEOUT_S = 600.0
POLL_S = 0.5
ID_CHUNK = 10_000
PROCESSES = ["web", "saas", "provider", "worker", "rollups", "alerts", "beat", "flower"]
OTLP_KEY_NAME = "demo OTLP exporter"
OTLP_EXPORT_DELAY_MS = "200"  # the span processor's batch delay: the demo's spans leave at once
METRICS_DIR = ROOT / "var" / "metrics"  # the Procfile's PROMETHEUS_MULTIPROC_DIR
DASHBOARD_KEY_FILE = ROOT / "var" / "demo-api-key"  # readable by its owner only; never printed


class DemoError(Exception):
    """A problem the newcomer can fix; printed as one line."""


def count_stored(engine: Engine, ids: list[uuid.UUID]) -> tuple[int, int]:
    rows = distinct = 0
    query = select(func.count(), func.count(AnalyticsEvent.event_id.distinct())).where(
        AnalyticsEvent.event_id.in_(bindparam("ids", expanding=True))
    )
    with engine.connect() as conn:
        for i in range(0, len(ids), ID_CHUNK):
            r, d = conn.execute(query, {"ids": ids[i : i + ID_CHUNK]}).one()
            rows, distinct = rows + r, distinct + d
    return rows, distinct


def require_free_port(port: int, variable: str) -> None:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise DemoError(f"port {port} is taken (another ./run still up?); free it or set {variable}")


def send_http_sample(base_url: str, tenants: list[str]) -> list[uuid.UUID | None]:
    """The event id of each call the SaaS app answered (None: it answered without recording one)."""
    ids: list[uuid.UUID | None] = []
    with httpx.Client(base_url=base_url, timeout=5.0) as client:
        for i in range(HTTP_SAMPLE_REQUESTS):
            feature = FEATURES[i % len(FEATURES)]
            tenant = tenants[0] if feature == OTLP_FEATURE else tenants[i % len(tenants)]  # the OTLP key's tenant
            response = client.post(
                f"/api/ai-feature/{feature}", json={"tenant_id": tenant, "user_id": f"user-{i}", "input": "hello " * 20}
            )
            if response.status_code not in (200, 502):  # 502: the provider failed, still recorded
                raise DemoError(f"the SaaS app answered {response.status_code} to {feature}: {response.text[:200]}")
            event_id = response.json().get("event_id")
            ids.append(uuid.UUID(event_id) if event_id else None)
    return ids


def otlp_exporter_env(engine: Engine, tenant: str, web: str) -> None:
    """A fresh key of ``tenant`` for the SaaS app's OpenTelemetry exporter, in the standard OTLP variables
    the processes inherit (an earlier run's key is revoked in the same transaction)."""
    with Session(engine) as session, session.begin():
        revoke_named(session, tenant_id=tenant, name=OTLP_KEY_NAME)
        _, key = create_key(session, name=OTLP_KEY_NAME, tenant_id=tenant)
    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"{web}/v1/traces"
    os.environ["OTEL_EXPORTER_OTLP_TRACES_HEADERS"] = f"Authorization=Bearer%20{key}"
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = OTLP_EXPORT_DELAY_MS


def wait_stored(engine: Engine, ids: list[uuid.UUID], since: datetime) -> tuple[int, int]:
    """Progress from a cheap count of recent rows; the exact reconciliation by id at the end."""
    deadline = time.monotonic() + STORE_TIMEOUT_S
    recent = text("SELECT count(*) FROM analytics_events WHERE timestamp >= :since")
    with tqdm(total=len(ids), desc="stored ", unit="ev", unit_scale=True, mininterval=1) as bar:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                approx = min(conn.execute(recent, {"since": since}).scalar_one(), len(ids))
            bar.update(approx - bar.n)
            if approx >= len(ids):
                rows, distinct = count_stored(engine, ids)
                if distinct >= len(ids):
                    bar.update(len(ids) - bar.n)
                    return rows, distinct
            time.sleep(POLL_S)
    return count_stored(engine, ids)


def per_feature(engine: Engine, ids: list[uuid.UUID]) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT feature_name, count(*), sum((status = 'error')::int), sum(tokens_used),"
                " round(avg(latency_ms)) FROM analytics_events"
                " WHERE event_id = ANY(:ids) GROUP BY 1 ORDER BY 1"
            ),
            {"ids": ids},
        ).all()


def dead_letter_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM dead_letters")).scalar_one()


def run(args: argparse.Namespace) -> int:
    web_port = int(os.environ.setdefault("WEB_PORT", "8000"))
    saas_port = int(os.environ.setdefault("SAAS_PORT", "8001"))
    provider_port = int(os.environ.setdefault("PROVIDER_PORT", "8002"))
    flower_port = int(os.environ.setdefault("FLOWER_PORT", "5555"))
    require_free_port(web_port, "WEB_PORT")
    require_free_port(saas_port, "SAAS_PORT")
    require_free_port(provider_port, "PROVIDER_PORT")
    require_free_port(flower_port, "FLOWER_PORT")

    services = start_services(DATA_DIR)
    processes: Processes | None = None
    engine = create_engine(services.database_url)
    try:
        for line in services.descriptions:
            print(f"demo: {line}")
        try:
            migrate(services.database_url)
        except DatabaseUnreachable as exc:
            raise DemoError(str(exc)) from None
        shutil.rmtree(METRICS_DIR, ignore_errors=True)  # counters of a previous run's processes
        web = f"http://127.0.0.1:{web_port}"
        saas = f"http://127.0.0.1:{saas_port}"
        tenants = LoadSpec(events=0, tenants=args.tenants).tenant_ids
        otlp_exporter_env(engine, tenants[0], web)  # before the processes take their environment
        processes = Processes(PROCESSES, ROOT / "var" / "demo-processes.log")
        print(f"demo: starting {', '.join(PROCESSES)} (logs: {processes.log_path.relative_to(ROOT)})")
        processes.start()
        processes.wait_http(f"{web}/health")
        processes.wait_http(f"{saas}/health")
        processes.wait_http(f"http://127.0.0.1:{provider_port}/health")
        dashboard_key(engine, tenants[0])

        dead_before = dead_letter_count(engine)
        since = datetime.now(UTC)
        saas_ids = send_http_sample(saas, tenants)
        print(
            f"demo: the SaaS app answered {len(saas_ids)}/{HTTP_SAMPLE_REQUESTS} AI-feature requests"
            f" (through the openai client; {OTLP_FEATURE} as OpenTelemetry spans to /v1/traces)"
        )
        tracker = Tracker(get_settings())
        spec = LoadSpec(events=args.events, tenants=args.tenants, rate=args.rate)
        started = time.monotonic()
        with tqdm(total=spec.events, desc="tracked", unit="ev", unit_scale=True, mininterval=1) as bar:
            ids = run_load(tracker, spec, bar.update)
        sent_s = time.monotonic() - started
        if not tracker.flush(STORE_TIMEOUT_S):
            raise DemoError("the producer could not publish the events: is the broker reachable?")
        ids += [event_id for event_id in saas_ids if event_id is not None]
        sent = args.events + len(saas_ids)  # a SaaS call answered without an event id counts as lost
        rows, distinct = wait_stored(engine, ids, since)
        stored_s = time.monotonic() - started
        report(sent, sent_s, rows, distinct, stored_s, dead_letter_count(engine) - dead_before,
               per_feature(engine, ids), web, saas, f"http://127.0.0.1:{flower_port}", tenants[0])  # fmt: skip
        tracker.close()
        if args.keep_running:
            print("demo: everything keeps running; Ctrl-C stops it")
            print_exports(services)
            signal.pause()
        return 0 if (rows, distinct) == (sent, sent) else 1
    finally:
        if processes is not None:
            processes.stop()
        engine.dispose()
        services.stop()


def print_exports(services: Services) -> None:
    """How another shell reaches the embedded services (python -m cli finds them without it while they run)."""
    if not services.embedded:
        return  # the environment named every service: the other shell sets the same variables
    print("demo: to reach them from another shell (python -m cli of this checkout finds them by itself):")
    for variable, url in services.embedded.items():
        print(f"  export {variable}={shlex.quote(url)}")


def dashboard_key(engine: Engine, tenant: str) -> None:
    """A fresh key of the demo's first tenant, for the dashboard page, kept in a file.

    The keys an earlier ``./run`` made for it are revoked first, in the same
    transaction: one live demo key at a time, never a pile of forgotten ones.
    """
    name = "demo dashboard"
    with Session(engine) as session, session.begin():
        revoke_named(session, tenant_id=tenant, name=name)
        _, key = create_key(session, name=name, tenant_id=tenant)
    DASHBOARD_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
    DASHBOARD_KEY_FILE.unlink(missing_ok=True)
    fd = os.open(DASHBOARD_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")


def report(sent: int, sent_s: float, rows: int, distinct: int, stored_s: float, dead: int,
           features: list[tuple], web: str, saas: str, flower: str, dashboard_tenant: str) -> None:  # fmt: skip
    lost, duplicated = sent - distinct, rows - distinct
    print()
    print("=" * 66)
    print("Demo report")
    print("=" * 66)
    print(f"events sent        {sent:>12,}   ({sent / sent_s:,.0f} events/s into track())")
    print(f"events stored      {distinct:>12,}   ({distinct / stored_s:,.0f} events/s end to end)")
    print(f"lost               {lost:>12,}")
    print(f"duplicated         {duplicated:>12,}")
    print(f"dead-lettered      {dead:>12,}")
    print()
    print(f"{'feature':<22}{'calls':>9}{'errors':>8}{'tokens':>14}{'avg ms':>8}")
    for feature, calls, errors, tokens, avg_ms in features:
        print(f"{feature:<22}{calls:>9,}{errors:>8,}{tokens:>14,}{int(avg_ms):>8}")
    print()
    docs = (
        f"API docs: {web}/docs" if get_settings().api_docs_enabled else "API docs off; API_DOCS_ENABLED=1 serves them"
    )
    print(f"web app            {web}   ({docs})")
    print(
        f"dashboard          {web}/dashboard   (tenant {dashboard_tenant}; its API key is in "
        f"{DASHBOARD_KEY_FILE.relative_to(ROOT)})"
    )
    print(f"SaaS demo app      {saas}   (POST /api/ai-feature/<feature>; tracks each call)")
    print(f"Flower             {flower}")
    verdict = "every event stored exactly once" if lost == 0 and duplicated == 0 else "MISMATCH"
    print(f"result: {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="events to track [%(default)s]")
    parser.add_argument("--tenants", type=int, default=DEFAULT_TENANTS, help="tenants [%(default)s]")
    parser.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = as fast as possible")
    parser.add_argument("--keep-running", action="store_true", help="leave everything up after the report")
    args = parser.parse_args()

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\ndemo: interrupted; everything it started is stopped")
        return 130
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except OperationalError as exc:
        url = make_url(get_settings().database_url).render_as_string(hide_password=True)
        print(f"demo: cannot reach PostgreSQL at {url}: {str(exc.orig).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # a process did not come up: Processes names its log
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
