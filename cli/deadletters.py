"""``python -m cli dead-letters ...``: list, replay (after a fix) and purge dead letters;
move the messages the broker kept in ``<queue>.dead`` back to the ingest queue."""

from __future__ import annotations

from datetime import UTC, datetime

import click
from sqlalchemy import delete, func, select

from cli import engines
from config import get_settings
from models import DeadLetter
from monitoring.escape import escape
from storage.replay import replay

REASON_WIDTH = 70
PAYLOAD_WIDTH = 100


def _short(text: str, width: int) -> str:
    """``text`` with its control characters escaped (it came from a client), cut to ``width``."""
    text = escape(text)
    return text if len(text) <= width else text[: width - 1] + "…"


@click.group("dead-letters")
def dead_letters() -> None:
    """Events and messages that could not be stored, with the reason."""


@dead_letters.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--source", type=click.Choice(["worker", "queue", "producer"]), help="Only this source.")
@click.option("--payload/--no-payload", default=False, help="Also print each payload.")
def list_command(limit: int, source: str | None, payload: bool) -> None:
    """Newest first: id, source, attempts, last seen, reason."""
    query = select(DeadLetter).order_by(DeadLetter.last_seen.desc(), DeadLetter.id.desc()).limit(limit)
    count_query = select(func.count()).select_from(DeadLetter)
    if source:
        query = query.where(DeadLetter.source == source)
        count_query = count_query.where(DeadLetter.source == source)
    with engines.sessions()() as session:
        total = session.scalar(count_query) or 0
        letters = session.scalars(query).all()
    click.echo(f"{total} dead letters" + (f" from {source}" if source else ""))
    for letter in letters:
        click.echo(
            f"#{letter.id:<7} {escape(letter.source):<8} x{letter.attempts:<4}"
            f" {letter.last_seen:%Y-%m-%d %H:%M:%S}  {_short(letter.reason, REASON_WIDTH)}"
        )
        if payload:
            click.echo(f"          {_short(letter.payload, PAYLOAD_WIDTH)}")


@dead_letters.command("replay")
@click.argument("ids", type=int, nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
def replay_command(ids: tuple[int, ...], replay_all: bool) -> None:
    """Store what now passes, keep what still fails (its attempts go up). Idempotent."""
    if not ids and not replay_all:
        raise click.UsageError("name dead-letter ids, or pass --all")
    with engines.sessions().begin() as session:
        result = replay(session, None if replay_all else list(ids), get_settings())
    click.echo(
        f"replayed {result.replayed} dead letters: {result.stored} events stored,"
        f" {result.duplicates} already stored, {result.still_failing} still failing"
    )


@dead_letters.command("purge")
@click.argument("ids", type=int, nargs=-1)
@click.option("--before", type=click.DateTime(), help="Purge those last seen before this time (UTC).")
@click.option("--all", "purge_all", is_flag=True, help="Purge every dead letter.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge_command(ids: tuple[int, ...], before: datetime | None, purge_all: bool, yes: bool) -> None:
    """Delete dead letters for good."""
    statement = delete(DeadLetter)
    if ids:
        statement = statement.where(DeadLetter.id.in_(ids))
    elif before is not None:
        statement = statement.where(DeadLetter.last_seen < before.replace(tzinfo=UTC))
    elif not purge_all:
        raise click.UsageError("name dead-letter ids, or pass --before or --all")
    if not yes:
        click.confirm("Delete these dead letters for good?", abort=True)
    with engines.sessions().begin() as session:
        deleted = session.execute(statement).rowcount
    click.echo(f"purged {deleted} dead letters")


@dead_letters.command("requeue-broker")
@click.option("--limit", type=click.IntRange(min=1), help="Move at most this many messages.")
def requeue_broker_command(limit: int | None) -> None:
    """Move the messages in the broker's <INGEST_QUEUE>.dead back to the ingest queue."""
    from tasks.app import app
    from tasks.broker import dead_queue_name, requeue_dead

    queue = get_settings().ingest_queue
    moved = requeue_dead(app.connection_for_write(), queue, limit)
    click.echo(f"moved {moved} messages from {dead_queue_name(queue)} back to {queue}")
