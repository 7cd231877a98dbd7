"""Per-tenant caps on distinct feature and model names (issue 12, finding 7), against the real database.

Each test uses tenants of its own, so the per-process set of known names
(storage.tenant_names.KNOWN) and the catalog may hold other tests' names.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

from config.settings import Settings, get_settings
from schema.event import WIRE_FIELDS_V1, parse_wire_row
from storage import dead_letters
from storage.events import Row, WriteResult, store_batch
from storage.tenant_names import KNOWN, NameCaps, admit_names

CAPS = NameCaps(max_features=3, max_models=3)
THREAD_TIMEOUT_S = 30


def rows_for(tenant: str, feature: str, n: int = 2, model: str | None = "gpt-x") -> list[Row]:
    now_us = time.time_ns() // 1000
    rows = []
    for i in range(n):
        wire = [uuid.uuid4().hex, tenant, feature, f"u{i}", model, 1, 2, None, 5, "success", None, now_us - i]
        rows.append((parse_wire_row(WIRE_FIELDS_V1, wire), dict(zip(WIRE_FIELDS_V1, wire, strict=False))))
    return rows


def write(engine: Engine, rows: list[Row], caps: NameCaps = CAPS) -> WriteResult:
    with Session(engine) as session, session.begin():
        result = store_batch(session, rows, get_settings(), caps=caps)
        dead_letters.record(session, result.rejected)
    return result


def features_stored(engine: Engine, tenant: str) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                text("SELECT feature_name, count(*) FROM analytics_events WHERE tenant_id = :t GROUP BY 1"),
                {"t": tenant},
            ).all()
        )


def catalog(engine: Engine, tenant: str) -> set[tuple[str, str]]:
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT kind, name FROM tenant_names WHERE tenant_id = :t"), {"t": tenant}).all())


def test_defaults_are_the_settings() -> None:
    assert NameCaps() == NameCaps.from_settings(Settings.model_construct())


def test_a_fourth_feature_is_dead_lettered_and_the_first_three_still_store(engine: Engine, tenant: str) -> None:
    for feature in ("f1", "f2", "f3"):
        assert write(engine, rows_for(tenant, feature)).stored == 2
    fourth = write(engine, rows_for(tenant, "f4") + rows_for(tenant, "f1"))
    assert fourth.stored == 2
    assert len(fourth.rejected) == 2
    for rejected in fourth.rejected:
        assert rejected.payload["feature_name"] == "f4"
        assert "feature_name 'f4' is new" in rejected.reason and "(TENANT_MAX_FEATURES)" in rejected.reason
    again = write(engine, [row for feature in ("f3", "f2", "f1") for row in rows_for(tenant, feature)])
    assert (again.stored, again.rejected) == (6, [])
    assert features_stored(engine, tenant) == {"f1": 6, "f2": 4, "f3": 4}
    assert catalog(engine, tenant) == {("feature", "f1"), ("feature", "f2"), ("feature", "f3"), ("model", "gpt-x")}
    with engine.connect() as conn:
        reasons = (
            conn.execute(text("SELECT reason FROM dead_letters WHERE payload LIKE '%' || :t || '%'"), {"t": tenant})
            .scalars()
            .all()
        )
    assert len(reasons) == 2 and all("TENANT_MAX_FEATURES" in r for r in reasons)


def test_models_have_their_own_cap_and_no_model_is_no_name(engine: Engine, tenant: str) -> None:
    rows = [row for m in ("m1", "m2", "m3", "m4") for row in rows_for(tenant, "f", 1, model=m)]
    rows += rows_for(tenant, "f", 3, model=None)
    result = write(engine, rows)
    assert result.stored == 6  # m1..m3 and the three without a model
    [refused] = result.rejected
    assert refused.payload["model"] == "m4" and "(TENANT_MAX_MODELS)" in refused.reason


def test_new_names_in_one_batch_beyond_the_cap_are_chosen_by_name(engine: Engine, tenant: str) -> None:
    result = write(engine, [row for f in ("e", "d", "c", "b", "a") for row in rows_for(tenant, f, 1)])
    assert result.stored == 3
    assert sorted(r.payload["feature_name"] for r in result.rejected) == ["d", "e"]


def test_two_tenants_have_separate_caps(engine: Engine, tenant: str) -> None:
    other = f"{tenant}-2"
    for who in (tenant, other):
        result = write(engine, [row for f in ("f1", "f2", "f3") for row in rows_for(who, f)])
        assert (result.stored, result.rejected) == (6, [])
    assert len(write(engine, rows_for(tenant, "f4")).rejected) == 2
    assert features_stored(engine, other) == {"f1": 2, "f2": 2, "f3": 2}
    # The other tenant's names are its own: the first tenant's known names do not admit f4 for it.
    assert len(write(engine, rows_for(other, "f4")).rejected) == 2


def test_a_rolled_back_name_does_not_count_as_committed(engine: Engine, tenant: str) -> None:
    write(engine, rows_for(tenant, "f1") + rows_for(tenant, "f2"))
    with Session(engine) as session:
        session.begin()
        assert store_batch(session, rows_for(tenant, "ghost"), get_settings(), caps=CAPS).stored == 2
        session.rollback()
    assert ("feature", "ghost") not in catalog(engine, tenant)
    assert KNOWN.unknown({(tenant, "ghost")}, set()) == ({(tenant, "ghost")}, set())
    # The third place is still free, and once taken the rolled-back name is a fourth.
    assert write(engine, rows_for(tenant, "f3")).stored == 2
    late = write(engine, rows_for(tenant, "ghost"))
    assert late.stored == 0 and len(late.rejected) == 2
    assert features_stored(engine, tenant) == {"f1": 2, "f2": 2, "f3": 2}


def test_known_names_cost_no_sql(engine: Engine, tenant: str) -> None:
    write(engine, rows_for(tenant, "f1") + rows_for(tenant, "f2", model="m2"))
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with Session(engine) as session, session.begin():
            rows = rows_for(tenant, "f2", 500, model="m2") + rows_for(tenant, "f1", 500, model=None)
            rejected: list[Any] = []
            assert admit_names(session, rows, CAPS, rejected) == rows and rejected == []
            assert statements == []
            admit_names(session, rows_for(tenant, "f9"), CAPS, rejected)  # a new name is looked up
            assert statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_two_workers_racing_for_the_last_place_admit_one(engine: Engine, tenant: str) -> None:
    """The second waits for the first's tenant lock, then counts what the first committed."""
    write(engine, rows_for(tenant, "f1") + rows_for(tenant, "f2"))
    first_holds, release = threading.Event(), threading.Event()
    results: dict[str, WriteResult] = {}
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with Session(engine) as session, session.begin():
                results["a"] = store_batch(session, rows_for(tenant, "a"), get_settings(), caps=CAPS)
                first_holds.set()
                release.wait(THREAD_TIMEOUT_S)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            first_holds.set()

    def second() -> None:
        try:
            results["b"] = write(engine, rows_for(tenant, "b"))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    one = threading.Thread(target=first)
    one.start()
    assert first_holds.wait(THREAD_TIMEOUT_S)
    two = threading.Thread(target=second)
    two.start()
    two.join(1.0)
    assert two.is_alive(), "the second writer should wait for the first's tenant lock"
    release.set()
    one.join(THREAD_TIMEOUT_S)
    two.join(THREAD_TIMEOUT_S)
    assert not errors, errors
    assert results["a"].stored == 2
    assert results["b"].stored == 0 and len(results["b"].rejected) == 2
    assert features_stored(engine, tenant) == {"f1": 2, "f2": 2, "a": 2}
