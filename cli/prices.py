"""``analytics prices ...``: the rates in force, price overrides, their history, bulk import.

Amounts are exact decimals (USD per million tokens; the per-call fee in USD).
Bad input ends the command with one line naming the field (and, for
``import``, the line or index); nothing of an import is stored unless every
row is valid.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import click

from cli import engines
from monitoring.escape import escape
from pricing.listing import UNPRICED_HINT, effective_rates
from pricing.overrides import OverrideConflict, OverrideInput, PriceError, history, parse_override, set_override

IMPORT_FIRST_DATA_LINE = 2  # line 1 of a CSV is its header


def _amount(value: Any) -> str:
    return "-" if value is None else str(value)


@click.group("prices")
def prices() -> None:
    """Model prices: the catalog (genai-prices) and local overrides."""


@prices.command("list")
@click.option("--tenant", "tenant_id", help="That tenant's schedule (its own overrides included).")
@click.option("--model", "model_pattern", help="Only models matching this name or glob (* and ?).")
def list_command(tenant_id: str | None, model_pattern: str | None) -> None:
    """For each seen model: where its price comes from and the rates in force now (USD per MTok)."""
    with engines.sessions()() as session:
        rows = effective_rates(session, tenant_id=tenant_id, model_pattern=model_pattern)
    if not rows:
        click.echo("no models seen")
        return
    click.echo(f"{'model':<32}{'provider':<12}{'source':<10}{'band':>8}{'hour':>5}  "
               f"{'input':>10}{'cache_rd':>10}{'cache_wr':>10}{'output':>10}{'reason.':>10}{'per_call':>10}  approx")  # fmt: skip
    for row in rows:
        name = f"{escape(row.model):<32}{escape(row.provider or '-'):<12}"
        if row.rates is None:
            click.echo(f"{name}UNPRICED  ({UNPRICED_HINT})")
            continue
        r = row.rates
        band = "any" if row.input_band < 0 else str(row.input_band)
        hour = "all" if row.hour_of_day < 0 else str(row.hour_of_day)
        click.echo(f"{name}{row.source:<10}{band:>8}{hour:>5}  {r.input_per_mtok!s:>10}{r.cache_read_per_mtok!s:>10}"
                   f"{r.cache_write_per_mtok!s:>10}{r.output_per_mtok!s:>10}{r.reasoning_per_mtok!s:>10}"
                   f"{r.call_fee!s:>10}  {'yes' if row.approximate else 'no'}")  # fmt: skip


def _store(values: list[OverrideInput], replace: bool) -> list[tuple[int, list[str]]]:
    done = []
    with engines.sessions().begin() as session:
        for value in values:
            result = set_override(session, value, replace=replace)
            done.append((result.override_id, result.warnings))
    return done


@prices.command("set")
@click.argument("pattern")
@click.option("--input", "input_rate", required=True, help="USD per million uncached input tokens.")
@click.option("--output", "output_rate", required=True, help="USD per million output tokens.")
@click.option("--cache-read", help="USD per million cache-read tokens (default: the input rate).")
@click.option("--cache-write", help="USD per million cache-write tokens (default: the input rate).")
@click.option("--reasoning", help="USD per million reasoning tokens (default: the output rate).")
@click.option("--per-call", help="USD per call (default 0).")
@click.option("--provider", default="", help="Only this provider (default: any).")
@click.option("--tenant", "tenant_id", default="", help="Only this tenant (default: every tenant).")
@click.option("--from", "effective_from", required=True, help="First UTC day the price applies (YYYY-MM-DD).")
@click.option("--reason", required=True, help="Why (kept in the history).")
@click.option("--by", "set_by", default="cli", help="Who sets it (kept in the history).")
@click.option("--replace", is_flag=True, help="Correct the active override of the same pattern, scope and date.")
def set_command(pattern: str, input_rate: str, output_rate: str, cache_read: str | None, cache_write: str | None,
                reasoning: str | None, per_call: str | None, provider: str, tenant_id: str, effective_from: str,
                reason: str, set_by: str, replace: bool) -> None:  # fmt: skip
    """Set the price of the models PATTERN matches (a name, or a glob with * and ?) from a date on."""
    raw = {"model_pattern": pattern, "input_per_mtok": input_rate, "output_per_mtok": output_rate,
           "cache_read_per_mtok": cache_read, "cache_write_per_mtok": cache_write, "reasoning_per_mtok": reasoning,
           "call_fee": per_call, "provider": provider, "tenant_id": tenant_id, "effective_from": effective_from,
           "reason": reason, "set_by": set_by}  # fmt: skip
    try:
        [(override_id, warnings)] = _store([parse_override(raw)], replace)
    except PriceError as exc:
        raise click.UsageError(escape(exc)) from None
    except OverrideConflict as exc:
        raise click.UsageError(f"{exc} (--replace)") from None
    for warning in warnings:
        click.echo(f"warning: {escape(warning)}", err=True)
    click.echo(f"override {override_id} set")


@prices.command("history")
@click.option("--tenant", "tenant_id", help="That tenant's and the global overrides.")
@click.option("--model", help="Overrides that match this model name (or are this pattern).")
def history_command(tenant_id: str | None, model: str | None) -> None:
    """Every override set, superseded ones included, newest first."""
    with engines.sessions()() as session:
        rows = history(session, tenant_id=tenant_id, model=model)
        lines = [
            f"{row.id:>6}  {row.created_at:%Y-%m-%d %H:%M}  from {row.effective_from}  "
            f"{escape(row.tenant_id or '*'):<16}{escape(row.model_pattern):<28}{escape(row.provider or '*'):<10}"
            f"in {row.input_per_mtok} cr {_amount(row.cache_read_per_mtok)} cw {_amount(row.cache_write_per_mtok)} "
            f"out {row.output_per_mtok} rs {_amount(row.reasoning_per_mtok)} call {row.call_fee}  "
            f"by {escape(row.set_by or '-')}: {escape(row.reason)}"
            + (f"  [superseded by {row.superseded_by}]" if row.superseded_by else "")
            for row in rows
        ]
    click.echo("\n".join(lines) if lines else "no overrides")


def _read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, fields) per row: 'line N' of a CSV with a header, 'index N' of a JSON list."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        data = json.loads(text)
        if not all(isinstance(item, dict) for item in data):
            raise click.UsageError(f"{path}: a JSON list of objects is expected")
        return [(f"index {i}", item) for i, item in enumerate(data)]
    reader = csv.DictReader(text.splitlines())
    return [(f"line {i}", {k: v for k, v in row.items() if v != ""})
            for i, row in enumerate(reader, start=IMPORT_FIRST_DATA_LINE)]  # fmt: skip


@prices.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Rows correct active overrides of the same pattern, scope and date.")
def import_command(file: Path, replace: bool) -> None:
    """Set many overrides from FILE (CSV with a header, or a JSON list) with the fields of ``set``; all or none."""
    try:
        rows = _read_rows(file)
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as exc:
        raise click.UsageError(f"{file}: {escape(exc)}") from None
    values = []
    for where, raw in rows:
        try:
            values.append(parse_override(raw))
        except PriceError as exc:
            raise click.UsageError(f"{file} {where}: {escape(exc)}") from None
    try:
        done = _store(values, replace)
    except OverrideConflict as exc:
        raise click.UsageError(f"{file}: {exc} (--replace); nothing imported") from None
    for (_, warnings), (where, _) in zip(done, rows, strict=True):
        for warning in warnings:
            click.echo(f"warning: {where}: {escape(warning)}", err=True)
    click.echo(f"imported {len(done)} overrides")
