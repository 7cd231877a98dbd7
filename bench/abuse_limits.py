"""The HTTP attacks of ``bench.abuse`` on limits: time bounds, idempotency, read caps, rates, names, docs."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from bench.abuse_attacks import (
    FLOOD_BEYOND_CAP,
    LONG,
    MONTHS,
    event,
    mid_month,
    now,
    outside_window_months,
    rejected_per_event,
)  # fmt: skip
from bench.abuse_context import RAW_CONTROLS, AttackContext
from bench.abuse_core import Judge, Verdict, attack
from storage.partitions import Month

BURST_REQUESTS = 50  # above RATE_LIMIT_INGEST/READ as bench.abuse sets them (20/minute per key)
PRESUBMIT_WAIT_S = 60.0
EXTERNAL_ASSET = re.compile(r"""<(?:script|link)[^>]+(?:src|href)=["']?(?:https?:)?//""", re.IGNORECASE)


# --- timestamps ------------------------------------------------------------------------------------------


@attack("timestamp_year_1", "http", "an event stamped 0001-01-01", "rejected per event, no partition")
def timestamp_year_1(ctx: AttackContext) -> Judge:
    moment = datetime(1, 1, 1, 12, tzinfo=UTC)
    return rejected_per_event(ctx, "timestamp_year_1", [event(ctx.marker("timestamp_year_1"),
                              timestamp=moment.isoformat())], [Month.of(moment)])  # fmt: skip


@attack(
    "timestamp_before_past_bound",
    "http",
    "an event older than EVENT_MAX_PAST_AGE_DAYS",
    "rejected per event, no partition",
)
def timestamp_before_past_bound(ctx: AttackContext) -> Judge:
    moment = now() - timedelta(days=ctx.settings.event_max_past_age_days + 40)
    return rejected_per_event(ctx, "timestamp_before_past_bound", [event(ctx.marker("timestamp_before_past_bound"),
                              timestamp=moment.isoformat())], [Month.of(moment)])  # fmt: skip


@attack("far_future_timestamp", "http", "an event stamped ten years ahead", "rejected per event, no partition")
def far_future_timestamp(ctx: AttackContext) -> Judge:
    moment = now() + timedelta(days=3650)
    return rejected_per_event(ctx, "far_future_timestamp", [event(ctx.marker("far_future_timestamp"),
                              timestamp=moment.isoformat())], [Month.of(moment)])  # fmt: skip


@attack(
    "batch_over_1000_months",
    "http",
    f"one batch of {MONTHS} events over {MONTHS} months outside the window",
    "each rejected per event, no partition",
)
def batch_over_1000_months(ctx: AttackContext) -> Judge:
    marker = ctx.marker("batch_over_1000_months")
    months = outside_window_months(ctx, MONTHS - 1)  # one slot for the good event, within HTTP_MAX_BATCH_EVENTS
    bad = [event(f"{marker}{i}", timestamp=mid_month(m).isoformat()) for i, m in enumerate(months)]
    return rejected_per_event(ctx, "batch_over_1000_months", bad, months)


# --- idempotency across tenants --------------------------------------------------------------------------


@attack("presubmit_victim_event_ids", "http", "the victim's coming event ids and timestamps, sent first as the "
        "attacker's", "the victim's events all stored anyway", before_load=True)  # fmt: skip
def presubmit_victim_event_ids(ctx: AttackContext) -> Judge:
    marker, key = ctx.marker("presubmit_victim_event_ids"), ctx.attacker_key("presubmit")
    plan, size = ctx.victim_plan, ctx.settings.http_max_batch_events
    accepted = 0
    for start in range(0, len(plan), size):
        events = [event(f"{marker}{start + i}", event_id=p["event_id"], timestamp=p["timestamp"].isoformat())
                  for i, p in enumerate(plan[start : start + size])]  # fmt: skip
        response = ctx.post_events(key, events)
        accepted += response.json().get("accepted", 0) if response.status_code in (202, 207) else 0
    deadline = time.monotonic() + PRESUBMIT_WAIT_S
    while ctx.rows(marker) < accepted and time.monotonic() < deadline:
        time.sleep(0.5)  # the attacker's copies must be stored before the victim's events come
    landed = ctx.rows(marker)

    def judge() -> Verdict:
        with ctx.engine.connect() as conn:
            found = conn.execute(
                text("SELECT count(DISTINCT event_id) FROM analytics_events"
                     " WHERE tenant_id = :t AND event_id = ANY(CAST(:ids AS uuid[]))"),
                {"t": ctx.victim, "ids": [str(uuid.UUID(p["event_id"])) for p in plan]},
            ).scalar_one()  # fmt: skip
        missing = len(plan) - found
        return Verdict(missing == 0, f"attacker's copies: {accepted} accepted, {landed} stored first;"
                       f" victim's events stored {found}/{len(plan)}", missing)  # fmt: skip

    return judge


