"""The HTTP attacks of ``bench.abuse`` (the broker's are in bench.abuse_broker).

Each attack sends events marked with its own marker (``user_id``), so that
"no side effect" is exact: no row with that marker anywhere. Batches that
should be refused per event carry one good event beside the bad ones, which
must land (a refusal never sinks its batch-mates).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bench.abuse_context import AttackContext
from bench.abuse_core import TARGET_MAX_WEB_RSS_GROWTH_MB, Judge, Verdict, attack
from storage.partitions import Month

HUGE_BODY_BYTES = 200 * 1024 * 1024
QUICK_REFUSAL_S = 10.0
FLOOD_BEYOND_CAP = 30
LONG = 10_000
MONTHS = 1000
PER_EVENT = {207, 400, 422}  # answered per event (or the whole batch refused by name)


def event(marker: str, **fields: Any) -> dict[str, Any]:
    return {"feature_name": "summarization", "user_id": marker, "model": "gpt-4o-mini", "input_tokens": 10,
            "output_tokens": 5, "latency_ms": 120, **fields}  # fmt: skip


def at(moment: datetime) -> str:
    return moment.isoformat()


def now() -> datetime:
    return datetime.now(UTC)


def refused_with(ctx: AttackContext, status: int | None, expected: set[int], marker: str) -> Judge:
    """Refused: ``status`` is one of ``expected`` and nothing with ``marker`` was stored (judged later)."""

    def judge() -> Verdict:
        stored, foreign = ctx.rows(marker), ctx.rows(marker) - ctx.rows(marker, ctx.attacker)
        return Verdict(status in expected and stored == 0, f"HTTP {status}; {stored} row(s) stored", foreign)

    return judge


def rejected_per_event(ctx: AttackContext, name: str, bad: list[dict[str, Any]], months: Iterable[Month] = ()) -> Judge:
    """Send ``bad`` beside one good event; refused: each bad one rejected and not stored, the good one stored,
    and no partition for ``months`` (which the bad events named)."""
    marker, good = ctx.marker(name), ctx.marker(f"ok-{name}")
    response = ctx.post_events(ctx.attacker_key(name), [*bad, event(good)])
    months = set(months)
    try:
        results = response.json().get("results", [])
    except ValueError:
        results = []
    rejected = sum(r.get("status") == "rejected" for r in results[: len(bad)])
    errors = sorted({str(r.get("error"))[:60] for r in results[: len(bad)] if r.get("error")})

    def judge() -> Verdict:
        stored, good_stored = ctx.rows(marker), ctx.rows(good)
        made = len(months & ctx.months())
        refused = response.status_code in PER_EVENT and rejected == len(bad) and stored == 0 and made == 0
        happened = (
            f"HTTP {response.status_code}, {rejected}/{len(bad)} rejected"
            f" ({'; '.join(errors[:2]) or 'no error text'}); {stored} stored, good event stored: "
            f"{'yes' if good_stored else 'no'}" + (f"; {made} partition(s) created" if months else "")
        )
        return Verdict(refused and good_stored == 1, happened, ctx.rows(marker) - ctx.rows(marker, ctx.attacker))

    return judge


def outside_window_months(ctx: AttackContext, count: int) -> list[Month]:
    """``count`` months none of which the accept window (past bound, future skew) reaches."""
    oldest = Month.of(now() - timedelta(days=ctx.settings.event_max_past_age_days)).shift(-2)
    past = count * 3 // 5
    return [oldest.shift(-i) for i in range(past)] + [Month.of(now()).shift(6 + i) for i in range(count - past)]


def mid_month(month: Month) -> datetime:
    return month.start + timedelta(days=14, hours=12)


# --- who may write ---------------------------------------------------------------------------


@attack(
    "legacy_unauthenticated_write",
    "http",
    "POST /api/ai-feature/summarization naming the victim in the body",
    "401/404/405, no event stored for the victim",
)
def legacy_write(ctx: AttackContext) -> Judge:
    marker = ctx.marker("legacy_unauthenticated_write")
    response = ctx.request(
        "POST", "/api/ai-feature/summarization", json={"tenant_id": ctx.victim, "user_id": marker, "input": "hello"}
    )
    return refused_with(ctx, response.status_code, {401, 404, 405}, marker)


def _write_with(ctx: AttackContext, name: str, key: str | None, expected: set[int]) -> Judge:
    marker = ctx.marker(name)
    return refused_with(ctx, ctx.post_events(key, [event(marker)]).status_code, expected, marker)


@attack("no_key", "http", "POST /v1/events without a key", "401, nothing stored")
def no_key(ctx: AttackContext) -> Judge:
    return _write_with(ctx, "no_key", None, {401})


@attack("malformed_key", "http", "POST /v1/events with 'Bearer not-a-key'", "401, nothing stored")
def malformed_key(ctx: AttackContext) -> Judge:
    return _write_with(ctx, "malformed_key", "not-a-key", {401})


@attack("unknown_key", "http", "POST /v1/events with a well-formed key nobody issued", "401, nothing stored")
def unknown_key(ctx: AttackContext) -> Judge:
    real = ctx.attacker_key("unknown")
    return _write_with(ctx, "unknown_key", real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB"), {401})


@attack("revoked_key", "http", "POST /v1/events with a revoked key", "401, nothing stored")
def revoked_key(ctx: AttackContext) -> Judge:
    return _write_with(ctx, "revoked_key", ctx.revoked_key(), {401})


@attack("expired_key", "http", "POST /v1/events with a key whose expiry has passed", "401, nothing stored")
def expired_key(ctx: AttackContext) -> Judge:
    key = ctx.expired_key(now() - timedelta(days=1))
    if key is None:
        return lambda: Verdict(False, "keys have no expiry (create_key takes no expires_at)")
    return _write_with(ctx, "expired_key", key, {401})


@attack("admin_key_writes", "http", "POST /v1/events with an admin key", "403, nothing stored")
def admin_key_writes(ctx: AttackContext) -> Judge:
    return _write_with(ctx, "admin_key_writes", ctx.admin_key, {403})


@attack("event_names_tenant", "http", "an event with tenant_id of the victim", "rejected per event, nothing stored")
def event_names_tenant(ctx: AttackContext) -> Judge:
    marker = ctx.marker("event_names_tenant")
    return rejected_per_event(ctx, "event_names_tenant", [event(marker, tenant_id=ctx.victim)])


# --- who may read --------------------------------------------------------------------------------


def _read_victim(ctx: AttackContext, name: str, route: str) -> Judge:
    response = ctx.request("GET", f"/api/tenants/{ctx.victim}/{route}", ctx.attacker_key(name))
    leak = int(response.status_code == httpx.codes.OK)
    return lambda: Verdict(response.status_code == 403, f"HTTP {response.status_code}", leak)


@attack("read_victim_summary", "http", "GET the victim's /summary with the attacker's key", "403")
def read_victim_summary(ctx: AttackContext) -> Judge:
    return _read_victim(ctx, "read_victim_summary", "summary")


@attack("read_victim_series", "http", "GET the victim's /series with the attacker's key", "403")
def read_victim_series(ctx: AttackContext) -> Judge:
    return _read_victim(ctx, "read_victim_series", "series")


# --- bodies ----------------------------------------------------------------------------------------


def _huge(ctx: AttackContext, name: str, key: str | None, expected: set[int], **kwargs: Any) -> Judge:
    before = ctx.rss.growth_mb()
    answer = ctx.raw_post("/v1/events", key, kwargs.pop("body_size", HUGE_BODY_BYTES), **kwargs)
    growth = ctx.rss.growth_mb()
    reset = answer.status is None and not answer.complete and ctx.web.alive()  # cut off early, status unread
    refused = ((answer.status in expected or reset) and answer.seconds <= QUICK_REFUSAL_S and not answer.complete
               and growth <= TARGET_MAX_WEB_RSS_GROWTH_MB)  # fmt: skip
    happened = (
        f"HTTP {answer.status} after {answer.seconds:.1f}s, {answer.bytes_sent / 2**20:.1f} MB sent"
        f"{' (whole body)' if answer.complete else ''}, web RSS growth {before:.1f} -> {growth:.1f} MB"
        + (f"; {answer.error}" if answer.error else "")
    )
    return lambda: Verdict(refused, happened)


@attack(
    "chunked_200mb_without_key",
    "http",
    "200 MB chunked POST /v1/events, no key",
    "401 before the body is read, quickly, RSS bounded",
)
def chunked_without_key(ctx: AttackContext) -> Judge:
    return _huge(ctx, "chunked_200mb_without_key", None, {401, 413}, chunked=True)


@attack(
    "chunked_200mb_with_key",
    "http",
    "200 MB chunked POST /v1/events with a key",
    "413 once HTTP_MAX_BODY_BYTES is passed, quickly, RSS bounded",
)
def chunked_with_key(ctx: AttackContext) -> Judge:
    return _huge(ctx, "chunked_200mb_with_key", ctx.attacker_key("chunked"), {413}, chunked=True)


@attack(
    "content_length_over_limit",
    "http",
    "Content-Length over HTTP_MAX_BODY_BYTES, body withheld",
    "413 without waiting for the body",
)
def content_length_over_limit(ctx: AttackContext) -> Judge:
    return _huge(
        ctx,
        "content_length_over_limit",
        ctx.attacker_key("length"),
        {413},
        body_size=1024,
        chunked=False,
        declared_length=ctx.settings.http_max_body_bytes + 1,
    )


@attack("batch_over_max_events", "http", "HTTP_MAX_BATCH_EVENTS + 1 events in one POST", "413, nothing stored")
def batch_over_max_events(ctx: AttackContext) -> Judge:
    marker = ctx.marker("batch_over_max_events")
    events = [event(f"{marker}{i}") for i in range(ctx.settings.http_max_batch_events + 1)]
    return refused_with(ctx, ctx.post_events(ctx.attacker_key("batch"), events).status_code, {413}, marker)
