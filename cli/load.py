"""``python -m cli load``: generate usage events through the producer, with a progress bar."""

from __future__ import annotations

import time

import click
from tqdm import tqdm

from config import get_settings
from demo.ai import FEATURES
from demo.load import LoadSpec, run_load
from producer import Tracker

FLUSH_TIMEOUT_S = 30.0


@click.command("load")
@click.option("--rate", type=click.FloatRange(min=0), default=1000.0, show_default=True,
              help="Events per second; 0 = as fast as possible.")  # fmt: skip
@click.option("--duration", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds of load (with --rate); ignored when --events is given.")  # fmt: skip
@click.option("--events", type=click.IntRange(min=0), default=None, help="Exact number of events.")
@click.option("--tenants", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--features", default=",".join(FEATURES), show_default=True, help="Comma-separated feature names.")
@click.option("--error-share", type=click.FloatRange(0, 1), default=0.03, show_default=True)
def load_command(
    rate: float, duration: float, events: int | None, tenants: int, features: str, error_share: float
) -> None:
    """Track realistic AI-usage events, as a web process would."""
    if events is None:
        if rate == 0:
            raise click.UsageError("with --rate 0 (as fast as possible) give --events")
        events = int(rate * duration)
    names = tuple(name.strip() for name in features.split(",") if name.strip())
    try:
        spec = LoadSpec(events=events, tenants=tenants, features=names, error_share=error_share, rate=rate)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    settings = get_settings()
    tracker = Tracker(settings)
    started = time.monotonic()
    with tqdm(total=events, desc="tracked", unit="ev", unit_scale=True, mininterval=1) as bar:
        run_load(tracker, spec, bar.update)
    published = tracker.flush(FLUSH_TIMEOUT_S)
    elapsed = time.monotonic() - started
    stats = tracker.stats()
    tracker.close(timeout=0)
    if not published:
        raise click.ClickException(
            f"the broker did not take every event within {FLUSH_TIMEOUT_S:.0f}s"
            f" ({stats.buffered + stats.spooled:,} waiting); is CELERY_BROKER_URL right and the broker up?"
            + (
                f" Spooled events are replayed from {settings.producer_spool_dir} by the next producer."
                if stats.spooled
                else ""
            )
        )
    click.echo(f"tracked and published {events:,} events in {elapsed:.1f}s ({events / max(elapsed, 1e-9):,.0f}/s)")