# --- read caps -------------------------------------------------------------------------------------------


def _read_own(ctx: AttackContext, name: str, route: str, params: Any, expected: set[int]) -> Judge:
    response = ctx.request("GET", f"/api/tenants/{ctx.attacker}/{route}", ctx.attacker_key(name), params=params)
    detail = response.text[:80].replace("\n", " ")
    return lambda: Verdict(response.status_code in expected, f"HTTP {response.status_code}: {detail}")


@attack("series_hourly_400_days", "http", "/series granularity=hour over 400 days", "422 naming the points cap")
def series_hourly_400_days(ctx: AttackContext) -> Judge:
    end = now()
    return _read_own(ctx, "series_hourly_400_days", "series",
                     {"granularity": "hour", "start": (end - timedelta(days=400)).isoformat(), "end": end.isoformat()},
                     {422})  # fmt: skip


@attack("top_users_huge_limit", "http", "/top-users?limit=10000000", "422")
def top_users_huge_limit(ctx: AttackContext) -> Judge:
    return _read_own(ctx, "top_users_huge_limit", "top-users", {"limit": 10_000_000}, {422})


@attack("dates_near_year_1", "http", "/series from 0001-01-01 to 0001-01-02", "422")
def dates_near_year_1(ctx: AttackContext) -> Judge:
    return _read_own(
        ctx,
        "dates_near_year_1",
        "series",
        {"start": "0001-01-01T00:00:00+00:00", "end": "0001-01-02T00:00:00+00:00"},
        {422},
    )


@attack("dates_near_year_9999", "http", "/series from 9999-12-30 to 9999-12-31T23:59:59", "422")
def dates_near_year_9999(ctx: AttackContext) -> Judge:
    return _read_own(
        ctx,
        "dates_near_year_9999",
        "series",
        {"start": "9999-12-30T00:00:00+00:00", "end": "9999-12-31T23:59:59+00:00"},
        {422},
    )


@attack("repeated_query_parameter", "http", "/series?granularity=hour&granularity=day", "422 naming the parameter")
def repeated_query_parameter(ctx: AttackContext) -> Judge:
    return _read_own(
        ctx, "repeated_query_parameter", "series", [("granularity", "hour"), ("granularity", "day")], {422}
    )


# --- rate limits -----------------------------------------------------------------------------------------


def _burst(ctx: AttackContext, name: str, send: Any) -> Judge:
    statuses, retry_after = [], []
    for i in range(BURST_REQUESTS):
        response = send(i)
        statuses.append(response.status_code)
        if response.status_code == 429:
            retry_after.append(response.headers.get("retry-after"))
    limited = statuses.count(429)
    refused = limited > 0 and all(value for value in retry_after)
    counts = ", ".join(f"{statuses.count(s)}x{s}" for s in sorted(set(statuses)))
    happened = f"{counts}; Retry-After: {retry_after[0] if retry_after else 'none'}"
    return lambda: Verdict(refused, happened)


@attack(
    "rate_limit_burst_read",
    "http",
    f"{BURST_REQUESTS} GET /summary in a row with one key",
    "429 with Retry-After beyond RATE_LIMIT_READ",
)
def rate_limit_burst_read(ctx: AttackContext) -> Judge:
    key = ctx.attacker_key("burst read")
    return _burst(
        ctx, "rate_limit_burst_read", lambda i: ctx.request("GET", f"/api/tenants/{ctx.attacker}/summary", key)
    )


@attack(
    "rate_limit_burst_ingest",
    "http",
    f"{BURST_REQUESTS} POST /v1/events in a row with one key",
    "429 with Retry-After beyond RATE_LIMIT_INGEST",
)
def rate_limit_burst_ingest(ctx: AttackContext) -> Judge:
    key, marker = ctx.attacker_key("burst ingest"), ctx.marker("rate_limit_burst_ingest")
    return _burst(ctx, "rate_limit_burst_ingest", lambda i: ctx.post_events(key, [event(f"{marker}{i}")]))


# --- names ----------------------------------------------------------------------------------------------


