"""Per-API-key rate limits (the ``limits`` library, moving window).

RATE_LIMIT_INGEST covers ``POST /v1/events``, RATE_LIMIT_READ every tenant read
route; both in the library's notation (``100/second;3000/minute``). Counters
are keyed by the key's id, after authentication (an unknown key is a 401 and
counts nowhere) and before the body is read. A request over a limit is
answered 429 with ``Retry-After`` (whole seconds, at least 1) and a detail
naming the limit and its setting. RATE_LIMIT_STORAGE_URL keeps the counters:
``memory://`` is per web process (with N uvicorn workers a key gets up to N
times the limit), ``redis://host:port/db`` is shared by all of them. When the
storage cannot be reached, limited routes answer 503 rather than go unlimited.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from config.settings import Settings
from storage.api_keys import Principal
from web.auth import ErrorDetail, principal

logger = logging.getLogger(__name__)

MIN_RETRY_AFTER_S = 1
INGEST = "ingest"
READ = "read"
SETTING_OF = {INGEST: "RATE_LIMIT_INGEST", READ: "RATE_LIMIT_READ"}

# For the OpenAPI schema of limited routes.
RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorDetail, "description": "Too many requests for this API key; retry after Retry-After seconds",
          "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}},
    503: {"model": ErrorDetail, "description": "The rate limiter's storage cannot be reached"},
}  # fmt: skip


@dataclass(frozen=True)
class Refusal:
    """Which limit a request went over, and when a retry may pass it."""

    limit: RateLimitItem
    retry_after_s: int


class RateLimits:
    """The limits of one web process, parsed once from the settings (a bad notation fails at startup)."""

    def __init__(self, settings: Settings) -> None:
        self._items: dict[str, list[RateLimitItem]] = {}
        for scope, setting in SETTING_OF.items():
            notation = getattr(settings, setting.lower())
            try:
                self._items[scope] = parse_many(notation)
            except ValueError:
                raise ValueError(
                    f"{setting}={notation!r} is not a rate limit (e.g. '100/second;3000/minute')"
                ) from None
        self._limiter = MovingWindowRateLimiter(storage_from_string(settings.rate_limit_storage_url,
                                                                    wrap_exceptions=True))  # fmt: skip

    def hit(self, scope: str, key_id: int) -> Refusal | None:
        """Count one request of the key in ``scope``; the limit it went over, if any (StorageError if unreachable)."""
        identity = str(key_id)
        for item in self._items[scope]:
            if not self._limiter.hit(item, scope, identity):
                reset_at = self._limiter.get_window_stats(item, scope, identity).reset_time
                return Refusal(item, max(MIN_RETRY_AFTER_S, math.ceil(reset_at - time.time())))
        return None


def install(app: FastAPI, settings: Settings) -> None:
    """Called from the lifespan: each web process gets its own limiter (and storage connection)."""
    app.state.rate_limits = RateLimits(settings)


def _limit(scope: str, request: Request, who: Principal) -> None:
    limits: RateLimits = request.app.state.rate_limits
    try:
        refusal = limits.hit(scope, who.key_id)
    except StorageError as exc:
        logger.error("rate limiter storage unreachable: %s", type(exc.storage_error).__name__)
        raise HTTPException(503, "the rate limiter's storage cannot be reached; retry later") from None
    if refusal is not None:
        raise HTTPException(
            429,
            f"rate limit of {refusal.limit} per API key on {scope} routes exceeded ({SETTING_OF[scope]}); "
            f"retry after {refusal.retry_after_s} s",
            {"Retry-After": str(refusal.retry_after_s)},
        )


def ingest_rate_limit(request: Request, who: Principal = Depends(principal)) -> None:
    """Dependency of the ingest routes: RATE_LIMIT_INGEST for the calling key."""
    _limit(INGEST, request, who)


def read_rate_limit(request: Request, who: Principal = Depends(principal)) -> None:
    """Dependency of the tenant read routes: RATE_LIMIT_READ for the calling key."""
    _limit(READ, request, who)
