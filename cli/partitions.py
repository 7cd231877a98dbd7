"""``python -m cli partitions ...``: list, create ahead, and retire monthly partitions."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import click

from cli import engines
from config import get_settings
from monitoring.escape import escape
from storage.partitions import (
    PartitionInfo,
    PartitionLockTimeout,
    PartitionPolicy,
    ensure_partitions,
    list_partitions,
    months_ahead,
    run_retention,
)

BYTES_UNITS = ("B", "kB", "MB", "GB", "TB")
KILO = 1024


def _policy() -> PartitionPolicy:
    return PartitionPolicy.from_settings(get_settings())


def _size(n: int) -> str:
    value = float(n)
    for unit in BYTES_UNITS:
        if value < KILO or unit == BYTES_UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= KILO
    raise AssertionError("unreachable")


def _state(info: PartitionInfo) -> str:
    if info.detach_pending:
        return "detaching"
    return "attached" if info.attached else "detached"


@click.group()
def partitions() -> None:
    """Monthly partitions of analytics_events."""


@partitions.command("list")
def list_command() -> None:
    """Show every monthly table: month, state, estimated rows, size, indexes.

    Row counts are the planner's estimates (updated by ANALYZE/autovacuum);
    "?" means the table was never analyzed.
    """
    with engines.engine().connect() as conn:
        infos = list_partitions(conn)
    if not infos:
        click.echo("no partitions")
        return
    click.echo(f"{'month':<8} {'state':<9} {'rows~':>12} {'size':>10}  indexes")
    for info in infos:
        rows = "?" if info.rows_estimate is None else f"{info.rows_estimate:,}"
        click.echo(
            f"{escape(info.month or info.name):<8} {_state(info):<9} {rows:>12}"
            f" {_size(info.size_bytes):>10}  {', '.join(info.indexes) or '-'}"
        )


@partitions.command("ensure")
@click.option(
    "--ahead",
    type=click.IntRange(min=0),
    default=None,
    help="Months after the current one [default: PARTITION_MONTHS_AHEAD].",
)
def ensure_command(ahead: int | None) -> None:
    """Create the current month and the months ahead that are missing (idempotent)."""
    policy = _policy()
    wanted = months_ahead(datetime.now(UTC), policy.months_ahead if ahead is None else ahead)
    try:
        created = ensure_partitions(engines.engine(), wanted, policy)
    except PartitionLockTimeout as exc:
        raise click.ClickException(str(exc)) from exc
    for month in created:
        click.echo(f"created {month.table_name}")
    click.echo(f"{len(created)} created, {len(wanted) - len(created)} already present ({wanted[0]} .. {wanted[-1]})")


@partitions.command("retention")
@click.option("--dry-run", is_flag=True, help="Show what would be detached and dropped; change nothing.")
@click.option(
    "--keep-months",
    type=click.IntRange(min=0),
    default=None,
    help="Full months kept before the current one; 0 keeps all [default: PARTITION_RETENTION_MONTHS].",
)
@click.option(
    "--keep-detached/--drop-detached",
    default=None,
    help="Leave expired partitions as detached tables instead of dropping them [default: PARTITION_KEEP_DETACHED].",
)
def retention_command(dry_run: bool, keep_months: int | None, keep_detached: bool | None) -> None:
    """Detach, and drop unless kept, the partitions older than the kept months.

    The current month and later ones are never touched. Runs as the tables'
    owner: DATABASE_OWNER_URL when set, else DATABASE_URL.
    """
    policy = _policy()
    if keep_months is not None:
        policy = replace(policy, retention_months=keep_months)
    if keep_detached is not None:
        policy = replace(policy, keep_detached=keep_detached)
    now = datetime.now(UTC)
    try:
        report = run_retention(engines.owner_engine(), policy, now, dry_run=dry_run)
    except PartitionLockTimeout as exc:
        raise click.ClickException(str(exc)) from exc
    plan = report.plan
    if plan.oldest_kept is None:
        click.echo("retention is off (PARTITION_RETENTION_MONTHS=0): every month is kept")
        return
    if report.skipped:
        raise click.ClickException(f"retention skipped: {report.skipped}")
    click.echo(f"keeping {plan.oldest_kept} and later")
    verb = "would" if dry_run else "did"
    for info in plan.detach:
        click.echo(f"{verb} detach {escape(info.name)} ({_size(info.size_bytes)})")
    for info in plan.drop:
        click.echo(f"{verb} drop {escape(info.name)} ({_size(info.size_bytes)})")
    if not plan.detach and not plan.drop:
        click.echo("nothing to retire")
    if not dry_run:
        click.echo(f"{len(report.detached)} detached, {len(report.dropped)} dropped")
