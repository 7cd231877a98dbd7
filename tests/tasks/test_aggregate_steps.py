"""The aggregator's pure steps, in process: the accumulator and the prefetch window (tasks.aggregate)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tasks.aggregate.accumulator import Accumulator
from tasks.aggregate.window import QOS_HYSTERESIS, WINDOW_FLUSHES, PrefetchWindow, window_for

MAX_EVENTS = 100
MAX_WAIT_S = 1.0


@dataclass
class Held:
    """A decoded message as the accumulator sees it."""

    events: int
    received_at: float = 0.0


def filled(*sizes: int, at: float = 0.0) -> Accumulator[Held]:
    buffer: Accumulator[Held] = Accumulator(MAX_EVENTS, MAX_WAIT_S)
    for size in sizes:
        buffer.add(Held(size, at))
    return buffer


def test_an_empty_buffer_is_never_due_and_has_no_deadline() -> None:
    buffer = filled()
    assert not buffer.due(now=1e9, window_full=True)
    assert buffer.deadline() is None
    assert buffer.take() == []


def test_due_once_max_events_are_held() -> None:
    buffer = filled(60)
    assert not buffer.due(now=0.5, window_full=False)
    buffer.add(Held(40, 0.1))
    assert buffer.events == MAX_EVENTS
    assert buffer.due(now=0.5, window_full=False)


def test_due_once_the_oldest_message_waited_max_wait() -> None:
    buffer = filled(1, at=10.0)
    buffer.add(Held(1, 10.5))
    assert buffer.deadline() == 10.0 + MAX_WAIT_S  # the oldest message's, not the newest's
    assert not buffer.due(now=10.0 + MAX_WAIT_S - 0.01, window_full=False)
    assert buffer.due(now=10.0 + MAX_WAIT_S, window_full=False)


def test_due_when_the_broker_will_deliver_no_more() -> None:
    assert filled(1).due(now=0.0, window_full=True)


def test_take_is_the_oldest_prefix_of_at_most_max_events() -> None:
    buffer = filled(40, 40, 40)
    first = buffer.take()
    assert [item.events for item in first] == [40, 40]
    assert buffer.events == 40 and len(buffer) == 1


def test_take_keeps_delivery_order_even_when_a_later_message_would_fit() -> None:
    buffer = filled(60, 50, 10)
    assert [item.events for item in buffer.take()] == [60]
    assert [item.events for item in buffer.take()] == [50, 10]
    assert buffer.events == 0


def test_take_holds_at_least_one_message_however_large() -> None:
    buffer = filled(MAX_EVENTS * 3, 1)
    assert [item.events for item in buffer.take()] == [MAX_EVENTS * 3]
    assert buffer.events == 1


def test_clear_drops_everything_held() -> None:
    buffer = filled(5, 6, 7)
    assert buffer.clear() == 3
    assert buffer.events == 0 and len(buffer) == 0 and buffer.deadline() is None


def test_window_is_about_two_flushes_of_events() -> None:
    assert window_for(10, max_events=5_000, max_messages=1_000) == WINDOW_FLUSHES * 5_000 // 10
    assert window_for(1_000, max_events=5_000, max_messages=1_000) == WINDOW_FLUSHES * 5_000 // 1_000
    assert window_for(3, max_events=10, max_messages=1_000) == math.ceil(WINDOW_FLUSHES * 10 / 3)


def test_window_bounds() -> None:
    assert window_for(1, max_events=5_000, max_messages=1_000) == 1_000  # capped
    assert window_for(1_000_000, max_events=5_000, max_messages=1_000) == WINDOW_FLUSHES  # never below two
    assert window_for(0, max_events=5, max_messages=1_000) == WINDOW_FLUSHES * 5  # empty messages count as one event


def test_window_follows_the_message_size_beyond_its_hysteresis() -> None:
    window = PrefetchWindow(max_events=5_000, max_messages=1_000, first_guess_events=1_000)
    assert window.size == 10
    assert window.follow(messages=10, events=100) == 1_000  # small messages: opens up after one flush
    assert window.mean_message_events == 10
    within = window_for(11, max_events=5_000, max_messages=1_000)  # 910 messages: off by less than the hysteresis
    assert abs(within - 1_000) <= QOS_HYSTERESIS * 1_000
    assert window.follow(messages=1_000, events=1_000 * 11) is None
    assert window.size == 1_000
    assert window.follow(messages=500, events=500 * 20) == 500
    assert window.size == 500
