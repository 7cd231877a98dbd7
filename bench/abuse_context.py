"""What an attack of ``bench.abuse`` can do and see: keys, HTTP, the broker, the bench database.

Every attack marks what it sends with ``marker(name)`` (in ``user_id``, a task
id or a body), so its rows and dead letters are found by that marker and by
nothing else. Each HTTP attack gets fresh keys of the attacker tenant, so the
per-key rate limit, set low for the burst attack, never answers another
attack in its place. Every response goes through ``request``, which counts
5xx as server errors of the attack that caused them.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from kombu import Connection
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from bench.abuse_core import Tally
from bench.abuse_stack import RawResponse, RssSampler, WebProcess, raw_post
from bench.harness import REPO_ROOT, queue_depth
from config.settings import Settings
from storage import api_keys
from storage.partitions import Month, existing_months
from tasks.broker import DEAD_QUEUE_SUFFIX

HTTP_TIMEOUT_S = 30.0
MARKER_PREFIX = "abuse-"
RAW_CONTROLS = frozenset(b"\x1b\x07\x08\r\x00")  # bytes that repaint a terminal or forge a line


class AttackContext:
    def __init__(
        self, *, settings: Settings, engine: Engine, web: WebProcess, rss: RssSampler, broker_url: str,
        queue: str, attacker: str, victim: str, victim_plan: list[dict[str, Any]],
    ) -> None:  # fmt: skip
        self.settings = settings
        self.engine = engine
        self.web = web
        self.rss = rss
        self.queue = queue
        self.attacker = attacker
        self.victim = victim
        self.victim_plan = victim_plan  # the victim's normal events: event_id and timestamp of each
        self.tally = Tally()
        self.http = httpx.Client(base_url=web.url, timeout=HTTP_TIMEOUT_S)
        self._broker = Connection(broker_url, connect_timeout=10)
        self._broker_url = broker_url
        self.victim_key = self.new_key(victim)
        self.admin_key = self.new_key(None, admin=True)

    def close(self) -> None:
        self.http.close()
        self._broker.release()

    # --- keys -------------------------------------------------------------------------

    def new_key(self, tenant: str | None, *, admin: bool = False, name: str = "abuse") -> str:
        with Session(self.engine) as session, session.begin():
            _row, key = api_keys.create_key(session, name=name, tenant_id=tenant, admin=admin)
        return key

    def attacker_key(self, name: str) -> str:
        return self.new_key(self.attacker, name=f"abuse {name}")

    def revoked_key(self) -> str:
        key = self.attacker_key("revoked")
        with Session(self.engine) as session, session.begin():
            api_keys.revoke(session, key.split("_")[1])
        return key

    def expired_key(self, expired_at: datetime) -> str | None:
        """A key of the attacker whose expiry has passed; None if keys have no expiry.

        ``create_key`` takes only a future expiry, so the key is made to expire
        in a day and its expiry then set to ``expired_at``: the day has passed.
        """
        if "expires_at" not in inspect.signature(api_keys.create_key).parameters:
            return None
        with Session(self.engine) as session, session.begin():
            row, key = api_keys.create_key(session, name="abuse expired", tenant_id=self.attacker,
                                           expires_at=datetime.now(UTC) + timedelta(days=1))  # fmt: skip
            session.execute(
                text("UPDATE api_keys SET expires_at = :at WHERE id = :id"), {"at": expired_at, "id": row.id}
            )
        return key

    # --- HTTP -------------------------------------------------------------------------

    def request(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        response = self.http.request(method, path, headers=headers, **kwargs)
        self.tally.saw(response.status_code)
        return response

    def post_events(self, key: str | None, events: list[dict[str, Any]]) -> httpx.Response:
        return self.request("POST", "/v1/events", key, json={"events": events})

    def raw_post(self, path: str, key: str | None, body_size: int, **kwargs: Any) -> RawResponse:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = raw_post(self.web.url, path, headers, body_size, **kwargs)
        if response.status is not None:
            self.tally.saw(response.status)
        return response

    # --- broker -----------------------------------------------------------------------

    def publish_raw(self, body: bytes, *, content_type: str, content_encoding: str = "utf-8",
                    headers: dict[str, Any] | None = None) -> None:  # fmt: skip
        """Bytes straight onto the ingest queue (default exchange; the worker declared the queue)."""
        self._broker.Producer().publish(body, routing_key=self.queue, exchange="", retry=True,
                                        content_type=content_type, content_encoding=content_encoding,
                                        headers=headers or {})  # fmt: skip

    def send_task(self, name: str, args: list[Any] | None = None, kwargs: dict[str, Any] | None = None,
                  task_id: str | None = None) -> str:  # fmt: skip
        """A Celery task message (Celery's own builder) onto the ingest queue; its task id."""
        from tasks.app import app

        task_id = task_id or str(uuid.uuid4())
        message = app.amqp.as_task_v2(task_id, name, args or [], kwargs or {})
        self._broker.Producer().publish(message.body, routing_key=self.queue, exchange="", retry=True,
                                        serializer="json", headers=message.headers,
                                        **message.properties)  # fmt: skip
        return task_id

    # --- what the stack stored -----------------------------------------------------------

    @staticmethod
    def marker(name: str) -> str:
        """``abuse-<name>.``: the dot ends it, so no attack's marker is a prefix of another's."""
        return f"{MARKER_PREFIX}{name}."

    def _scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar_one()

    def rows(self, marker: str, tenant: str | None = None) -> int:
        """Events stored whose user_id starts with ``marker`` (in ``tenant``, or anywhere)."""
        sql = "SELECT count(*) FROM analytics_events WHERE user_id LIKE :m"
        if tenant is None:
            return int(self._scalar(sql, m=f"{marker}%"))
        return int(self._scalar(sql + " AND tenant_id = :t", m=f"{marker}%", t=tenant))

    def dead_letters(self, marker: str, reason_like: str = "%") -> int:
        return int(self._scalar("SELECT count(*) FROM dead_letters WHERE payload LIKE :m AND reason ILIKE :r",
                                m=f"%{marker}%", r=reason_like))  # fmt: skip

    def dead_letter_reasons(self, marker: str, limit: int = 3) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(
                text("SELECT reason FROM dead_letters WHERE payload LIKE :m ORDER BY id LIMIT :n"),
                {"m": f"%{marker}%", "n": limit},
            ).scalars())  # fmt: skip

    def distinct_names(self, tenant: str, column: str) -> int:
        if column not in ("feature_name", "model"):
            raise ValueError(column)
        return int(self._scalar(f"SELECT count(DISTINCT {column}) FROM analytics_events WHERE tenant_id = :t",
                                t=tenant))  # fmt: skip

    def rollup_rows(self) -> int:
        return int(self._scalar("SELECT (SELECT count(*) FROM rollup_hourly) + (SELECT count(*) FROM rollup_daily)"))

    def parked(self) -> int | None:
        """Messages the worker parked on ``<queue>.dead`` (kept with their reason, not dead-lettered)."""
        return queue_depth(self._broker_url, f"{self.queue}{DEAD_QUEUE_SUFFIX}")

    def operator_output(self, *args: str) -> bytes:
        """What ``python -m cli <args>`` prints to an operator's terminal (stdout and stderr)."""
        done = subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO_ROOT, capture_output=True, timeout=120,
                              check=False)  # fmt: skip
        return done.stdout + done.stderr

    def months(self) -> set[Month]:
        with self.engine.connect() as conn:
            return existing_months(conn)
