"""``python -m cli rollups ...``: run and rebuild the rollups, and read them.

Times are ISO 8601 (``2026-11-01``, ``2026-11-01T13:00``, ``...+02:00``); a
time without an offset is UTC. Names that came from clients (features, users)
are printed with their control characters escaped (monitoring.escape).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import click
from sqlalchemy import Connection

from cli import engines
from config import get_settings
from monitoring.escape import escape
from queries import cost
from queries import rollups as q
from storage.rollups import rebuild as rebuild_range
from storage.rollups import run_until_idle

DEFAULT_WINDOW = timedelta(days=1)
T = TypeVar("T")


class UtcDateTime(click.ParamType):
    name = "datetime"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            moment = value
        else:
            try:
                moment = datetime.fromisoformat(str(value))
            except ValueError:
                self.fail(f"{value!r} is not an ISO 8601 date or time", param, ctx)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)


UTC_DATETIME = UtcDateTime()


def _read(reader: Callable[[Connection], T]) -> T:
    with q.snapshot(engines.engine()) as conn:
        return reader(conn)


def _range(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    end = end or datetime.now(UTC)
    return start or end - DEFAULT_WINDOW, end


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


range_options = [
    click.option("--tenant", required=True, help="Tenant id."),
    click.option("--from", "start", type=UTC_DATETIME, help="Start (default: --to minus one day)."),
    click.option("--to", "end", type=UTC_DATETIME, help="End, exclusive (default: now)."),
]


def with_range(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(range_options):
        command = option(command)
    return command


@click.group()
def rollups() -> None:
    """Hourly/daily rollups: run, rebuild, and the dashboard queries they serve."""


@rollups.command("run")
@click.option("--chunk", type=int, default=None, help="Batches per transaction (default: ROLLUP_CHUNK_BATCHES).")
def run_command(chunk: int | None) -> None:
    """Add every committed, not yet rolled-up batch to the rollups."""
    report = run_until_idle(engines.engine(), chunk or get_settings().rollup_chunk_batches)
    click.echo(
        f"rolled up {report.events:,} events of {report.batches:,} batches"
        f" in {report.chunks} chunks, {report.seconds:.2f}s"
    )


@rollups.command("rebuild")
@click.option("--from", "start", type=UTC_DATETIME, required=True, help="First instant to redo.")
@click.option("--to", "end", type=UTC_DATETIME, required=True, help="End of the range, exclusive.")
def rebuild_command(start: datetime, end: datetime) -> None:
    """Drop and recompute from raw events the rollups of every UTC day meeting [--from, --to)."""
    try:
        report = rebuild_range(engines.engine(), start, end)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    click.echo(f"rebuilt {len(report.days)} days, {report.events:,} events, {report.seconds:.2f}s")
    for day in report.skipped_days:
        click.echo(f"skipped {day.date().isoformat()}: its month has no attached partition (rollups kept)")


@rollups.command("summary")
@with_range
def summary_command(tenant: str, start: datetime | None, end: datetime | None) -> None:
    """Per feature: calls, errors, error rate, tokens, latency avg/p50/p95/p99 (ms)."""
    start, end = _range(start, end)
    rows = _read(lambda conn: q.feature_summary(conn, tenant, start, end))
    h0, h1 = q.hour_span(start, end)
    click.echo(f"tenant {escape(tenant)}, {h0.isoformat()} .. {h1.isoformat()}")
    click.echo(
        f"{'feature':<24}{'calls':>10}{'errors':>8}{'err %':>7}{'tokens':>13}{'avg':>8}{'p50':>8}{'p95':>8}{'p99':>8}"
    )
    for r in rows:
        click.echo(
            f"{escape(r.feature_name):<24}{r.calls:>10,}{r.errors:>8,}{100 * r.error_rate:>7.2f}{r.tokens_used:>13,}"
            f"{_ms(r.latency_avg_ms):>8}{_ms(r.latency_p50_ms):>8}{_ms(r.latency_p95_ms):>8}{_ms(r.latency_p99_ms):>8}"
        )


@rollups.command("series")
@with_range
@click.option("--by", "granularity", type=click.Choice(q.GRANULARITIES), default="hour", show_default=True)
@click.option("--feature", default=None, help="One feature only.")
def series_command(
    tenant: str, start: datetime | None, end: datetime | None, granularity: q.Granularity, feature: str | None
) -> None:
    """Calls, errors, tokens and latency per hour or per UTC day."""
    start, end = _range(start, end)
    points = _read(lambda conn: q.time_series(conn, tenant, start, end, granularity, feature))
    click.echo(f"{'bucket':<27}{'calls':>10}{'errors':>8}{'tokens':>13}{'avg':>8}{'p95':>8}")
    for p in points:
        click.echo(
            f"{p.bucket.isoformat():<27}{p.calls:>10,}{p.errors:>8,}{p.tokens_used:>13,}"
            f"{_ms(p.latency_avg_ms):>8}{_ms(p.latency_p95_ms):>8}"
        )


@rollups.command("top-users")
@with_range
@click.option("--limit", type=int, default=q.DEFAULT_TOP_USERS, show_default=True)
@click.option("--feature", default=None, help="One feature only.")
def top_users_command(
    tenant: str, start: datetime | None, end: datetime | None, limit: int, feature: str | None
) -> None:
    """Users with the most calls over the whole UTC days meeting the range."""
    start, end = _range(start, end)
    users = _read(lambda conn: q.top_users(conn, tenant, start, end, limit, feature))
    click.echo(f"{'user':<32}{'calls':>10}{'errors':>8}{'tokens':>13}")
    for u in users:
        click.echo(f"{escape(u.user_id):<32}{u.calls:>10,}{u.errors:>8,}{u.tokens_used:>13,}")


@rollups.command("error-rates")
@with_range
def error_rates_command(tenant: str, start: datetime | None, end: datetime | None) -> None:
    """Error rate per feature."""
    start, end = _range(start, end)
    rates = _read(lambda conn: q.error_rate_by_feature(conn, tenant, start, end))
    click.echo(f"{'feature':<24}{'calls':>10}{'errors':>8}{'err %':>7}")
    for r in rates:
        click.echo(f"{escape(r.feature_name):<24}{r.calls:>10,}{r.errors:>8,}{100 * r.error_rate:>7.2f}")


@rollups.command("active-users")
@with_range
@click.option("--feature", default=None, help="One feature only.")
def active_users_command(tenant: str, start: datetime | None, end: datetime | None, feature: str | None) -> None:
    """Exact daily active users per feature."""
    start, end = _range(start, end)
    rows = _read(lambda conn: q.active_users(conn, tenant, start, end, feature))
    click.echo(f"{'day':<12}{'feature':<24}{'users':>8}")
    for r in rows:
        click.echo(f"{r.day.date().isoformat():<12}{escape(r.feature_name):<24}{r.users:>8,}")


def _usd(amount: Decimal | None) -> str:
    return "-" if amount is None else f"${amount:,.4f}"


@rollups.command("cost")
@with_range
@click.option("--by", "group", type=click.Choice(cost.COST_GROUPS), default="feature", show_default=True)
@click.option("--feature", default=None, help="One feature only.")
@click.option("--model", default=None, help="One model only.")
@click.option("--limit", type=int, default=q.DEFAULT_TOP_USERS, show_default=True, help="Users shown with --by user.")
def cost_command(tenant: str, start: datetime | None, end: datetime | None, group: cost.CostGroup,
                 feature: str | None, model: str | None, limit: int) -> None:  # fmt: skip
    """Cost in USD per feature, model, hour, day or user (users ranked by cost), priced now from the rollups.

    Amounts are rounded to 1/100 cent here (the API gives them exactly). Calls of models that nothing
    prices are counted as unpriced beside the cost, never as $0; '~' marks an approximate figure."""
    start, end = _range(start, end)
    rows = _read(lambda conn: cost.cost_by(conn, tenant, start, end, group, feature=feature, model=model,
                                           limit=limit))  # fmt: skip
    click.echo(f"{group:<28}{'calls':>10}{'tokens':>14}{'cost':>16}{'per call':>12}{'unpriced calls':>16}")
    unpriced: set[str] = set()
    for r in rows:
        key = r.key.isoformat() if isinstance(r.key, datetime) else escape(str(r.key))
        mark = "~" if r.approximate else " "
        click.echo(
            f"{key:<28}{r.calls:>10,}{r.tokens_used:>14,}{_usd(r.cost_usd):>15}{mark}"
            f"{_usd(r.cost_per_call_usd):>12}{r.unpriced_calls:>16,}"
        )
        unpriced.update(r.unpriced_models)
    if unpriced:
        names = ", ".join(escape(name or "(no model)") for name in sorted(unpriced))
        click.echo(f"unpriced models (not in the catalog, no override): {names};"
                   " price them with `analytics prices set MODEL ...`")  # fmt: skip
