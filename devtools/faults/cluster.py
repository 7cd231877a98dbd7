"""The pieces of a fault scenario: private servers, workers, producers, reconciliation.

A ``Cluster`` owns a private PostgreSQL (migrated) and a private broker
(RabbitMQ or Redis) on spare ports; nothing here touches the machine's shared
services. Workers are real ``celery -A tasks.app worker`` subprocesses
(devtools.workers), producers are real ``Tracker`` processes (devtools.faults.load),
and ``reconcile`` counts, per tracked event, the rows stored and the dead
letters.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from devtools.processes import ManagedProcess, child_env, wait_for
from devtools.servers import PrivatePostgres, PrivateRabbitMQ, PrivateRedis
from devtools.workers import Worker, celery_worker

# Worker settings under fault: Redis redelivers an unacknowledged message after
# 10 s instead of the production default, the retry backoff is capped at 5 s so
# a recovered database is used within seconds.
VISIBILITY_TIMEOUT_S = 10
WORKER_SETTINGS = {
    "REDIS_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
    "INGEST_RETRY_MAX_S": "5",
    "PRODUCER_SPOOL_DIR": "",
}
WORKER_READY_TIMEOUT_S = 60.0
# A redelivered batch is written again and dropped as duplicates: after the
# last event is counted, wait this long for a late duplicate to show.
SETTLE_QUIET_S = 3.0


@dataclass
class Counts:
    """Reconciliation of what the producers accepted against what the database holds."""

    sent: int = 0
    rows: int = 0  # rows stored for the tenant
    stored: int = 0  # distinct tracked events stored
    dead_lettered: int = 0  # distinct tracked events in dead letters
    lost: int = 0  # tracked, neither stored nor dead-lettered
    duplicated: int = 0  # rows beyond the first of a tracked event
    unexpected: int = 0  # rows of events nobody tracked
    missing_sample: list[str] = field(default_factory=list)


def _user_ids_in(payload: Any, tenant: str) -> Iterator[str]:
    """The user ids of ``tenant``'s events inside a dead letter's payload."""
    if isinstance(payload, dict):
        if payload.get("tenant_id") == tenant and isinstance(payload.get("user_id"), str):
            yield payload["user_id"]
        elif isinstance(payload.get("rows"), list) and isinstance(payload.get("fields"), list):
            for values in payload["rows"]:
                if isinstance(values, list):
                    yield from _user_ids_in(dict(zip(payload["fields"], values, strict=False)), tenant)
        elif isinstance(payload.get("body"), str):  # a raw message the consumer could not run
            with suppress(ValueError):
                yield from _user_ids_in(json.loads(payload["body"]), tenant)
    elif isinstance(payload, list):
        for item in payload:
            yield from _user_ids_in(item, tenant)


def reconcile(database_url: str, tenant: str, producers: dict[str, int]) -> Counts:
    """``producers``: producer id -> events its ``track()`` accepted (users ``<id>-0`` .. ``<id>-<n-1>``)."""
    engine = create_engine(database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            per_user = conn.execute(
                text("SELECT user_id, count(*) FROM analytics_events WHERE tenant_id = :t GROUP BY user_id"),
                {"t": tenant},
            ).all()
            letters = (
                conn.execute(text("SELECT payload FROM dead_letters WHERE payload LIKE :p"), {"p": f"%{tenant}%"})
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    sent = {f"{pid}-{n}" for pid, count in producers.items() for n in range(count)}
    stored = {user: rows for user, rows in per_user}
    dead = {user for payload in letters for user in _user_ids_in(json.loads(payload), tenant)}
    missing = sent - stored.keys() - dead
    return Counts(
        sent=len(sent),
        rows=sum(stored.values()),
        stored=len(stored.keys() & sent),
        dead_lettered=len(dead & sent),
        lost=len(missing),
        duplicated=sum(rows - 1 for rows in stored.values()),
        unexpected=len(stored.keys() - sent),
        missing_sample=sorted(missing)[:5],
    )


def open_write_transaction(database_url: str, application_name: str, timeout: float) -> bool:
    """Wait until a session of ``application_name`` has written in an open transaction.

    That is the middle of a batch: rows inserted, not committed. False if it
    did not happen within ``timeout`` seconds.
    """
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT", pool_size=1)
    deadline = time.monotonic() + timeout
    try:
        with engine.connect() as conn:
            while time.monotonic() < deadline:
                if conn.execute(
                    text("SELECT 1 FROM pg_stat_activity WHERE application_name = :a AND backend_xid IS NOT NULL"),
                    {"a": application_name},
                ).first():
                    return True
                time.sleep(0.005)
    finally:
        engine.dispose()
    return False


class Load:
    """A producer process (devtools.faults.load) tracking a steady stream of events."""

    def __init__(
        self, workdir: Path, *, broker_url: str, queue: str, tenant: str, producer_id: str,
        rate: float, duration: float, spool: Path, env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.producer_id = producer_id
        self.control = workdir / f"load-{producer_id}"
        self.control.mkdir(parents=True, exist_ok=True)
        self.log_path = self.control / "producer.log"
        cmd = [
            sys.executable, "-m", "devtools.faults.load",
            "--broker", broker_url, "--queue", queue, "--spool", str(spool), "--tenant", tenant,
            "--producer-id", producer_id, "--rate", str(rate), "--duration", str(duration),
            "--control", str(self.control), "--visibility-timeout", str(VISIBILITY_TIMEOUT_S),
        ]  # fmt: skip
        self.process = ManagedProcess(f"producer {producer_id}", cmd, self.log_path, env=child_env(env)).start()
        self.proc = self.process.proc

    def _read(self, name: str) -> dict[str, Any]:
        try:
            return json.loads((self.control / name).read_text())
        except (OSError, ValueError):
            return {}

    def status(self) -> dict[str, Any]:
        return self._read("status.json")

    def log_tail(self, lines: int = 20) -> str:
        return self.process.log_tail(lines)

    def wait(self, timeout: float) -> dict[str, Any]:
        """Wait until the producer has tracked everything and flushed; its report."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"producer {self.producer_id} did not finish:\n{self.log_tail()}") from None
        report = self._read("report.json")
        if not report:
            raise AssertionError(f"producer {self.producer_id} wrote no report:\n{self.log_tail()}")
        return report

    def freeze_and_kill(self, timeout: float = 30) -> dict[str, Any]:
        """Stop tracking, wait until nothing accepted is only in memory, then SIGKILL."""
        (self.control / "freeze").touch()
        wait_for(lambda: (self.control / "frozen").exists() or self.proc.poll() is not None, timeout,
                 lambda: f"producer {self.producer_id} never froze:\n{self.log_tail()}")  # fmt: skip
        self.process.kill_group(signal.SIGKILL)
        return self._read("report.json")

    def kill(self) -> None:
        if self.process.alive():
            self.process.kill_group(signal.SIGKILL)


