"""Publishing one micro-batch as one Celery task message.

Owned by the producer's background thread, so it holds one broker connection
and never shares it. With RabbitMQ, ``confirm_publish`` (celeryconfig) makes
``publish`` return only once the broker has the message; any failure raises,
and the caller keeps the batch to try again.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Connection

from config import Settings
from tasks.names import INGEST_WRITE_BATCH  # by name only: web processes need not import the worker code


class BatchPublisher:
    def __init__(self, app: Celery, settings: Settings) -> None:
        self._app = app
        self._queue = settings.ingest_queue
        self._connection: Connection | None = None
        self._producer: Any = None

    def publish(self, message: dict[str, Any], size: int) -> None:
        if self._producer is None:
            connection = self._app.connection_for_write()
            connection.ensure_connection(max_retries=0)  # the caller owns the retry loop
            self._connection = connection
            self._producer = self._app.amqp.Producer(connection)
        try:
            self._app.send_task(
                INGEST_WRITE_BATCH,
                args=[message],
                queue=self._queue,
                producer=self._producer,
                retry=False,  # the caller owns the retry loop and its backoff
                argsrepr=f"<batch of {size} events>",  # skips saferepr of the whole batch
                kwargsrepr="{}",
            )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            connection.collect()  # drop the socket without waiting on a dead broker
