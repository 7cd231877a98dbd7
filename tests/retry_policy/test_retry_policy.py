"""retry_policy: the bounds of every pause, and when a retried call stops.

In-process: the policy is pure arithmetic plus a loop. The last tests give the
storage loops real PostgreSQL errors (raised with the SQLSTATE they retry on),
so the SQLSTATE predicate is checked against the driver, not a stand-in.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from retry_policy import MAX_EXPONENT, Backoff, call_with_retry
from storage import partitions, rollups
from storage.sqlstate import sqlstate, sqlstate_in
from tasks.ingest import backoff_seconds

HUGE_RETRIES = [MAX_EXPONENT, MAX_EXPONENT + 1, 1023, 1024, 1025, 5_000, 10**6, 10**18]
SAMPLES = 500


class FlakyError(Exception):
    """The retryable failure of the tests below."""


class BrokenError(Exception):
    """A failure the tests below never retry."""


def failing(times: int, error: Callable[[], Exception], result: str = "done") -> tuple[Callable[[], str], list[int]]:
    """An action failing ``times`` times with ``error()``, then returning ``result``; and its call log."""
    calls: list[int] = []

    def action() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= times:
            raise error()
        return result

    return action, calls


# --- Backoff.delay -----------------------------------------------------------------------


@pytest.mark.parametrize("retry", [-(10**6), -1, 0, 1, 2, 10, 30, *HUGE_RETRIES])
@pytest.mark.parametrize("base_s, cap_s", [(0.05, 5.0), (0.2, 0.8), (1.0, 60.0), (1e-9, 1e9), (3.0, 0.0)])
def test_a_pause_is_never_negative_nor_above_the_cap(retry: int, base_s: float, cap_s: float) -> None:
    for jitter in (True, False):
        backoff = Backoff(base_s, cap_s, jitter=jitter)
        delays = [backoff.delay(retry) for _ in range(SAMPLES if jitter else 1)]
        assert all(0.0 <= delay <= cap_s for delay in delays), (retry, jitter, min(delays), max(delays))
        assert all(math.isfinite(delay) for delay in delays)


@pytest.mark.parametrize("retry", HUGE_RETRIES)
def test_a_huge_retry_count_gives_the_cap_not_an_overflow(retry: int) -> None:
    # 2.0**1024 raises OverflowError; the capped exponent keeps every count computable.
    assert Backoff(1.0, 60.0, jitter=False).delay(retry) == 60.0
    # With jitter the pause still spreads over the whole cap, not collapsing towards 0.
    delays = [Backoff(1.0, 60.0).delay(retry) for _ in range(SAMPLES)]
    assert max(delays) > 45.0 and min(delays) < 15.0, (min(delays), max(delays))


def test_without_jitter_the_pause_doubles_from_the_base_up_to_the_cap() -> None:
    backoff = Backoff(0.05, 1.0, jitter=False)
    assert [backoff.delay(n) for n in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.delay(-3) == 0.05  # a negative count is the first retry


@pytest.mark.parametrize("retry", [0, 1, 2, 3, 4, 5])
def test_jitter_is_uniform_between_zero_and_the_exponential_ceiling(retry: int) -> None:
    backoff = Backoff(0.2, 5.0)
    ceiling = min(5.0, 0.2 * 2**retry)
    delays = [backoff.delay(retry) for _ in range(SAMPLES)]
    assert all(0.0 <= delay <= ceiling for delay in delays), (ceiling, max(delays))
    # Both halves of the range are reached (each misses with probability 2**-500).
    assert min(delays) < ceiling / 2 < max(delays)


@pytest.mark.parametrize(
    "base_s, cap_s, field",
    [(0.0, 1.0, "base_s"), (-1.0, 1.0, "base_s"), (1.0, -0.1, "cap_s"), (math.nan, 1.0, "base_s")],
)
def test_a_backoff_refuses_a_meaningless_base_or_cap(base_s: float, cap_s: float, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Backoff(base_s, cap_s)


# --- call_with_retry: the stop condition ------------------------------------------------------


def retry_flaky(
    action: Callable[[], str],
    attempts: int,
    sleeps: list[float],
    on_retry: Callable[[Exception, int, float], None] | None = None,
) -> str:
    """Retry ``FlakyError`` with pauses 0.1, 0.2, 0.3, 0.3 s.. recorded in ``sleeps`` instead of slept."""
    return call_with_retry(
        action,
        attempts=attempts,
        retryable=lambda exc: isinstance(exc, FlakyError),
        backoff=Backoff(0.1, 0.3, jitter=False),
        on_retry=on_retry,
        sleep=sleeps.append,
    )


def test_a_call_that_recovers_returns_its_result_after_one_pause_per_failure() -> None:
    action, calls = failing(3, FlakyError)
    sleeps: list[float] = []
    assert retry_flaky(action, attempts=5, sleeps=sleeps) == "done"
    assert calls == [1, 2, 3, 4]
    assert sleeps == [0.1, 0.2, 0.3]  # delay(0), delay(1), delay(2) capped


@pytest.mark.parametrize("attempts", [1, 2, 5])
def test_a_call_stops_after_its_attempts_and_raises_the_last_error(attempts: int) -> None:
    action, calls = failing(10**6, lambda: FlakyError(f"failure {len(calls)}"))
    sleeps: list[float] = []
    with pytest.raises(FlakyError, match=f"^failure {attempts}$"):
        retry_flaky(action, attempts=attempts, sleeps=sleeps)
    assert len(calls) == attempts
    assert len(sleeps) == attempts - 1  # no pause after the last attempt


def test_an_error_that_is_not_retryable_propagates_at_once() -> None:
    action, calls = failing(1, BrokenError)
    sleeps: list[float] = []
    with pytest.raises(BrokenError):
        retry_flaky(action, attempts=5, sleeps=sleeps)
    assert calls == [1] and sleeps == []


def test_on_retry_sees_each_failure_its_attempt_number_and_the_pause() -> None:
    action, _calls = failing(2, FlakyError)
    seen: list[tuple[str, int, float]] = []
    sleeps: list[float] = []
    retry_flaky(
        action, attempts=3, sleeps=sleeps, on_retry=lambda exc, n, pause: seen.append((type(exc).__name__, n, pause))
    )
    assert seen == [("FlakyError", 1, 0.1), ("FlakyError", 2, 0.2)]
    assert sleeps == [0.1, 0.2]


def test_fewer_than_one_attempt_is_refused() -> None:
    action, calls = failing(0, FlakyError)
    with pytest.raises(ValueError, match="attempts"):
        retry_flaky(action, attempts=0, sleeps=[])
    assert calls == []


# --- the four users' schedules -----------------------------------------------------------------


def test_the_celery_countdown_stays_within_the_ingest_cap_at_any_retry() -> None:
    for retries in (0, 3, 1023, 10**6):
        assert all(0.0 <= backoff_seconds(retries, 60) <= 60 for _ in range(SAMPLES))
    assert all(backoff_seconds(2, 60) <= 4.0 for _ in range(SAMPLES))  # 1 s * 2**2 before the cap


def test_the_storage_loops_pause_within_their_old_bounds() -> None:
    # partitions: full jitter under min(5 s, 0.2 s * 2**n), as the hand-written loop did
    for retry in range(8):
        assert all(0.0 <= partitions.LOCK_BACKOFF.delay(retry) <= min(5.0, 0.2 * 2**retry) for _ in range(SAMPLES))
    # rollups: 4 pauses between 5 attempts, none longer than the old longest (0.8 s)
    assert [rollups.RETRY_BACKOFF.delay(n) for n in range(rollups.RETRY_ATTEMPTS - 1)] == [0.2, 0.4, 0.8, 0.8]


# --- real SQLSTATEs --------------------------------------------------------------------------------


def raise_sqlstate(engine: Engine, code: str) -> None:
    """A real error from PostgreSQL carrying ``code`` (a constant of the tests, never input)."""
    with engine.begin() as conn:
        conn.execute(text(f"DO $$ BEGIN RAISE EXCEPTION 'test error' USING ERRCODE = '{code}'; END $$"))


def test_sqlstate_reads_the_code_of_a_real_database_error(engine: Engine) -> None:
    with pytest.raises(DBAPIError) as raised:
        raise_sqlstate(engine, "40P01")
    assert sqlstate(raised.value) == "40P01"
    assert sqlstate_in(frozenset({"40P01"}))(raised.value)
    assert not sqlstate_in(frozenset({"55P03"}))(raised.value)
    assert sqlstate(ValueError("not a database error")) is None


def test_a_rollup_transaction_is_redone_after_a_deadlock_then_succeeds(engine: Engine) -> None:
    calls: list[int] = []
    codes = iter(["40P01", "40001"])  # deadlock_detected, then serialization_failure

    def one_chunk() -> str:
        calls.append(len(calls) + 1)
        code = next(codes, None)
        if code is not None:
            raise_sqlstate(engine, code)
        return "committed"

    assert rollups._retrying(one_chunk) == "committed"
    assert calls == [1, 2, 3]


def test_a_rollup_error_of_another_sqlstate_is_not_redone(engine: Engine) -> None:
    calls: list[int] = []

    def one_chunk() -> str:
        calls.append(1)
        raise_sqlstate(engine, "22012")  # division_by_zero: redoing cannot help
        return "unreachable"

    with pytest.raises(DBAPIError) as raised:
        rollups._retrying(one_chunk)
    assert sqlstate(raised.value) == "22012" and calls == [1]


def test_partition_ddl_gives_up_after_its_attempts_with_the_lock_timeout_error(engine: Engine) -> None:
    calls: list[int] = []

    def create() -> str:
        calls.append(1)
        raise_sqlstate(engine, "55P03")  # lock_not_available, as lock_timeout raises it
        return "unreachable"

    policy = partitions.PartitionPolicy(lock_timeout_ms=10, lock_retries=2)
    with pytest.raises(partitions.PartitionLockTimeout, match="stayed locked through 3 attempts of 10 ms") as raised:
        partitions.with_lock_retry(create, policy, "create a test partition")
    assert len(calls) == 3
    assert isinstance(raised.value.__cause__, DBAPIError) and sqlstate(raised.value.__cause__) == "55P03"
