"""Producer client for web processes: ``from producer import track``.

``track(...)`` and ``flush(...)`` use one Tracker per process, created on first
use with the settings from the environment. Create a ``Tracker`` yourself to
use other settings.
"""

from __future__ import annotations

import threading
from typing import Any

from producer.client import Tracker, TrackerStats

__all__ = ["Tracker", "TrackerStats", "flush", "get_tracker", "track"]

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
