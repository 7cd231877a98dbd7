"""Aggregating ingest consumer: many small broker messages, one large transaction.

``python -m tasks.aggregator`` (the Procfile's ``worker`` with
``INGEST_MODE=aggregate``) consumes the same queue (``INGEST_QUEUE``) and the
same Celery task messages (``ingest.write_batch``, protocol 2, or 1) as the
Celery worker, but it does not run one transaction per message: it combines
the messages it holds into one ``store_batch`` transaction of up to
``INGEST_AGGREGATE_MAX_EVENTS`` events, and acknowledges every one of them
only after that commit. Whatever the producers send (a web process flushing
10 events every 200 ms, hundreds of them), the database sees few large
transactions.

Why a consumer of its own and not a Celery batching strategy. Buffering
Celery ``Request`` objects in the worker's main process and handing one job per
buffer to the pool (what celery-batches does) fights Celery on every
guarantee: its acks are per request and tied to the task's own outcome
(celery-batches acks before the run, or acks a failed batch), the flush
timer is lost on a broker reconnect, and a pool child killed mid-batch must
requeue many requests at once. Here one loop
owns the messages from delivery to acknowledgement, so each step is a few
lines with one contract (in the style of getsentry/arroyo):

1. **decode** (tasks.aggregate.received, main thread, per message, never
   raises): broker message → Celery task call (schema.task_message, protocol 2
   or 1, as the Celery worker reads it) → ``schema.message.decode_message``:
   valid rows, and dead letters for invalid rows (source ``worker``) or for a
   message that is not an ``ingest.write_batch`` task at all (source ``queue``,
   the raw message, with the reasons of schema.reasons that tasks.consumer uses
   too: could not be decoded, not a Celery task message, unknown task, invalid
   task message, too large).
2. **accumulate** (tasks.aggregate.accumulator): holds decoded messages, in
   delivery order, until a flush is due: ``INGEST_AGGREGATE_MAX_EVENTS`` events
   reached, the oldest message waited ``INGEST_AGGREGATE_MAX_WAIT_MS``, or the
   broker will not deliver more (the prefetch window is full). A flush takes a
   prefix of at most MAX_EVENTS events (at least one message).
3. **write + commit** (tasks.aggregate.writer, one writer thread): the rows of
   all the flushed messages and their dead letters in ONE transaction, by the
   ingest unit of work the Celery task uses too
   (``storage.flush.commit_flush``: ``storage.events.store_batch``'s dedupe,
   partitions on demand, bisection of bad rows, one rollup batch; the metrics
   counted once it committed). Any error that is not about the rows (database
   down, deadlock, bug) is retried with exponential backoff and jitter
   (``INGEST_RETRY_MAX_S``), forever, while the messages stay unacknowledged:
   never acked as done. An error caused by what a message holds
   (tasks.failures: one the dead-letter insert itself refuses) is tried
   ``POISON_ATTEMPTS`` times, then the flush is written message by message and
   the message that still fails is parked on ``<queue>.dead`` (tasks.broker),
   logged and counted; its flush-mates are stored.
4. **ack** (tasks.aggregate.consumer, main thread): only after the commit,
   every message of the flush (a parked one: after the broker confirmed the
   parked copy). If the broker connection was lost meanwhile the acks fail and
   the broker redelivers the messages; the writes are idempotent, so the
   redelivery is stored as duplicates, dropped.

Nothing is acknowledged before its rows and dead letters commit; a process
killed anywhere (mid-accumulation, mid-INSERT, between commit and ack) leaves
its messages unacknowledged, so the broker redelivers them (RabbitMQ at once,
Redis after ``REDIS_VISIBILITY_TIMEOUT_S``) and ``store_batch`` drops what
was already stored.

Pipelining and heartbeats. The main thread does only broker I/O, decoding
and acks; the writer thread does the database. While flush N is written,
flush N+1 accumulates, so decoding overlaps the database's work. The main
thread keeps draining the connection while a write waits (on a lock, or in a
retry backoff during an outage), so AMQP heartbeats keep flowing and the
broker does not drop the connection under a long write.

Backpressure and memory: the prefetch window (tasks.aggregate.window). The
broker delivers at most ``prefetch_count`` unacknowledged messages, and that is
everything this process holds. The window is sized in *events*: about two
flushes (the one being written and the one accumulating), i.e. ``2 x MAX_EVENTS
/ events per message``, the message size being the mean of the last flush
(first guess: ``PRODUCER_BATCH_SIZE``), capped at
``INGEST_AGGREGATE_MAX_MESSAGES``, and updated with ``basic.qos`` as producers
change (channel-global on RabbitMQ, as Celery does, so the running consumer
follows it). So 10-event messages get a window of 1,000 messages and
1,000-event messages one of 10: memory stays near 2 x MAX_EVENTS decoded events
whatever the producers do (until a sudden change of message size is noticed at
the next flush, at most MAX_MESSAGES x the largest message). When the window is
full and a write is in flight, the consumer simply waits for the commit: the
broker keeps the backlog.

Stopping (SIGTERM, SIGINT): a warm stop that commits and acknowledges what is
held, described in tasks.aggregate.consumer.

Differences from the Celery task (``INGEST_MODE=task``). Task messages with an
``eta`` (the task path's own retries, left on the queue when switching modes)
are written at once. Any task other than ``ingest.write_batch`` on the ingest
queue is dead-lettered, not run.

RabbitMQ only. The aggregator holds many messages unacknowledged for a flush
interval plus a write; Redis' transport redelivers whatever is held longer
than its visibility timeout, so on Redis a slow write turns into a stream of
redeliveries (stored once, but written again and again), and after a kill the
redelivery waited on kombu's restore sweep for longer than our tests allow.
With a ``redis://`` broker it refuses to start; use ``INGEST_MODE=task``.
"""
