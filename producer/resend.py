"""The messages published in the last few seconds, kept to publish again after a Redis outage.

kombu's Redis transport pops a message (BRPOP) before it records it as
unacknowledged; a worker whose connection drops between the two, as when
Redis stops, loses that message, and nothing in the broker remembers it.
Such a message was almost always published moments before the outage, so
the producer keeps what it published in the last ``window_s`` seconds and,
once a publish has failed, publishes those messages again before anything
else. Writes are idempotent (storage.events), so a copy costs only work.
RabbitMQ needs none of this: a delivered message stays queued until the
worker acknowledges it after the commit.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any


class RecentMessages:
    """Messages published in the last ``window_s`` seconds, oldest first (publishing thread only)."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._messages: deque[tuple[float, dict[str, Any], int]] = deque()

    def add(self, message: dict[str, Any], events: int) -> None:
        now = time.monotonic()
        self._messages.append((now, message, events))
        horizon = now - self._window_s
        while self._messages and self._messages[0][0] < horizon:
            self._messages.popleft()

    def before(self, outage_at: float) -> list[tuple[dict[str, Any], int]]:
        """(message, events) of each message published in the window before ``outage_at``
        (``time.monotonic()`` of the first failed publish), oldest first."""
        horizon = outage_at - self._window_s
        return [(message, events) for at, message, events in self._messages if at >= horizon]
