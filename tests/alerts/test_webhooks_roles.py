"""Webhooks under least privilege: each process's role does its part and no more.

A database of its own is migrated with roles (a prefix unique to this run).
Connected as the web role, a webhook is added, listed and deleted (its log with
it) through alerts.webhooks, but its secret cannot be read back; connected as
the worker role, the dispatcher adds and claims deliveries and an attempt
signs with the secret and logs the answer, but the worker cannot delete a
webhook. The database and roles are dropped at the end.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import sessionmaker

from alerts.delivery import attempt, dispatch
from alerts.signing import SIGNATURE_HEADER, verify
from alerts.url_safety import UrlPolicy
from alerts.webhooks import create_webhook, delete_webhook, list_webhooks
from config import Settings
from devtools.webhook_receiver import WebhookReceiver
from storage.db import make_engine
from storage.migrate import migrate, migrate_with_roles
from storage.roles import OWNER, WEB, WORKER, RoleNames, drop_roles

INSUFFICIENT_PRIVILEGE = "42501"
LOCAL = UrlPolicy(allow_http=True, allow_private=True)


@dataclass
class RolesDb:
    url: str
    names: RoleNames

    def engine_as(self, role: str) -> Engine:
        url = make_url(self.url).set(username=role).render_as_string(hide_password=False)
        return make_engine(Settings(database_url=url))


@pytest.fixture(scope="module")
def roles_db(database_url: str) -> Iterator[RolesDb]:
    url = make_url(database_url)
    name = f"{url.database}_whroles"
    names = RoleNames.from_prefix(f"w{uuid.uuid4().hex[:10]}")
    target = url.set(database=name).render_as_string(hide_password=False)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    try:
        migrate(target)
        migrate_with_roles(target, names, {OWNER: None, WORKER: None, WEB: None})
        yield RolesDb(target, names)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            drop_roles(conn, names)
        admin.dispose()


def refused(engine: Engine, sql: str) -> str:
    with pytest.raises(ProgrammingError) as error, engine.begin() as conn:
        conn.execute(text(sql))
    return getattr(error.value.orig, "pgcode", "")


def test_web_manages_webhooks_blind_to_secrets_and_the_worker_delivers(roles_db: RolesDb) -> None:
    web, worker = roles_db.engine_as(roles_db.names.web), roles_db.engine_as(roles_db.names.worker)
    superuser = create_engine(roles_db.url)
    receiver = WebhookReceiver()
    receiver.start()
    tenant = f"roles-{uuid.uuid4().hex[:6]}"
    try:
        with sessionmaker(web).begin() as session:
            created = create_webhook(session, tenant, receiver.url, "json", policy=LOCAL, max_per_tenant=3)
        with sessionmaker(web)() as session:
            assert [w.id for w in list_webhooks(session, tenant)] == [created.webhook.id]
        assert refused(web, "SELECT secret FROM webhooks") == INSUFFICIENT_PRIVILEGE
        assert refused(web, "UPDATE deliveries SET status = 'delivered'") == INSUFFICIENT_PRIVILEGE

        with superuser.begin() as conn:  # the evaluator's part (alerts.evaluate), not under test here
            conn.execute(
                text(
                    "INSERT INTO notifications (tenant_id, id, rule_id, kind, state, payload)"
                    " VALUES (:t, :id, 1, 'reminder', 'warning', CAST(:p AS jsonb))"
                ),
                {"t": tenant, "id": uuid.uuid4(), "p": json.dumps({})},
            )
        settings = Settings(webhook_allow_http=True, webhook_allow_private_addresses=True)
        keys = [key for key in dispatch(worker, settings).due if key.tenant_id == tenant]
        assert [attempt(worker, key, settings).status for key in keys] == ["delivered"]
        [got] = receiver.received
        assert verify(created.secret, got.body, got.headers[SIGNATURE_HEADER]) > 0
        assert refused(worker, "DELETE FROM webhooks") == INSUFFICIENT_PRIVILEGE

        with sessionmaker(web).begin() as session:
            assert delete_webhook(session, tenant, created.webhook.id)
        with superuser.connect() as conn:
            assert (
                conn.execute(text("SELECT count(*) FROM deliveries WHERE tenant_id = :t"), {"t": tenant}).scalar() == 0
            )
    finally:
        receiver.stop()
        for engine in (web, worker, superuser):
            engine.dispose()
