"""Aggregating ingest consumer: many small broker messages, one large transaction.

``python -m tasks.aggregator`` is the Procfile's ``worker`` with
``INGEST_MODE=aggregate``. The steps and their contracts are described in
tasks.aggregate; this module makes the process's one engine, refuses a Redis
broker (RabbitMQ only, see tasks.aggregate) and runs the consumer until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging

from config import get_settings
from monitoring.escape import install_log_escaping
from storage.db import make_engine
from tasks.aggregate.consumer import COMMITTED_LOG, READY_LOG, Aggregator
from tasks.aggregate.received import decode

__all__ = ["COMMITTED_LOG", "READY_LOG", "Aggregator", "decode", "main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.aggregator", description=__doc__.splitlines()[0])
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    settings = get_settings()
    if settings.broker_is_redis:
        raise SystemExit(
            "aggregator: INGEST_MODE=aggregate needs a RabbitMQ broker (amqp://); "
            "with Redis run the Celery worker (INGEST_MODE=task)"
        )
    logging.basicConfig(
        level=args.loglevel.upper(), format="[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"
    )
    install_log_escaping()
    engine = make_engine(settings)  # the process's one engine
    try:
        aggregator = Aggregator(settings, engine)
        with aggregator.signals():
            aggregator.run()
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
