"""Step 1 of the aggregator: a broker message, decoded into what one flush will write.

``decode`` runs in the consumer's thread, once per message, and never raises:
what cannot be stored becomes a dead letter. The body's size is checked before
it is parsed, the row count before the rows are. A message that is not an
``ingest.write_batch`` task at all is one dead letter of source ``queue`` (the
raw message, with the reasons of schema.reasons that tasks.consumer uses too);
its invalid rows are dead letters of source ``worker``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kombu.message import Message

from schema.message import decode_message
from storage.dead_letters import SOURCE_QUEUE
from storage.flush import Flush
from tasks.admission import kept_chars, oversized, raw_payload, task_argument


@dataclass
class Received:
    """One broker message, decoded: its valid rows and what goes to dead_letters."""

    message: Message
    flush: Flush
    received_at: float = field(default_factory=time.monotonic)

    @property
    def events(self) -> int:
        return self.flush.events


def decode(message: Message, max_bytes: int, max_rows: int, refusal: str | None = None) -> Received:
    """The message's flush; ``refusal``, when given, dead-letters it whole for that reason."""
    argument, keep_chars = None, None
    if refusal is None and (refusal := oversized(message, max_bytes)) is not None:
        keep_chars = kept_chars(max_bytes)
    if refusal is None:
        argument, refusal = task_argument(message)
    if refusal is not None:
        payload = raw_payload(message, keep_chars)
        return Received(message, Flush.refused_whole(payload, refusal, SOURCE_QUEUE))
    return Received(message, Flush.decoded(decode_message(argument, max_rows=max_rows)))
