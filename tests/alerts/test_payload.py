"""The notification payload: exact decimal strings for receivers, a short human message."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from alerts.evaluate import payload
from alerts.rules import Rule, parse_rule

AT = datetime(2026, 6, 15, 12, 30, tzinfo=UTC)


def rule(**fields: object) -> Rule:
    new = parse_rule(fields)
    return Rule(**vars(new), tenant_id="t1", id=7, created_at=AT, created_by="tests")


def test_a_spike_payload_keeps_the_exact_ratio_and_the_message_a_short_one() -> None:
    spike = rule(name="search spike", kind="cost_spike", feature="search", warning_threshold="2",
                 critical_threshold="5.00", min_amount_usd="1")  # fmt: skip
    ratio = Decimal(20) / Decimal(7)
    notification_id = uuid.uuid4()
    body = payload(spike, notification_id, "state_change", "warning", "ok", ratio, Decimal(2), AT)
    assert body["id"] == str(notification_id) and body["value"] == str(ratio)
    assert body["rule"] == {"id": 7, "name": "search spike", "kind": "cost_spike", "feature": "search", "model": None,
                            "metric": None, "warning_threshold": "2", "critical_threshold": "5"}  # fmt: skip
    assert (body["previous_state"], body["threshold"], body["at"]) == ("ok", "2", AT.isoformat())
    assert body["message"] == (
        "[WARNING] search spike: last hour's cost of feature 'search' is 2.8571 x baseline (threshold 2 x baseline);"
        " now warning"
    )


def test_an_ingest_health_reminder_and_a_resolution_without_data() -> None:
    lag = rule(name="lag", kind="ingest_health", metric="rollup_lag_s", warning_threshold=60, critical_threshold=300)
    reminded = payload(lag, uuid.uuid4(), "reminder", "critical", "critical", Decimal("412.5"), Decimal(300), AT)
    assert reminded["message"] == "[CRITICAL] lag: rollup_lag_s is 412.5 (threshold 300); reminder: still critical"
    errors = rule(
        name="errors", kind="error_rate", window_minutes=15, warning_threshold="0.1", critical_threshold="0.5"
    )
    resolved = payload(errors, uuid.uuid4(), "state_change", "resolved", "warning", None, Decimal("0.1"), AT)
    assert resolved["value"] is None
    assert (
        resolved["message"]
        == "[RESOLVED] errors: error rate has too little data (threshold 0.1 of calls); now resolved"
    )
