"""The ingest queue on the broker: its dead-letter queue, parking, and moving parked messages back.

RabbitMQ. The ingest queue is declared with a dead-letter exchange
(``x-dead-letter-exchange`` = the default exchange, ``x-dead-letter-routing-key``
= ``<queue>.dead``), so whatever the broker is told to reject without requeue
lands in ``<queue>.dead`` instead of vanishing. The worker also *parks* there
itself (``park``) the rare message it can neither store nor dead-letter in
PostgreSQL; an operator moves them back with ``requeue_dead``
(``python -m cli dead-letters requeue-broker``).

A queue declared before this change has no such arguments, and RabbitMQ refuses
to redeclare a queue with different arguments (PRECONDITION_FAILED, 406, which
also closes the channel). ``TolerantQueue`` probes on a throwaway channel
first; if the queue exists with other arguments it logs one line per queue and
process and only asserts that the queue exists (passive declare), so a worker,
a producer or ``./run`` keep working on an old queue (without the dead-letter
exchange until it is recreated: drain it, delete it, restart the worker). The
same tolerance applies the other way round, to queues Celery creates on
demand (``TolerantQueues``).

Redis has no dead-letter exchange: ``<queue>.dead`` is a plain list there that
only ``park`` fills. A message the worker neither acknowledges nor rejects
stays in the transport's unacknowledged set and is delivered again after
``REDIS_VISIBILITY_TIMEOUT_S``.
"""

from __future__ import annotations

import logging
from typing import Any

import amqp
from amqp.exceptions import ChannelError, PreconditionFailed
from celery.app.amqp import AMQP, Queues
from kombu import Connection, Exchange, Queue
from kombu.message import Message

logger = logging.getLogger(__name__)

DEAD_QUEUE_SUFFIX = ".dead"
NOT_FOUND = "404"  # reply code of a passive declaration of a queue that does not exist
PARKED_REASON_HEADER = "x-parked-reason"
PARKED_REASON_MAX_CHARS = 1000  # an AMQP header is no place for a long text
OLD_QUEUE_LOG = (
    "queue %r exists without the dead-letter arguments %s (declared before them); using it as it is: "
    "messages the broker rejects from it are not kept in %r until it is recreated "
    "(drain it, delete it, restart the worker)"
)

_warned: set[str] = set()


def dead_queue_name(queue: str) -> str:
    return f"{queue}{DEAD_QUEUE_SUFFIX}"


def dead_letter_arguments(queue: str) -> dict[str, Any]:
    """RabbitMQ queue arguments routing rejected messages to ``<queue>.dead``."""
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead_queue_name(queue)}


def dead_queue(queue: str) -> TolerantQueue:
    name = dead_queue_name(queue)
    return TolerantQueue(name, Exchange(""), routing_key=name, durable=True)


class TolerantQueue(Queue):
    """A queue whose declaration does not fail on a queue that exists with other arguments.

    On RabbitMQ the declaration is tried first on a throwaway channel (a 406
    closes the channel it happens on); if refused, the queue is only asserted
    to exist (passive) and one warning is logged.
    """

    def queue_declare(self, nowait: bool = False, passive: bool = False, channel: Any = None) -> Any:
        channel = channel or self.channel
        if not passive and isinstance(channel, amqp.Channel) and not self._declarable(channel):
            passive = True
        return super().queue_declare(nowait=nowait, passive=passive, channel=channel)

    def _declarable(self, channel: amqp.Channel) -> bool:
        probe = channel.connection.channel()
        try:
            probe.queue_declare(
                queue=self.name, passive=False, durable=self.durable, exclusive=self.exclusive,
                auto_delete=self.auto_delete, arguments=self.queue_arguments,
            )  # fmt: skip
        except PreconditionFailed as exc:
            if self.name not in _warned:
                _warned.add(self.name)
                logger.warning(OLD_QUEUE_LOG, self.name, self.queue_arguments or {}, dead_queue_name(self.name))
                logger.debug("declaration refused: %s", exc)
            return False
        finally:
            if probe.is_open:
                probe.close()
        return True


