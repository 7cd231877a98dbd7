"""A cached budget check for app code: ``BudgetCheck(url, key).allows(feature)`` before an expensive call.

It asks the analytics web process's ``GET /v1/budget`` (the tenant of the key)
at most once per ``ttl_s`` per feature, so a hot path pays a dictionary lookup.
The answer is the alert evaluator's last measurement, at most
ALERT_EVALUATE_INTERVAL_S old. Standard library only (``urllib``), so apps need
no HTTP client for it. When the service cannot be asked, ``allows`` follows
``fail_open`` (default True: an analytics outage should not stop the product)
and logs once per failure; ``budgets`` raises BudgetUnavailable.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_TTL_S = 30.0
DEFAULT_TIMEOUT_S = 2.0
BUDGET_PATH = "/v1/budget"


class BudgetUnavailable(Exception):
    """The budget service did not answer, or answered something other than 200 with JSON."""


@dataclass(frozen=True)
class Budgets:
    """What ``GET /v1/budget`` answered: ``exhausted`` and each budget's figures (amounts as decimal strings)."""

    exhausted: bool
    budgets: list[dict[str, Any]]
    fetched_at: float


class BudgetCheck:
    """Thread-safe; one per process is enough (it caches per feature)."""

    def __init__(self, base_url: str, api_key: str, *, ttl_s: float = DEFAULT_TTL_S,
                 timeout_s: float = DEFAULT_TIMEOUT_S, fail_open: bool = True) -> None:  # fmt: skip
        self._url = base_url.rstrip("/") + BUDGET_PATH
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._ttl_s, self._timeout_s, self._fail_open = ttl_s, timeout_s, fail_open
        self._cache: dict[str | None, Budgets] = {}
        self._lock = threading.Lock()

    def budgets(self, feature: str | None = None) -> Budgets:
        """The budgets covering ``feature`` (all of the tenant's when None), from the cache while fresh."""
        with self._lock:
            cached = self._cache.get(feature)
        if cached is not None and time.monotonic() - cached.fetched_at < self._ttl_s:
            return cached
        fresh = self._fetch(feature)
        with self._lock:
            self._cache[feature] = fresh
        return fresh

    def allows(self, feature: str | None = None) -> bool:
        """False when a budget covering ``feature`` is exhausted; ``fail_open`` when the service cannot say."""
        try:
            return not self.budgets(feature).exhausted
        except BudgetUnavailable as exc:
            logger.warning("budget check failed (%s); %s", exc, "allowing" if self._fail_open else "refusing")
            return self._fail_open

    def _fetch(self, feature: str | None) -> Budgets:
        url = self._url if feature is None else f"{self._url}?{urllib.parse.urlencode({'feature': feature})}"
        request = urllib.request.Request(url, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise BudgetUnavailable(f"{BUDGET_PATH} answered {exc.code}") from None
        except (urllib.error.URLError, TimeoutError, ValueError, OSError) as exc:
            raise BudgetUnavailable(f"{BUDGET_PATH}: {exc}") from None
        try:
            return Budgets(bool(body["exhausted"]), list(body["budgets"]), time.monotonic())
        except (KeyError, TypeError) as exc:
            raise BudgetUnavailable(f"{BUDGET_PATH} answered no budgets ({exc!r})") from None
