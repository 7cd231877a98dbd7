"""One retry policy: capped exponential backoff, and a call retried on chosen errors.

A small helper rather than tenacity: two of its four users do not retry a call
(Celery's countdown is a pure function of the retry number; the producer's
publishing thread must keep waking to spool and to notice shutdown), and
tenacity's waits need its RetryCallState and its Retrying owns the sleep.

A top-level package because producer/, tasks/ and storage/ all use it and none
of them may import another for it (config/ is about settings).

Contract: ``Backoff.delay(n)`` is in [0, cap_s] for any integer n, negative or
huge (the exponent is capped, so ``2**n`` never overflows a float), and
``call_with_retry`` makes at most ``attempts`` calls, then raises the last error.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["MAX_EXPONENT", "Backoff", "call_with_retry"]

# 2.0**64 is about 1.8e19: any base above cap_s / 1.8e19 reaches its cap first,
# and a float overflows only at 2.0**1024 (about 8.5 h of Celery retries at a 30 s mean).
MAX_EXPONENT = 64

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Pause before retry ``n`` (0 for the first): ``base_s * 2**n``, at most ``cap_s``.

    With ``jitter`` (full jitter) the pause is uniform in [0, that], so clients
    retrying after the same outage spread out instead of returning together.
    """

    base_s: float
    cap_s: float
    jitter: bool = True

    def __post_init__(self) -> None:
        if not self.base_s > 0:
            raise ValueError(f"base_s must be positive, got {self.base_s}")
        if not self.cap_s >= 0:
            raise ValueError(f"cap_s must not be negative, got {self.cap_s}")

    def delay(self, retry: int) -> float:
        exponent = min(max(retry, 0), MAX_EXPONENT)
        ceiling = min(self.cap_s, self.base_s * 2.0**exponent)
        return random.uniform(0.0, ceiling) if self.jitter else ceiling


def call_with_retry(
    action: Callable[[], T],
    *,
    attempts: int,
    retryable: Callable[[Exception], bool],
    backoff: Backoff,
    on_retry: Callable[[Exception, int, float], None] | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Call ``action`` up to ``attempts`` times; return its first result.

    An exception for which ``retryable`` is true is followed by a pause of
    ``backoff.delay(retry)`` and another call, except after the last attempt,
    when it propagates (the caller may translate it). Any other exception
    propagates at once. ``on_retry(exc, attempt, pause)`` runs before each pause
    (``attempt`` counts from 1), for the caller's log line.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            if attempt == attempts or not retryable(exc):
                raise
            pause = backoff.delay(attempt - 1)
            if on_retry is not None:
                on_retry(exc, attempt, pause)
            sleep(pause)
    raise AssertionError("unreachable")  # the last attempt returned or raised