class IngestQueue(TolerantQueue):
    """The ingest queue: declared with its dead-letter queue (which must exist first:
    RabbitMQ drops what it dead-letters to a routing key no queue is bound to)."""

    def declare(self, nowait: bool = False, channel: Any = None) -> str | None:
        channel = channel or self.channel
        if self.queue_arguments:
            dead_queue(self.name)(channel).declare(nowait=nowait)
        return super().declare(nowait=nowait, channel=channel)


def ingest_queue(name: str, *, dead_letter_exchange: bool) -> Queue:
    """The ingest queue as Celery routes to it (exchange and routing key = its name)."""
    arguments = dead_letter_arguments(name) if dead_letter_exchange else None
    return IngestQueue(name, Exchange(name, type="direct"), routing_key=name, durable=True, queue_arguments=arguments)


class TolerantQueues(Queues):
    """Queues Celery creates on demand (``send_task(queue=...)``) are TolerantQueues."""

    def new_missing(self, name: str) -> Queue:
        queue = super().new_missing(name)
        return TolerantQueue(
            queue.name, queue.exchange, queue.routing_key,
            queue_arguments=queue.queue_arguments, durable=queue.durable,
        )  # fmt: skip


class TolerantAMQP(AMQP):
    """``Celery(..., amqp=AMQP_CLASS)``: on-demand queues are TolerantQueues."""

    queues_cls = TolerantQueues


AMQP_CLASS = "tasks.broker:TolerantAMQP"


# --- parking and moving back ------------------------------------------------------------


def _properties(message: Message) -> dict[str, Any]:
    properties = dict(message.properties or {})
    kept = {key: properties[key] for key in ("correlation_id", "reply_to", "priority") if properties.get(key)}
    return {
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": dict(message.headers or {}),
        "delivery_mode": 2,  # persistent
        **kept,
    }


def park(connection: Connection, queue: str, message: Message, reason: str) -> None:
    """Publish the raw message to ``<queue>.dead`` (with the reason in a header),
    over ``connection`` (a fresh one, closed here).

    Raises if the broker did not take it; the caller acknowledges the original
    only after this returned.
    """
    properties = _properties(message)
    properties["headers"][PARKED_REASON_HEADER] = reason[:PARKED_REASON_MAX_CHARS]
    target = dead_queue(queue)
    with connection as conn:
        producer = conn.Producer()
        producer.publish(
            message.body, exchange="", routing_key=target.name, declare=[target], retry=False, **properties
        )


def requeue_dead(connection: Connection, queue: str, limit: int | None = None) -> int:
    """Move the messages of ``<queue>.dead`` back to ``queue``; returns how many.

    At most the messages present at the start (and ``limit``): one that is
    parked again while this runs is not moved twice. Each is published to the
    ingest queue (with confirms on RabbitMQ) before it is acknowledged in the
    dead queue, so a failure in between leaves a copy, never none (writes are
    idempotent).
    """
    source = dead_queue(queue)
    target = ingest_queue(queue, dead_letter_exchange=True)
    moved = 0
    with connection as conn:
        channel = conn.channel()
        bound = source(channel)
        bound.declare()
        try:
            present = bound.queue_declare(passive=True)
        except ChannelError as exc:  # Redis keeps no empty list: nothing was ever parked, or all moved
            if str(exc.reply_code) != NOT_FOUND:
                raise
            return 0
        waiting = present.message_count if present is not None else None
        producer = conn.Producer()
        while (waiting is None or moved < waiting) and (limit is None or moved < limit):
            message = bound.get(no_ack=False)
            if message is None:
                break
            properties = _properties(message)
            properties["headers"].pop(PARKED_REASON_HEADER, None)
            producer.publish(message.body, exchange=queue, routing_key=queue, declare=[target], retry=False,
                             **properties)  # fmt: skip
            message.ack()
            moved += 1
    return moved
