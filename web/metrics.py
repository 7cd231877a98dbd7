"""``GET /metrics``: Prometheus text format.

Counted where they happen: this process's producer (published, buffered,
spooled, dropped) and HTTP ingest; the worker's stored / duplicate /
dead-lettered events, batch sizes and ingest lag (through
PROMETHEUS_MULTIPROC_DIR, see monitoring.metrics). Read at scrape time, because
they are state rather than events: dead letters, the partition horizon, the
rollup lag, and the ingest queue's depth in the broker. A source that cannot be
read is counted in ``analytics_scrape_errors`` and left out, so that a down
database does not also blind the monitoring of everything else.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from amqp.exceptions import AMQPError, ChannelError
from fastapi import APIRouter, Request, Response
from kombu import Connection
from kombu.exceptions import KombuError
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from config import get_settings
from producer import get_tracker
from storage.partitions import Month, existing_months
from web.db import sessions

logger = logging.getLogger(__name__)

router = APIRouter(tags=["monitoring"])

HTTP_EVENTS = Counter("analytics_http_events", "Events received by POST /v1/events.", ["result"])
BROKER_TIMEOUT_S = 2.0
NOT_FOUND = 404
DB_STATEMENT_TIMEOUT = "2s"


class StateCollector(Collector):
    """Reads the current state at each scrape."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def collect(self) -> Iterator[Metric]:
        errors = CounterMetricFamily("analytics_scrape_errors", "Sources /metrics could not read.", labels=["source"])
        yield from self._producer()
        for source, read in (("database", self._database), ("broker", self._broker)):
            try:
                yield from read()
            except (SQLAlchemyError, OSError, KombuError, AMQPError, RedisError) as exc:
                logger.warning("metrics: cannot read the %s: %s", source, exc)
                errors.add_metric([source], 1)
        yield errors

    def _producer(self) -> Iterator[Metric]:
        stats = get_tracker().stats()
        yield CounterMetricFamily("analytics_producer_published", "Events this process published.", stats.published)
        yield CounterMetricFamily(
            "analytics_producer_dropped", "Events refused by the full buffer.", stats.dropped_buffer_full
        )
        yield CounterMetricFamily(
            "analytics_producer_publish_failures", "Failed publish attempts.", stats.publish_failures
        )
        yield GaugeMetricFamily(
            "analytics_producer_buffered_events", "Events in this process's memory buffer.", stats.buffered
        )
        yield GaugeMetricFamily(
            "analytics_producer_spooled_events", "Events in this process's disk spool.", stats.spooled
        )

    def _database(self) -> Iterator[Metric]:
        with self._sessions() as session:
            session.execute(text(f"SET LOCAL statement_timeout = '{DB_STATEMENT_TIMEOUT}'"))
            dead = session.execute(text("SELECT count(*) FROM dead_letters")).scalar_one()
            pending, oldest = session.execute(
                text("SELECT count(*), min(created_at) FROM rollup_pending_batches")
            ).one()
            months = existing_months(session.connection())
            now = datetime.now(UTC)
        current = Month.of(now)
        ahead = 0
        while current.shift(ahead + 1) in months:
            ahead += 1
        yield GaugeMetricFamily("analytics_dead_letters", "Rows in dead_letters.", dead)
        yield GaugeMetricFamily(
            "analytics_partition_months_ahead",
            "Consecutive months after the current one whose partitions exist (-1: not even the current).",
            ahead if current in months else -1,
        )
        yield GaugeMetricFamily("analytics_rollup_pending_batches", "Stored batches not yet in the rollups.", pending)
        yield GaugeMetricFamily(
            "analytics_rollup_lag_seconds",
            "Age of the oldest stored batch not yet in the rollups.",
            0.0 if oldest is None else (now - oldest).total_seconds(),
        )

    def _broker(self) -> Iterator[Metric]:
        settings = get_settings()
        with Connection(settings.celery_broker_url, connect_timeout=BROKER_TIMEOUT_S) as conn:
            conn.ensure_connection(max_retries=0)
            try:
                # The transport's channel has queue_declare; kombu-stubs' StdChannel does not say so.
                channel: Any = conn.default_channel
                _, depth, consumers = channel.queue_declare(settings.ingest_queue, passive=True)
            except ChannelError as exc:
                if exc.reply_code != NOT_FOUND:
                    raise
                depth = consumers = 0  # no such queue yet (Redis keeps no empty lists): nothing waits

        yield GaugeMetricFamily(
            "analytics_ingest_queue_messages", "Messages (batches) waiting in the ingest queue.", depth
        )
        yield GaugeMetricFamily("analytics_ingest_queue_consumers", "Workers consuming the ingest queue.", consumers)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    state = CollectorRegistry(auto_describe=False)
    state.register(StateCollector(sessions(request)))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shared = CollectorRegistry()
        MultiProcessCollector(shared)  # type: ignore[no-untyped-call]  # every process's counters, the worker's included
    else:
        shared = REGISTRY
    body = generate_latest(shared) + generate_latest(state)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
