"""What only the COPY writer could get wrong: text-format escaping and NULLs, round-tripped."""

from __future__ import annotations

import time
import uuid

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from config import get_settings
from schema.event import WIRE_FIELDS, parse_wire_row
from storage.events import store_batch
from storage.writers import bulk_insert, copy_rows

AWKWARD = ["tab\there", "new\nline", "back\\slash", "carriage\rreturn", "\\N", "ünïcødé ✓", "quote'\"", " "]


def test_copy_stores_awkward_strings_exactly_as_bulk_insert_does(engine: Engine) -> None:
    stored = {}
    for name, writer in (("bulk", bulk_insert), ("copy", copy_rows)):
        tenant = f"awkward-{name}-{uuid.uuid4().hex[:6]}"
        now_us = time.time_ns() // 1000
        rows = []
        for i, value in enumerate(AWKWARD):
            wire = [uuid.uuid4().hex, tenant, "summarization", value, value if i % 2 else None,
                    i, 1, None, 10, "error", value, now_us + i, i // 2, 0, 1, value if i % 2 == 0 else None,
                    i if i % 2 else None]  # fmt: skip
            rows.append((parse_wire_row(WIRE_FIELDS, wire), dict(zip(WIRE_FIELDS, wire, strict=False))))
        with Session(engine) as session, session.begin():
            assert store_batch(session, rows, get_settings(), writer=writer).stored == len(AWKWARD)
        with engine.connect() as conn:
            stored[name] = conn.execute(
                text("SELECT user_id, model, error_type, input_tokens, tokens_used, cache_read_tokens,"
                     " reasoning_tokens, provider FROM analytics_events"
                     " WHERE tenant_id = :t ORDER BY timestamp"), {"t": tenant}).all()  # fmt: skip
    assert [row.user_id for row in stored["copy"]] == AWKWARD
    assert stored["copy"] == stored["bulk"]