def _flood(ctx: AttackContext, name: str, column: str, cap: int) -> Judge:
    """From a tenant of the attacker's own for each flood: a full catalog would refuse the new names of
    the other attacks in their place."""
    marker, sent, tenant = ctx.marker(name), cap + FLOOD_BEYOND_CAP, f"{ctx.attacker}-{column}-flood"
    events = [event(f"{marker}{i}", **{column: f"flood-{column}-{i}"}) for i in range(sent)]
    response = ctx.post_events(ctx.new_key(tenant, name=f"abuse {name}"), events)

    def judge() -> Verdict:
        stored, lettered = ctx.rows(marker), ctx.dead_letters(marker)
        names = ctx.distinct_names(tenant, column)
        refused = names <= cap and lettered > 0 and stored + lettered == sent
        return Verdict(refused, f"HTTP {response.status_code}; {stored} stored, {lettered} dead-lettered of {sent};"
                       f" the tenant has {names} distinct {column} names (cap {cap})")  # fmt: skip

    return judge


@attack(
    "feature_name_flood",
    "http",
    f"TENANT_MAX_FEATURES + {FLOOD_BEYOND_CAP} new feature names",
    "the names beyond the cap dead-lettered with the reason",
)
def feature_name_flood(ctx: AttackContext) -> Judge:
    return _flood(ctx, "feature_name_flood", "feature_name", ctx.settings.tenant_max_features)


@attack(
    "model_name_flood",
    "http",
    f"TENANT_MAX_MODELS + {FLOOD_BEYOND_CAP} new model names",
    "the names beyond the cap dead-lettered with the reason",
)
def model_name_flood(ctx: AttackContext) -> Judge:
    return _flood(ctx, "model_name_flood", "model", ctx.settings.tenant_max_models)


@attack(
    "overlong_identifiers",
    "http",
    f"user_id, feature_name and model of {LONG:,} characters",
    "rejected per event, naming the field",
)
def overlong_identifiers(ctx: AttackContext) -> Judge:
    marker = ctx.marker("overlong_identifiers")
    bad = [event(marker + "u" * LONG), event(f"{marker}f", feature_name="f" * LONG),
           event(f"{marker}m", model="m" * LONG)]  # fmt: skip
    return rejected_per_event(ctx, "overlong_identifiers", bad)


@attack("nul_in_fields", "http", "NUL in user_id, feature_name and model", "rejected per event, naming the field")
def nul_in_fields(ctx: AttackContext) -> Judge:
    marker = ctx.marker("nul_in_fields")
    bad = [event(marker + "\x00u"), event(f"{marker}f", feature_name="sum\x00mary"),
           event(f"{marker}m", model="gpt\x00")]  # fmt: skip
    return rejected_per_event(ctx, "nul_in_fields", bad)


@attack(
    "control_characters_in_fields",
    "http",
    "ESC sequences, CR/LF and BEL in user_id and feature_name",
    "rejected per event, or stored as sent in the attacker's tenant only and escaped in `cli report`",
)
def control_characters_in_fields(ctx: AttackContext) -> Judge:
    marker = ctx.marker("control_characters_in_fields")
    sent = [event(marker + "\x1b[2J\x1b[31mowned\r\nFAKE LOG LINE"), event(f"{marker}f", feature_name="ctl\x07\x08x")]
    response = ctx.post_events(ctx.attacker_key("control"), sent)
    results = response.json().get("results", []) if response.status_code in (202, 207) else []
    rejected = sum(r.get("status") == "rejected" for r in results)

    def judge() -> Verdict:
        with ctx.engine.connect() as conn:
            stored = set(conn.execute(text("SELECT tenant_id, user_id, feature_name FROM analytics_events"
                                           " WHERE user_id LIKE :m"), {"m": f"{marker}%"}).all())  # fmt: skip
        as_sent = {(ctx.attacker, e["user_id"], e["feature_name"]) for e in sent}
        foreign = sum(tenant != ctx.attacker for tenant, _, _ in stored)
        shown = ctx.operator_output("report", "--tenant", ctx.attacker) if stored else b""
        raw = sum(byte in RAW_CONTROLS for byte in shown)
        refused = (response.status_code in (202, 207, 400, 422) and stored <= as_sent and len(stored) + rejected == 2
                   and raw == 0)  # fmt: skip
        return Verdict(refused, f"HTTP {response.status_code}; {rejected} rejected, {len(stored)} stored"
                       f" ({'as sent' if stored <= as_sent else 'ALTERED'}); raw control bytes in"
                       f" `cli report`: {raw}", foreign)  # fmt: skip

    return judge


@attack("docs_external_scripts", "http", "GET /docs", "404 (off by default), or served with no external script")
def docs_external_scripts(ctx: AttackContext) -> Judge:
    response = ctx.request("GET", "/docs")
    external = bool(EXTERNAL_ASSET.search(response.text)) if response.status_code == 200 else False
    refused = response.status_code == 404 or (response.status_code == 200 and not external)
    return lambda: Verdict(refused, f"HTTP {response.status_code}" + ("; loads external assets" if external else ""))
