"""``analytics webhooks``: add (secret printed once, refused URLs name --url), list, the delivery log, delete."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text

from alerts.delivery import attempt, dispatch
from cli.main import cli
from config import get_settings


@pytest.fixture
def local_allowed(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[None]:
    monkeypatch.setenv("WEBHOOK_ALLOW_HTTP", "true")
    monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE_ADDRESSES", "true")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_add_list_deliveries_delete(engine: Engine, tenant: str, local_allowed: None) -> None:
    code, out = run("webhooks", "add", "--tenant", tenant, "--url", "http://127.0.0.1:9/hook", "--format", "slack")
    assert code == 0, out
    added = re.match(r"added webhook (\d+) for tenant ", out)
    assert added is not None, out
    webhook_id = int(added.group(1))
    assert "signing secret (shown once): whsec_" in out
    code, out = run("webhooks", "list", "--tenant", tenant)
    assert code == 0 and "http://127.0.0.1:9/hook" in out and "slack" in out and "whsec_" not in out

    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO notifications (tenant_id, id, rule_id, kind, state, payload)"
                " VALUES (:t, :id, 1, 'reminder', 'warning', CAST(:p AS jsonb))"
            ),
            {"t": tenant, "id": uuid.uuid4(), "p": json.dumps({})},
        )
    settings = get_settings()
    for key in dispatch(engine, settings).due:
        if key.tenant_id == tenant:
            attempt(engine, key, settings)  # port 9: nothing listens, the attempt fails
    code, out = run("webhooks", "deliveries", "--tenant", tenant, "--status", "failed")
    assert code == 0 and " failed " in out and "ConnectionRefusedError" in out, out

    assert run("webhooks", "delete", "--tenant", tenant, str(webhook_id)) == (0, f"deleted webhook {webhook_id}\n")
    code, out = run("webhooks", "delete", "--tenant", tenant, str(webhook_id))
    assert code == 1 and "has no webhook" in out
    assert run("webhooks", "list", "--tenant", tenant) == (0, f"no webhooks for tenant {tenant}\n")


def test_a_refused_url_names_the_option(database_url: str, tenant: str) -> None:
    code, out = run("webhooks", "add", "--tenant", tenant, "--url", "https://127.0.0.1/hook")
    assert code == 2 and "--url" in out and "loopback" in out, out
    code, out = run("webhooks", "add", "--tenant", tenant, "--url", "ftp://example.com/x")
    assert code == 2 and "https" in out
