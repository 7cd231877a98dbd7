"""``bench.cost``'s reprice measurement against a real web process.

The Procfile's web process (bench.abuse_stack.WebProcess: ``sh`` runs the
``web:`` line, uvicorn and its workers, on a spare port, in a process group
that ``stop`` kills whole) serves the bench database. A tenant key reads
``GET /api/tenants/{t}/cost?group_by=total``; the clock starts before the
price change's transaction and stops at the first answer whose total cost
differs from the one before the change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from bench.abuse_stack import WebProcess
from storage import api_keys

HTTP_TIMEOUT_S = 30.0
KEY_NAME = "bench.cost"


def total_cost(http: httpx.Client, key: str, tenant: str, start: datetime, end: datetime) -> str | None:
    """The API's total cost of the range (a decimal string, or None when nothing is priced)."""
    response = http.get(
        f"/api/tenants/{tenant}/cost",
        params={"start": start.isoformat(), "end": end.isoformat(), "group_by": "total"},
        headers={"Authorization": f"Bearer {key}"},
    )
    response.raise_for_status()
    total = response.json()["total"]
    return None if total is None else total["cost_usd"]


def reprice_visible(engine: Engine, database_url: str, workdir: Path, tenant: str, start: datetime, end: datetime,
                    change: Callable[[Session], None], timeout_s: float) -> float:  # fmt: skip
    """Seconds from the start of ``change``'s transaction until the API answers a different total cost."""
    with Session(engine) as session, session.begin():
        _row, key = api_keys.create_key(session, name=KEY_NAME, tenant_id=tenant)
    web = WebProcess(workdir, {"DATABASE_URL": database_url, "WEB_DATABASE_URL": "",
                               "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
                               "PRODUCER_SPOOL_DIR": str(workdir / "spool")})  # fmt: skip
    (workdir / "metrics").mkdir(exist_ok=True)
    web.start_ready()
    try:
        with httpx.Client(base_url=web.url, timeout=HTTP_TIMEOUT_S) as http:
            before = total_cost(http, key, tenant, start, end)
            total_cost(http, key, tenant, start, end)  # both workers may have answered once: warm
            started = time.monotonic()
            with Session(engine) as session, session.begin():
                change(session)
            polls = 0
            while time.monotonic() - started < timeout_s:
                polls += 1
                if total_cost(http, key, tenant, start, end) != before:
                    return time.monotonic() - started
            raise SystemExit(
                f"bench: the API still answered the old cost {before} after {timeout_s:g}s ({polls} polls)"
            )
    finally:
        web.stop()
