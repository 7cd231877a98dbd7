"""The Celery application (``celery -A tasks.app worker``)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import (
    beat_init,
    celeryd_init,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from config import get_settings
from monitoring.escape import install_log_escaping
from tasks import resources
from tasks.broker import AMQP_CLASS
from tasks.names import PARTITIONS_ENSURE_AHEAD

TASK_MODULES = ["tasks.ingest", "tasks.partitions", "tasks.rollups", "tasks.prices", "tasks.deliveries", "tasks.alerts"]


def create_app() -> Celery:
    app = Celery("analytics", include=TASK_MODULES, amqp=AMQP_CLASS)
    app.config_from_object("celeryconfig")
    return app


app = create_app()


@celeryd_init.connect
@beat_init.connect
def escape_logged_identifiers(**_: Any) -> None:
    """Client-chosen names in log arguments reach operators' terminals escaped."""
    install_log_escaping()


@worker_init.connect
def open_process_engines(**_: Any) -> None:
    """The worker's main process (the consumer; the tasks too with the threads or solo pool)."""
    resources.open_engines(get_settings())


@worker_process_init.connect
def engines_after_fork(**_: Any) -> None:
    """A prefork child: its own pool, never the parent's connections."""
    resources.after_fork()


@worker_process_shutdown.connect
@worker_shutdown.connect
def close_process_engines(**_: Any) -> None:
    resources.close_engines()


@beat_init.connect
def ensure_partitions_at_beat_start(sender: Any, **_: Any) -> None:
    """Beat runs an interval entry one interval after it starts; the months
    ahead should not wait that long (the task is idempotent and locked)."""
    app.send_task(PARTITIONS_ENSURE_AHEAD)
