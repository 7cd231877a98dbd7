"""The Celery application (``celery -A tasks.app worker``)."""

from __future__ import annotations

from celery import Celery

TASK_MODULES = ["tasks.ingest", "tasks.partitions", "tasks.rollups"]


def create_app() -> Celery:
    app = Celery("analytics", include=TASK_MODULES)
    app.config_from_object("celeryconfig")
    return app


app = create_app()
