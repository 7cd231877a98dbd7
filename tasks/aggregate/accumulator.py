"""Step 2 of the aggregator: hold decoded messages until a flush is due.

A flush is due when ``max_events`` events are held, when the oldest message
has waited ``max_wait_s``, or when the broker will deliver no more (the
prefetch window is full: tasks.aggregate.window). A flush takes the oldest
messages, in delivery order, up to ``max_events`` events, and at least one
message however large, so that a message bigger than a flush still goes.
Pure bookkeeping: no I/O, no clock of its own (the caller passes ``now``).
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Protocol, TypeVar


class Held(Protocol):
    """What the accumulator needs to know of a message: its events and when it arrived (monotonic s)."""

    @property
    def events(self) -> int: ...

    @property
    def received_at(self) -> float: ...


T = TypeVar("T", bound=Held)


class Accumulator(Generic[T]):
    """Messages in delivery order, until a flush is due."""

    def __init__(self, max_events: int, max_wait_s: float) -> None:
        self.max_events = max_events
        self.max_wait_s = max_wait_s
        self._items: deque[T] = deque()
        self.events = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> None:
        self._items.append(item)
        self.events += item.events

    def deadline(self) -> float | None:
        """When the oldest message has waited long enough (monotonic), None if empty."""
        return self._items[0].received_at + self.max_wait_s if self._items else None

    def due(self, now: float, window_full: bool) -> bool:
        if not self._items:
            return False
        return window_full or self.events >= self.max_events or now >= self._items[0].received_at + self.max_wait_s

    def take(self) -> list[T]:
        """The oldest messages, at most ``max_events`` events (but at least one message)."""
        taken: list[T] = []
        events = 0
        while self._items and (not taken or events + self._items[0].events <= self.max_events):
            item = self._items.popleft()
            taken.append(item)
            events += item.events
        self.events -= events
        return taken

    def clear(self) -> int:
        """Drop everything held (the broker redelivers it); returns how many messages."""
        dropped = len(self._items)
        self._items.clear()
        self.events = 0
        return dropped
