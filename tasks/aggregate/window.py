"""The aggregator's prefetch window: how many unacknowledged messages the broker may deliver.

Everything the aggregator holds is unacknowledged, so the window bounds its
memory. It is sized in *events*: about ``WINDOW_FLUSHES`` flushes (the one
being written and the one accumulating), i.e. ``WINDOW_FLUSHES x max_events /
events per message``, at least ``WINDOW_FLUSHES`` messages and at most
``max_messages``. The message size is the mean of the last flush (the first
guess: ``PRODUCER_BATCH_SIZE``), so 10-event messages get a window of 1,000
messages and 1,000-event messages one of 10, and memory stays near
``WINDOW_FLUSHES x max_events`` decoded events whatever the producers send.
The window changes only when it is off by more than ``QOS_HYSTERESIS`` of its
size, so that a flush a little smaller than the last does not cost a
``basic.qos`` round trip.
"""

from __future__ import annotations

import math

WINDOW_FLUSHES = 2  # the flush being written + the one accumulating
QOS_HYSTERESIS = 0.2  # change the window only when it is off by more than this share


def window_for(mean_message_events: float, max_events: int, max_messages: int) -> int:
    """Messages in a window of about ``WINDOW_FLUSHES`` flushes at this message size, within the bounds."""
    wanted = math.ceil(WINDOW_FLUSHES * max_events / max(mean_message_events, 1.0))
    return max(WINDOW_FLUSHES, min(max_messages, wanted))


class PrefetchWindow:
    """The window's current size, following the message size flush by flush."""

    def __init__(self, max_events: int, max_messages: int, first_guess_events: float) -> None:
        self.max_events = max_events
        self.max_messages = max_messages
        self.mean_message_events = first_guess_events
        self.size = window_for(first_guess_events, max_events, max_messages)

    def follow(self, messages: int, events: int) -> int | None:
        """After a flush of ``messages`` messages holding ``events`` events: the new size if the window
        should change (it does at once: a window sized for big messages opens up after one flush), else None."""
        self.mean_message_events = events / max(messages, 1)
        wanted = window_for(self.mean_message_events, self.max_events, self.max_messages)
        if abs(wanted - self.size) <= QOS_HYSTERESIS * self.size:
            return None
        self.size = wanted
        return wanted
