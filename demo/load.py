"""Demo and operator load: realistic usage events through the producer client.

Used by ``./run`` (python -m demo) and by ``python -m cli load``. Events go
through ``Tracker.track`` exactly as a web process sends them. The generator
waits (never drops) when the producer's buffer runs ahead of the broker.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from demo.ai import ERROR_TYPES, FEATURES, MODELS
from producer import Tracker

USERS_PER_TENANT = 200
BUFFER_HIGH_WATER = 50_000
BACKPRESSURE_SLEEP_S = 0.005
PROGRESS_EVERY = 1_000  # events between progress callbacks
RATE_CHECK_EVERY = 100  # events between pacing checks
LATENCY_LOG_MEAN = 5.5  # lognormal: median ~245 ms, like a hosted model call
LATENCY_LOG_SIGMA = 0.6


@dataclass(frozen=True)
class LoadSpec:
    events: int
    tenants: int = 20
    features: tuple[str, ...] = FEATURES
    error_share: float = 0.03
    rate: float = 0.0  # events per second; 0 = as fast as the producer takes them
    seed: int = 42

    def __post_init__(self) -> None:
        if self.events < 0 or self.tenants < 1 or not self.features:
            raise ValueError("events must be >= 0, tenants >= 1, and at least one feature given")
        if not 0 <= self.error_share <= 1:
            raise ValueError(f"error share must be between 0 and 1, got {self.error_share}")
        if self.rate < 0:
            raise ValueError(f"rate must not be negative, got {self.rate}")

    @property
    def tenant_ids(self) -> list[str]:
        return [f"tenant-{i:02d}" for i in range(1, self.tenants + 1)]


def run_load(tracker: Tracker, spec: LoadSpec, on_progress: Callable[[int], None] | None = None) -> list[uuid.UUID]:
    """Track ``spec.events`` events; returns their ids, for reconciliation."""
    rng = random.Random(spec.seed)
    tenants = spec.tenant_ids
    ids = [uuid.uuid4() for _ in range(spec.events)]  # not from the seeded rng: unique per run
    started = time.monotonic()
    for i, event_id in enumerate(ids):
        failed = rng.random() < spec.error_share
        tenant = tenants[i % len(tenants)]
        tracker.track(
            event_id=event_id, tenant_id=tenant, feature_name=rng.choice(spec.features),
            user_id=f"{tenant}-user-{rng.randrange(USERS_PER_TENANT)}",
            model=rng.choice(MODELS), input_tokens=rng.randint(10, 2000),
            output_tokens=0 if failed else rng.randint(20, 800),
            latency_ms=rng.lognormvariate(LATENCY_LOG_MEAN, LATENCY_LOG_SIGMA),
            status="error" if failed else "success",
            error_type=rng.choice(ERROR_TYPES) if failed else None,
        )  # fmt: skip
        if i % RATE_CHECK_EVERY == 0:
            while tracker.stats().buffered > BUFFER_HIGH_WATER:
                time.sleep(BACKPRESSURE_SLEEP_S)
            if spec.rate:
                ahead = (i + 1) / spec.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        if on_progress is not None and (i + 1) % PROGRESS_EVERY == 0:
            on_progress(PROGRESS_EVERY)
    if on_progress is not None:
        on_progress(spec.events % PROGRESS_EVERY)
    return ids
