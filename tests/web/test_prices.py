"""Admin price API: list, create (422 naming the field, 409 without replace, warnings), history; admin keys only."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from storage.api_keys import create_key


@pytest.fixture(scope="module")
def keys(engine: Engine) -> dict[str, str]:
    with Session(engine) as session, session.begin():
        _, admin = create_key(session, name="prices admin", tenant_id=None, admin=True)
        _, tenant = create_key(session, name="prices tenant", tenant_id=f"t-{uuid.uuid4().hex[:8]}", admin=False)
    return {"admin": admin, "tenant": tenant}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def body(model: str, **fields: object) -> dict[str, object]:
    return {"model_pattern": model, "input_per_mtok": "1.25", "output_per_mtok": "5", "effective_from": "2024-01-01",
            "reason": "negotiated", **fields}  # fmt: skip


def test_tenant_keys_are_refused(client: TestClient, keys: dict[str, str]) -> None:
    assert client.get("/api/admin/prices", headers=auth(keys["tenant"])).status_code == 403
    assert client.post("/api/admin/prices/overrides", json=body("x"), headers=auth(keys["tenant"])).status_code == 403


def test_create_conflict_replace_and_history(client: TestClient, keys: dict[str, str]) -> None:
    model = f"api-model-{uuid.uuid4().hex[:8]}"
    created = client.post("/api/admin/prices/overrides", json=body(model), headers=auth(keys["admin"]))
    assert created.status_code == 201, created.text
    assert created.json()["warnings"], "no model of that name was seen"
    again = client.post(
        "/api/admin/prices/overrides", json=body(model, input_per_mtok="2"), headers=auth(keys["admin"])
    )
    assert again.status_code == 409
    fixed = client.post(
        "/api/admin/prices/overrides", json=body(model, input_per_mtok="2", replace=True), headers=auth(keys["admin"])
    )
    assert fixed.status_code == 201 and fixed.json()["superseded_id"] == created.json()["id"]
    rows = client.get("/api/admin/prices/history", params={"model": model}, headers=auth(keys["admin"])).json()
    assert [r["input_per_mtok"] for r in rows] == ["2", "1.25"]  # strings: exact decimals
    assert rows[1]["superseded_by"] == fixed.json()["id"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"input_per_mtok": "-3"}, "input_per_mtok"), ({"call_fee": "11"}, "call_fee"), ({"reason": ""}, "reason"),
     ({"output_per_mtok": "Infinity"}, "output_per_mtok")],
)  # fmt: skip
def test_bad_input_is_422_naming_the_field(
    client: TestClient, keys: dict[str, str], fields: dict[str, str], field: str
) -> None:
    answer = client.post("/api/admin/prices/overrides", json=body("gpt-4o", **fields), headers=auth(keys["admin"]))
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", field]


def test_list_shows_rates_as_strings(client: TestClient, keys: dict[str, str]) -> None:
    answer = client.get("/api/admin/prices", headers=auth(keys["admin"]))
    assert answer.status_code == 200
    for row in answer.json():
        assert row["rates"] is None or isinstance(row["rates"]["input_per_mtok"], str)
    assert "/api/admin/prices" in client.app.openapi()["paths"]  # type: ignore[attr-defined]