class Cluster:
    """Private PostgreSQL + private broker for one scenario, and what runs against them."""

    def __init__(
        self, workdir: Path, broker: str, *, listen: tuple[str, ...] = (), trusted: tuple[str, ...] = (),
        heartbeat: int | None = None,
    ) -> None:  # fmt: skip
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.broker_kind = broker
        self.pg = PrivatePostgres(listen=listen, trusted=trusted)
        self.broker: PrivateRabbitMQ | PrivateRedis = (
            PrivateRabbitMQ(listen=listen, heartbeat=heartbeat) if broker == "rabbitmq"
            else PrivateRedis(workdir / "redis")
        )  # fmt: skip
        self.queue = f"ingest-fault-{uuid.uuid4().hex[:8]}"
        self.tenant = f"fault-{uuid.uuid4().hex[:10]}"
        self.spool = workdir / "spool"
        self.loads: list[Load] = []
        self._workers = 0

    def __enter__(self) -> Cluster:
        def database() -> None:
            self.pg.start()
            self.pg.migrate()

        try:
            with ThreadPoolExecutor(2) as pool:
                for future in [pool.submit(database), pool.submit(self.broker.start)]:
                    future.result()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for load in self.loads:
            load.kill()
        for log in (self.pg.logfile, getattr(self.broker, "logfile", None)):
            if log is not None and log.exists():  # kept beside the workers' logs
                shutil.copy(log, self.workdir / f"{log.parent.name.split('-')[1]}-{log.name}")
        try:
            self.broker.stop()
            if isinstance(self.broker, PrivateRabbitMQ):
                self.broker.close()
        finally:
            self.pg.close()

    @property
    def broker_url(self) -> str:
        return self.broker.url

    @property
    def database_url(self) -> str:
        return self.pg.url()

    def worker_app_name(self) -> str:
        self._workers += 1
        return f"fault-worker-{self._workers}"

    @contextmanager
    def worker(self, *, concurrency: int = 2, app_name: str | None = None) -> Iterator[tuple[Worker, str]]:
        """A worker on the private broker and database; yields it and its PostgreSQL application_name."""
        app_name = app_name or self.worker_app_name()
        env = {**WORKER_SETTINGS, "DATABASE_URL": self.pg.url(application_name=app_name)}
        with celery_worker(self.broker_url, self.queue, log_dir=self.workdir, concurrency=concurrency, env=env,
                           ready_timeout=WORKER_READY_TIMEOUT_S) as worker:  # fmt: skip
            yield worker, app_name

    def load(self, producer_id: str, *, rate: float, duration: float) -> Load:
        load = Load(self.workdir, broker_url=self.broker_url, queue=self.queue, tenant=self.tenant,
                    producer_id=producer_id, rate=rate, duration=duration, spool=self.spool)  # fmt: skip
        self.loads.append(load)
        return load

    def reconcile(self, producers: dict[str, int]) -> Counts:
        return reconcile(self.database_url, self.tenant, producers)

    def settle(self, producers: dict[str, int], timeout: float) -> Counts:
        """Wait until every accepted event is accounted for (or ``timeout``), then for stragglers."""
        deadline = time.monotonic() + timeout
        total = sum(producers.values())
        while time.monotonic() < deadline:
            counts = self.reconcile(producers)
            if counts.stored + counts.dead_lettered >= total:
                break
            time.sleep(1.0)
        time.sleep(SETTLE_QUIET_S)
        return self.reconcile(producers)


def count_log(worker: Worker, needle: str) -> int:
    return worker.log().count(needle)


def summarize(counter: Counter[str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in counter.items())
