"""One usage event: its fields, their limits, and the wire format.

The producer validates at the edge so that the caller gets a clear error naming
the field; the worker validates again because anything can be put on a queue.
Both use the checks below, so the two sides cannot drift apart.

Wire format of one broker message (the ingest task's single argument)::

    {"v": 2, "fields": [...WIRE_FIELDS...], "rows": [[...], [...]]}

Rows are positional lists (half the bytes of dicts); ``fields`` makes each
message self-describing. ``timestamp_us`` is microseconds since the Unix epoch,
UTC, which is exact and cheap to encode.

Versions: 2 added the token buckets, the provider and the time to first token
(``WIRE_FIELDS_V1`` plus ``ADDED_IN_V2``). Workers decode both
(``FIELDS_BY_VERSION``), so producers can be upgraded while version-1 messages
are still queued: a version-1 row has no cache or reasoning tokens, no
provider and no time to first token (0, 0, 0, NULL, NULL).

Token buckets follow the OpenTelemetry GenAI conventions: ``input_tokens``
counts every input token, cache reads and cache writes included, and
``reasoning_tokens`` are part of ``output_tokens``.

``time_to_first_token_ms`` is the wait before a streamed answer's first token,
part of ``latency_ms`` (so never more than it); NULL for a call that did not
stream, which is what tells the two apart (a streamed call can take 0 ms).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, Final

WIRE_VERSION: Final = 2
WIRE_FIELDS_V1: Final = (
    "event_id",
    "tenant_id",
    "feature_name",
    "user_id",
    "model",
    "input_tokens",
    "output_tokens",
    "tokens_used",
    "latency_ms",
    "status",
    "error_type",
    "timestamp_us",
)
ADDED_IN_V2: Final = (
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "provider",
    "time_to_first_token_ms",
)
WIRE_FIELDS: Final = (*WIRE_FIELDS_V1, *ADDED_IN_V2)
# A version-1 row's values of the fields added in version 2, in ADDED_IN_V2 order.
V1_DEFAULTS: Final = (0, 0, 0, None, None)
FIELDS_BY_VERSION: Final = {1: WIRE_FIELDS_V1, 2: WIRE_FIELDS}

MAX_TENANT_ID_LEN: Final = 64
MAX_FEATURE_NAME_LEN: Final = 64
MAX_USER_ID_LEN: Final = 128
MAX_MODEL_LEN: Final = 64
MAX_PROVIDER_LEN: Final = 64  # e.g. OpenTelemetry's gen_ai.provider.name: "openai", "anthropic"
MAX_ERROR_TYPE_LEN: Final = 128
MAX_INT32: Final = 2**31 - 1
STATUSES: Final = frozenset({"success", "error"})

US_PER_DAY: Final = 86_400 * 1_000_000

UTC: Final = UTC
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidEvent(ValueError):
    """An event breaks the contract; the message names the field."""


def check_str(field: str, value: object, max_len: int, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if type(value) is not str:
        raise TypeError(f"{field} must be a string, got {type(value).__name__}")
    if not value and not optional:
        raise InvalidEvent(f"{field} must not be empty")
    if len(value) > max_len:
        raise InvalidEvent(f"{field} is {len(value)} characters long, the limit is {max_len}")
    if "\x00" in value:
        raise InvalidEvent(f"{field} contains a NUL character")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:  # a lone surrogate: PostgreSQL cannot store it
            raise InvalidEvent(f"{field} is not valid Unicode (it contains a lone surrogate)") from None
    return value


def check_count(field: str, value: object) -> int:
    if type(value) is not int:  # bool is an int subclass: refuse it too
        raise TypeError(f"{field} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise InvalidEvent(f"{field} must not be negative, got {value}")
    if value > MAX_INT32:
        raise InvalidEvent(f"{field} is {value}, the limit is {MAX_INT32}")
    return value


def check_milliseconds(field: str, value: object) -> int:
    """A duration in whole milliseconds; floats (e.g. from perf_counter) are rounded."""
    if type(value) is float:
        if not math.isfinite(value):
            raise InvalidEvent(f"{field} must be a finite number, got {value}")
        value = round(value)
    elif type(value) is not int:
        raise TypeError(f"{field} must be a number, got {type(value).__name__}")
    return check_count(field, value)


def check_latency(value: object) -> int:
    """Latency in whole milliseconds; floats (e.g. from perf_counter) are rounded."""
    return check_milliseconds("latency_ms", value)


def check_time_to_first_token(value: object, latency_ms: int) -> int | None:
    """The time to first token in whole ms (None: the call did not stream), at most ``latency_ms``.

    ``latency_ms`` is the checked (rounded) latency. Rounding half to even is
    monotonic, so a time to first token that is at most the raw latency is at
    most the rounded latency too: the comparison refuses only a value that
    really was longer than the call.
    """
    if value is None:
        return None
    # The common case first (track() is on the caller's request path): within [0, latency_ms],
    # which is a checked count, means finite and within MAX_INT32 too.
    kind = type(value)
    if (kind is int or kind is float) and 0 <= value <= latency_ms:  # type: ignore[operator]
        return value if kind is int else round(value)  # type: ignore[return-value,call-overload]
    ttft = check_milliseconds("time_to_first_token_ms", value)
    if ttft > latency_ms:
        raise InvalidEvent(f"time_to_first_token_ms ({ttft}) is more than latency_ms ({latency_ms}), which includes it")
    return ttft


def check_status(value: object) -> str:
    if type(value) is not str or value not in STATUSES:
        raise InvalidEvent(f"status must be one of {sorted(STATUSES)}, got {value!r}")
    return value


def check_tokens_used(value: object, input_tokens: int, output_tokens: int) -> int:
    total = input_tokens + output_tokens
    if value is None:
        return check_count("tokens_used", total)
    value = check_count("tokens_used", value)
    if value < total:
        raise InvalidEvent(f"tokens_used ({value}) is less than input_tokens + output_tokens ({total})")
    return value


def check_token_buckets(
    input_tokens: int, output_tokens: int, cache_read: object, cache_write: object, reasoning: object
) -> tuple[int, int, int]:
    """The cache and reasoning counts, checked against the totals they are part of.

    Cache reads and writes are part of ``input_tokens`` and reasoning tokens
    part of ``output_tokens`` (the OpenTelemetry GenAI convention), so neither
    part may exceed its total.
    """
    # The common case in one expression (track() is on the caller's request path):
    # within the totals, which are checked counts, means within MAX_INT32 too.
    if (
        type(cache_read) is int
        and type(cache_write) is int
        and type(reasoning) is int
        and cache_read >= 0
        and cache_write >= 0
        and 0 <= reasoning <= output_tokens
        and cache_read + cache_write <= input_tokens
    ):
        return cache_read, cache_write, reasoning
    cache_read = check_count("cache_read_tokens", cache_read)
    cache_write = check_count("cache_write_tokens", cache_write)
    reasoning = check_count("reasoning_tokens", reasoning)
    if cache_read + cache_write > input_tokens:
        raise InvalidEvent(
            f"cache_read_tokens + cache_write_tokens ({cache_read + cache_write}) is more than input_tokens"
            f" ({input_tokens}), which includes them"
        )
    if reasoning > output_tokens:
        raise InvalidEvent(
            f"reasoning_tokens ({reasoning}) is more than output_tokens ({output_tokens}), which includes them"
        )
    return cache_read, cache_write, reasoning


def timestamp_to_us(value: object) -> int:
    if not isinstance(value, datetime):
        raise TypeError(f"timestamp must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidEvent("timestamp must be timezone-aware (naive datetimes are ambiguous)")
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def earliest_timestamp(now: datetime, max_past_age_days: int, retention_months: int = 0) -> tuple[datetime, str]:
    """The earliest timestamp accepted at ``now``, and the setting that sets it.

    ``now`` minus ``max_past_age_days`` (EVENT_MAX_PAST_AGE_DAYS), or the first
    day of the oldest month retention keeps (PARTITION_RETENTION_MONTHS, 0 = off)
    if that is later: an event older than retention would only be deleted again,
    and each distinct old month would cost a partition. One function for the
    producer and the worker (storage.partitions.AcceptWindow), so they agree.
    """
    now = now.astimezone(UTC)
    earliest, setting = now - timedelta(days=max_past_age_days), "EVENT_MAX_PAST_AGE_DAYS"
    if retention_months > 0:
        index = now.year * 12 + (now.month - 1) - retention_months  # storage.partitions.Month.shift
        kept = datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)
        if kept > earliest:
            earliest, setting = kept, "PARTITION_RETENTION_MONTHS"
    return earliest, setting


def too_old(timestamp: datetime, earliest: datetime, setting: str) -> str:
    """The refusal of a timestamp older than ``earliest`` (producer and worker say the same)."""
    if setting == "PARTITION_RETENTION_MONTHS":
        return (
            f"timestamp {timestamp.isoformat()} is older than the retention window,"
            f" which starts at {earliest.isoformat()} (PARTITION_RETENTION_MONTHS)"
        )
    return (
        f"timestamp {timestamp.isoformat()} is too old: the earliest accepted is"
        f" {earliest.isoformat()} (EVENT_MAX_PAST_AGE_DAYS)"
    )


def check_timestamp(
    value: object,
    max_future_us: int,
    *,
    max_past_age_days: int | None = None,
    retention_months: int = 0,
) -> int:
    """``timestamp_to_us``, refusing a time outside the window the worker accepts.

    A far-future timestamp is a broken clock, a far-past one a broken clock or
    an attempt to make the worker create partitions; refusing it here gives the
    caller the error instead of a dead letter (the worker checks again). No
    lower bound when ``max_past_age_days`` is None.
    """
    us = timestamp_to_us(value)
    now_us = time.time_ns() // 1000
    if us - now_us > max_future_us:
        raise InvalidEvent(
            f"timestamp {us_to_timestamp(us).isoformat()} is more than"
            f" {max_future_us / 1e6:g} s ahead of this clock (EVENT_MAX_FUTURE_SKEW_S)"
        )
    # Cheap test first: only a timestamp near or past the bound pays for the datetimes.
    if max_past_age_days is not None and (now_us - us >= max_past_age_days * US_PER_DAY or retention_months > 0):
        earliest, setting = earliest_timestamp(us_to_timestamp(now_us), max_past_age_days, retention_months)
        if us < timestamp_to_us(earliest):
            raise InvalidEvent(too_old(us_to_timestamp(us), earliest, setting))
    return us


def us_to_timestamp(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def parse_wire_row(fields: tuple[str, ...] | list[str], row: object) -> dict[str, Any]:
    """Check one wire row and return the column mapping for the events table.

    Every contract breach, type errors included, comes out as InvalidEvent so
    that the worker can dead-letter the row with its reason. For many rows of
    one message, ``wire_row_parser(fields)`` looks the field positions up once.
    """
    return wire_row_parser(fields)(row)


def wire_row_parser(fields: tuple[str, ...] | list[str]) -> Callable[[object], dict[str, Any]]:
    """``parse_wire_row`` bound to one field order (a message's ``fields``).

    The values are picked by position (no per-row dict of the raw values), in
    ``WIRE_FIELDS`` order; ``fields`` must name every field of one wire version
    (``FIELDS_BY_VERSION``): a version-1 row gets ``V1_DEFAULTS`` for the rest.
    """
    width = len(fields)
    names = list(fields)
    pick: Callable[[Any], tuple[Any, ...]]
    if set(ADDED_IN_V2).isdisjoint(names):
        pick = _with_v1_defaults(itemgetter(*(names.index(name) for name in WIRE_FIELDS_V1)))
    else:
        pick = itemgetter(*(names.index(name) for name in WIRE_FIELDS))

    def parse(row: object) -> dict[str, Any]:
        try:
            return _parse_wire_values(row, width, pick)
        except TypeError as exc:
            raise InvalidEvent(str(exc)) from None

    return parse


def _with_v1_defaults(pick_v1: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any], tuple[Any, ...]]:
    def pick(row: Any) -> tuple[Any, ...]:
        return (*pick_v1(row), *V1_DEFAULTS)

    return pick


def _parse_wire_values(row: object, width: int, pick: Callable[[Any], tuple[Any, ...]]) -> dict[str, Any]:
    if not isinstance(row, list) or len(row) != width:
        raise InvalidEvent(f"row must be a list of {width} values")
    # The order of WIRE_FIELDS.
    (
        event_id_hex,
        tenant_id,
        feature_name,
        user_id,
        model,
        input_tokens,
        output_tokens,
        tokens_used,
        latency_ms,
        status,
        error_type,
        ts_us,
        cache_read_tokens,
        cache_write_tokens,
        reasoning_tokens,
        provider,
        time_to_first_token_ms,
    ) = pick(row)
    try:
        event_id = uuid.UUID(hex=event_id_hex)
    except (TypeError, ValueError, AttributeError):
        raise InvalidEvent(f"event_id must be a UUID string, got {event_id_hex!r}") from None
    input_tokens = check_count("input_tokens", input_tokens)
    output_tokens = check_count("output_tokens", output_tokens)
    cache_read, cache_write, reasoning = check_token_buckets(
        input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens
    )
    if type(ts_us) is not int:
        raise TypeError(f"timestamp_us must be an integer, got {type(ts_us).__name__}")
    try:
        timestamp = us_to_timestamp(ts_us)
    except OverflowError:
        raise InvalidEvent(f"timestamp_us {ts_us} is out of range") from None
    latency = check_latency(latency_ms)
    return {
        "event_id": event_id,
        "tenant_id": check_str("tenant_id", tenant_id, MAX_TENANT_ID_LEN),
        "feature_name": check_str("feature_name", feature_name, MAX_FEATURE_NAME_LEN),
        "user_id": check_str("user_id", user_id, MAX_USER_ID_LEN),
        "model": check_str("model", model, MAX_MODEL_LEN, optional=True),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "tokens_used": check_tokens_used(tokens_used, input_tokens, output_tokens),
        "latency_ms": latency,
        "status": check_status(status),
        "error_type": check_str("error_type", error_type, MAX_ERROR_TYPE_LEN, optional=True),
        "timestamp": timestamp,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "reasoning_tokens": reasoning,
        "provider": check_str("provider", provider, MAX_PROVIDER_LEN, optional=True),
        "time_to_first_token_ms": check_time_to_first_token(time_to_first_token_ms, latency),
    }
