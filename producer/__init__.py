"""Producer client for web processes: ``from producer import track``.

``track(...)`` and ``flush(...)`` use one Tracker per process, created on first
use with the settings from the environment. Create a ``Tracker`` yourself to
use other settings.

``track_ai_call`` and ``tracked`` (producer.instrument) record calls of the
OpenAI and Anthropic clients, usage read from their responses and streams;
``BudgetCheck`` asks, cached, whether a budget still allows spending.
"""

from __future__ import annotations

import threading
from typing import Any

from producer.budget import BudgetCheck, BudgetUnavailable
from producer.client import Tracker, TrackerStats
from producer.instrument import AICall, track_ai_call, tracked
from producer.usage import Usage, usage_of

__all__ = [
    "AICall",
    "BudgetCheck",
    "BudgetUnavailable",
    "Tracker",
    "TrackerStats",
    "Usage",
    "flush",
    "get_tracker",
    "track",
    "track_ai_call",
    "tracked",
    "usage_of",
]

_default: Tracker | None = None
_default_lock = threading.Lock()


def get_tracker() -> Tracker:
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Tracker()
    return _default


def track(**event: Any) -> bool:
    return get_tracker().track(**event)


def flush(timeout: float | None = None) -> bool:
    return get_tracker().flush(timeout)
