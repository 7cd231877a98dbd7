"""The event contract, at both edges: ``Tracker.track`` (producer) and
``parse_wire_row`` / ``decode_message`` (worker). No services needed: a
refused event never reaches the buffer, so the publishing thread never starts.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from config import Settings
from producer import Tracker
from schema.event import (
    MAX_ERROR_TYPE_LEN,
    MAX_FEATURE_NAME_LEN,
    MAX_INT32,
    MAX_MODEL_LEN,
    MAX_PROVIDER_LEN,
    MAX_TENANT_ID_LEN,
    MAX_USER_ID_LEN,
    WIRE_FIELDS,
    WIRE_FIELDS_V1,
    WIRE_VERSION,
    InvalidEvent,
    parse_wire_row,
    timestamp_to_us,
)
from schema.message import decode_message
from schema.reasons import missing_rows_and_fields

# Nothing listens on port 1: a test that accidentally publishes fails loudly.
UNREACHABLE_BROKER = "redis://127.0.0.1:1/0"

VALID: dict[str, Any] = {
    "tenant_id": "acme",
    "feature_name": "summarize",
    "user_id": "user-1",
    "model": "gpt-test",
    "input_tokens": 10,
    "output_tokens": 5,
    "latency_ms": 120,
    "status": "success",
}


@pytest.fixture
def tracker() -> Tracker:
    return Tracker(
        Settings(
            celery_broker_url=UNREACHABLE_BROKER,
            producer_spool_dir="",
            producer_flush_interval_ms=3_600_000,
            producer_exit_flush_timeout_s=0,
        )
    )


# (overrides of VALID, expected exception, the field its message must name)
PRODUCER_CASES: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("tokens as str", {"input_tokens": "3"}, TypeError, "input_tokens"),
    ("tokens as float", {"output_tokens": 3.0}, TypeError, "output_tokens"),
    ("tokens as bool", {"input_tokens": True}, TypeError, "input_tokens"),
    ("tokens_used as bool", {"tokens_used": False}, TypeError, "tokens_used"),
    ("tenant as int", {"tenant_id": 5}, TypeError, "tenant_id"),
    ("feature as bytes", {"feature_name": b"x"}, TypeError, "feature_name"),
    ("user as None", {"user_id": None}, TypeError, "user_id"),
    ("negative input", {"input_tokens": -1}, ValueError, "input_tokens"),
    ("negative output", {"output_tokens": -5}, ValueError, "output_tokens"),
    ("negative latency", {"latency_ms": -1}, ValueError, "latency_ms"),
    ("tokens over int32", {"input_tokens": MAX_INT32 + 1}, ValueError, "input_tokens"),
    ("sum over int32", {"input_tokens": MAX_INT32, "output_tokens": 1}, ValueError, "tokens_used"),
    ("empty tenant", {"tenant_id": ""}, ValueError, "tenant_id"),
    ("long tenant", {"tenant_id": "t" * (MAX_TENANT_ID_LEN + 1)}, ValueError, "tenant_id"),
    ("long feature", {"feature_name": "f" * (MAX_FEATURE_NAME_LEN + 1)}, ValueError, "feature_name"),
    ("long user", {"user_id": "u" * (MAX_USER_ID_LEN + 1)}, ValueError, "user_id"),
    ("long model", {"model": "m" * (MAX_MODEL_LEN + 1)}, ValueError, "model"),
    ("long error_type", {"status": "error", "error_type": "e" * (MAX_ERROR_TYPE_LEN + 1)}, ValueError, "error_type"),
    ("NUL in user", {"user_id": "a\x00b"}, ValueError, "user_id"),
    ("NUL in model", {"model": "\x00"}, ValueError, "model"),
    ("lone surrogate in user", {"user_id": "caf\udce9"}, ValueError, "user_id"),
    ("lone surrogate in error_type", {"error_type": "\ud800"}, ValueError, "error_type"),
    ("naive timestamp", {"timestamp": datetime(2024, 1, 1, 12, 0)}, ValueError, "timestamp"),
    ("timestamp as str", {"timestamp": "2024-01-01T00:00:00Z"}, TypeError, "timestamp"),
    ("unknown status", {"status": "ok"}, ValueError, "status"),
    ("status case", {"status": "Success"}, ValueError, "status"),
    ("tokens_used too low", {"input_tokens": 10, "output_tokens": 5, "tokens_used": 14}, ValueError, "tokens_used"),
    ("tokens_used negative", {"tokens_used": -1}, ValueError, "tokens_used"),
    ("NaN latency", {"latency_ms": math.nan}, ValueError, "latency_ms"),
    ("inf latency", {"latency_ms": math.inf}, ValueError, "latency_ms"),
    ("-inf latency", {"latency_ms": -math.inf}, ValueError, "latency_ms"),
    ("latency as str", {"latency_ms": "12"}, TypeError, "latency_ms"),
    ("latency as bool", {"latency_ms": True}, TypeError, "latency_ms"),
    ("event_id not a uuid", {"event_id": "not-a-uuid"}, ValueError, "event_id"),
    ("event_id int", {"event_id": 12345}, ValueError, "event_id"),
    ("event_id short hex", {"event_id": "abcdef"}, ValueError, "event_id"),
    ("cache reads as str", {"cache_read_tokens": "3"}, TypeError, "cache_read_tokens"),
    ("cache writes as bool", {"cache_write_tokens": True}, TypeError, "cache_write_tokens"),
    ("reasoning as float", {"reasoning_tokens": 1.0}, TypeError, "reasoning_tokens"),
    ("negative cache reads", {"cache_read_tokens": -1}, ValueError, "cache_read_tokens"),
    ("negative cache writes", {"cache_write_tokens": -1}, ValueError, "cache_write_tokens"),
    ("negative reasoning", {"reasoning_tokens": -1}, ValueError, "reasoning_tokens"),
    ("cache over int32", {"cache_read_tokens": MAX_INT32 + 1}, ValueError, "cache_read_tokens"),
    ("cache reads over input", {"input_tokens": 10, "cache_read_tokens": 11}, ValueError, "cache_read_tokens"),
    ("cache reads + writes over input", {"input_tokens": 10, "cache_read_tokens": 6, "cache_write_tokens": 5},
     ValueError, "cache_write_tokens"),
    ("reasoning over output", {"output_tokens": 5, "reasoning_tokens": 6}, ValueError, "reasoning_tokens"),
    ("provider as int", {"provider": 5}, TypeError, "provider"),
    ("long provider", {"provider": "p" * (MAX_PROVIDER_LEN + 1)}, ValueError, "provider"),
    ("NUL in provider", {"provider": "open\x00ai"}, ValueError, "provider"),
    ("lone surrogate in provider", {"provider": "\udcff"}, ValueError, "provider"),
    ("ttft as str", {"time_to_first_token_ms": "80"}, TypeError, "time_to_first_token_ms"),
    ("ttft as bool", {"time_to_first_token_ms": True}, TypeError, "time_to_first_token_ms"),
    ("negative ttft", {"time_to_first_token_ms": -1}, ValueError, "time_to_first_token_ms"),
    ("negative float ttft", {"time_to_first_token_ms": -0.6}, ValueError, "time_to_first_token_ms"),
    ("NaN ttft", {"time_to_first_token_ms": math.nan}, ValueError, "time_to_first_token_ms"),
    ("inf ttft", {"time_to_first_token_ms": math.inf}, ValueError, "time_to_first_token_ms"),
    ("ttft over latency", {"latency_ms": 120, "time_to_first_token_ms": 121}, ValueError, "time_to_first_token_ms"),
    ("ttft over latency once rounded", {"latency_ms": 120.4, "time_to_first_token_ms": 120.6}, ValueError,
     "time_to_first_token_ms"),
    ("ttft over int32", {"latency_ms": 5, "time_to_first_token_ms": MAX_INT32 + 1}, ValueError,
     "time_to_first_token_ms"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "error", "field"), [case[1:] for case in PRODUCER_CASES], ids=[case[0] for case in PRODUCER_CASES]
)
def test_track_refuses_and_names_the_field(
    tracker: Tracker, overrides: dict[str, Any], error: type[Exception], field: str
) -> None:
    with pytest.raises(error) as excinfo:
        tracker.track(**{**VALID, **overrides})
    assert field in str(excinfo.value)
    # Refused before anything is buffered; no thread, no connection.
    assert tracker.stats().buffered == 0
    assert tracker._thread is None


def test_track_buffers_the_token_buckets_and_the_provider(tracker: Tracker) -> None:
    """The buckets may equal their totals (all input cached, all output reasoning); the row is wire version 2."""
    try:
        buckets = {"cache_read_tokens": 6, "cache_write_tokens": 4, "reasoning_tokens": 5, "provider": "openai"}
        assert tracker.track(**{**VALID, "input_tokens": 10, "output_tokens": 5, **buckets}, event_id=uuid.uuid4())
        assert tracker.track(**VALID, event_id=uuid.uuid4())  # event ids are otherwise given at publish
        with_buckets, without = (parse_wire_row(WIRE_FIELDS, row) for row in tracker._buffer)
        assert {name: with_buckets[name] for name in buckets} == buckets
        assert [without[name] for name in buckets] == [0, 0, 0, None]
    finally:
        tracker.close(timeout=0)


def test_track_buffers_the_time_to_first_token(tracker: Tracker) -> None:
    """Rounded like latency_ms, equal to it at most; None (a call that did not stream) stays None, 0 stays 0."""
    try:
        cases = [(120.4, 80.5, 80), (120.4, 120.3, 120), (120, 120, 120), (7, 0, 0), (7, 0.4, 0), (7, None, None)]
        for latency, ttft, _ in cases:
            assert tracker.track(**{**VALID, "latency_ms": latency, "time_to_first_token_ms": ttft})
        stored = [parse_wire_row(WIRE_FIELDS, [uuid.uuid4().hex, *row[1:]]) for row in tracker._buffer]
        assert [m["time_to_first_token_ms"] for m in stored] == [expected for *_, expected in cases]
        assert all(
            m["time_to_first_token_ms"] is None or m["time_to_first_token_ms"] <= m["latency_ms"] for m in stored
        )
    finally:
        tracker.close(timeout=0)


@pytest.mark.parametrize("missing", ["tenant_id", "feature_name", "user_id"])
def test_track_requires_the_identifying_fields(tracker: Tracker, missing: str) -> None:
    event = {key: value for key, value in VALID.items() if key != missing}
    with pytest.raises(TypeError, match=missing):
        tracker.track(**event)
    assert tracker.stats().buffered == 0


def test_track_refuses_unknown_fields(tracker: Tracker) -> None:
    with pytest.raises(TypeError, match="tokens"):
        tracker.track(**VALID, tokens=3)


def test_track_accepts_a_valid_event(tracker: Tracker) -> None:
    """The positive control of the cases above: the same event, valid, is buffered."""
    try:
        assert tracker.track(
            **{
                **VALID,
                "latency_ms": 12.6,  # floats (perf_counter) are rounded
                "status": "error",
                "error_type": "Timeout",
                "tokens_used": 20,
                "timestamp": datetime.now(timezone(timedelta(hours=-5))),  # any aware zone
                "event_id": uuid.uuid4(),
            }
        )
        assert tracker.track(**{**VALID, "model": None, "event_id": str(uuid.uuid4())})
        assert tracker.stats().buffered == 2
    finally:
        tracker.close(timeout=0)


# --- the worker side ----------------------------------------------------------------


def wire_row(**overrides: Any) -> list[Any]:
    values = {
        "event_id": uuid.uuid4().hex,
        "tenant_id": "acme",
        "feature_name": "summarize",
        "user_id": "user-1",
        "model": "gpt-test",
        "input_tokens": 10,
        "output_tokens": 5,
        "tokens_used": 15,
        "latency_ms": 120,
        "status": "success",
        "error_type": None,
        "timestamp_us": timestamp_to_us(datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)),
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "provider": None,
        "time_to_first_token_ms": None,
        **overrides,
    }
    return [values[name] for name in WIRE_FIELDS]


def test_parse_wire_row_maps_a_valid_row() -> None:
    event_id = uuid.uuid4()
    mapping = parse_wire_row(
        WIRE_FIELDS,
        wire_row(event_id=event_id.hex, tokens_used=None, latency_ms=7.4, input_tokens=10, cache_read_tokens=6,
                 cache_write_tokens=4, output_tokens=5, reasoning_tokens=5, provider="anthropic",
                 time_to_first_token_ms=6.6),
    )  # fmt: skip
    assert mapping == {
        "event_id": event_id,
        "tenant_id": "acme",
        "feature_name": "summarize",
        "user_id": "user-1",
        "model": "gpt-test",
        "input_tokens": 10,
        "output_tokens": 5,
        "tokens_used": 15,  # defaults to input + output
        "latency_ms": 7,
        "status": "success",
        "error_type": None,
        "timestamp": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        # Parts of their totals, and equal to them at most.
        "cache_read_tokens": 6,
        "cache_write_tokens": 4,
        "reasoning_tokens": 5,
        "provider": "anthropic",
        "time_to_first_token_ms": 7,  # rounded like latency_ms, and equal to it at most
    }


def test_a_version_1_message_decodes_with_no_buckets_no_provider_and_no_time_to_first_token() -> None:
    """Version-1 messages still queued when producers are upgraded are stored, not dead-lettered."""
    v2_row = wire_row(user_id="old")
    v1_row = [v2_row[WIRE_FIELDS.index(name)] for name in reversed(WIRE_FIELDS_V1)]
    decoded = decode_message({"v": 1, "fields": list(reversed(WIRE_FIELDS_V1)), "rows": [v1_row]})
    assert decoded.invalid == []
    [(mapping, payload)] = decoded.rows
    assert mapping == parse_wire_row(WIRE_FIELDS, v2_row)  # the same event as version 2 with the defaults
    assert (mapping["cache_read_tokens"], mapping["cache_write_tokens"], mapping["reasoning_tokens"]) == (0, 0, 0)
    assert mapping["provider"] is None
    assert mapping["time_to_first_token_ms"] is None
    assert dict(payload) == dict(zip(reversed(WIRE_FIELDS_V1), v1_row, strict=True))  # as received


def test_each_version_must_name_exactly_its_fields() -> None:
    v1_fields_in_v2 = decode_message({"v": 2, "fields": list(WIRE_FIELDS_V1), "rows": [wire_row()[:12]]})
    v2_fields_in_v1 = decode_message({"v": 1, "fields": list(WIRE_FIELDS), "rows": [wire_row()]})
    for decoded, fields in ((v1_fields_in_v2, WIRE_FIELDS), (v2_fields_in_v1, WIRE_FIELDS_V1)):
        assert decoded.rows == []
        [(_, reason)] = decoded.invalid
        assert reason == missing_rows_and_fields(fields)


# (wire overrides, the field the InvalidEvent message must name)
WORKER_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("event_id garbage", {"event_id": "zzz"}, "event_id"),
    ("event_id null", {"event_id": None}, "event_id"),
    ("event_id int", {"event_id": 5}, "event_id"),
    ("tenant as int", {"tenant_id": 5}, "tenant_id"),
    ("tenant null", {"tenant_id": None}, "tenant_id"),
    ("tokens as str", {"input_tokens": "3"}, "input_tokens"),
    ("tokens as bool", {"output_tokens": True}, "output_tokens"),
    ("tokens as float", {"input_tokens": 3.0}, "input_tokens"),
    ("negative tokens", {"input_tokens": -4}, "input_tokens"),
    ("tokens over int32", {"output_tokens": MAX_INT32 + 1}, "output_tokens"),
    ("sum over int32", {"input_tokens": MAX_INT32, "output_tokens": 1, "tokens_used": None}, "tokens_used"),
    ("tokens_used too low", {"tokens_used": 14}, "tokens_used"),
    ("cache reads as str", {"cache_read_tokens": "1"}, "cache_read_tokens"),
    ("cache writes null", {"cache_write_tokens": None}, "cache_write_tokens"),
    ("reasoning negative", {"reasoning_tokens": -1}, "reasoning_tokens"),
    ("cache over input", {"input_tokens": 10, "cache_read_tokens": 5, "cache_write_tokens": 6}, "input_tokens"),
    ("reasoning over output", {"output_tokens": 5, "reasoning_tokens": 6}, "reasoning_tokens"),
    ("provider as int", {"provider": 1}, "provider"),
    ("long provider", {"provider": "p" * (MAX_PROVIDER_LEN + 1)}, "provider"),
    ("long user", {"user_id": "u" * (MAX_USER_ID_LEN + 1)}, "user_id"),
    ("long model", {"model": "m" * (MAX_MODEL_LEN + 1)}, "model"),
    ("NUL in feature", {"feature_name": "x\x00"}, "feature_name"),
    ("lone surrogate in tenant", {"tenant_id": "\udcff"}, "tenant_id"),
    ("unknown status", {"status": "ok"}, "status"),
    ("status unhashable", {"status": ["success"]}, "status"),
    ("NaN latency", {"latency_ms": math.nan}, "latency_ms"),
    ("inf latency", {"latency_ms": math.inf}, "latency_ms"),
    ("latency as str", {"latency_ms": "1"}, "latency_ms"),
    ("timestamp as str", {"timestamp_us": "1700000000000000"}, "timestamp_us"),
    ("timestamp as float", {"timestamp_us": 1.7e15}, "timestamp_us"),
    ("timestamp overflow", {"timestamp_us": 10**20}, "timestamp_us"),
    ("ttft as str", {"time_to_first_token_ms": "5"}, "time_to_first_token_ms"),
    ("ttft negative", {"time_to_first_token_ms": -1}, "time_to_first_token_ms"),
    ("ttft NaN", {"time_to_first_token_ms": math.nan}, "time_to_first_token_ms"),
    ("ttft over latency", {"latency_ms": 120, "time_to_first_token_ms": 121}, "time_to_first_token_ms"),
    ("ttft over latency once rounded", {"latency_ms": 7.4, "time_to_first_token_ms": 7.6}, "time_to_first_token_ms"),
]


@pytest.mark.parametrize(("overrides", "field"), [c[1:] for c in WORKER_CASES], ids=[c[0] for c in WORKER_CASES])
def test_parse_wire_row_refuses_and_names_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEvent) as excinfo:
        parse_wire_row(WIRE_FIELDS, wire_row(**overrides))
    assert field in str(excinfo.value)


@pytest.mark.parametrize(
    "row",
    [wire_row()[:-1], [*wire_row(), 1], {"event_id": uuid.uuid4().hex}, "row", None],
    ids=["short", "long", "dict", "str", "null"],
)
def test_parse_wire_row_refuses_a_row_of_the_wrong_shape(row: Any) -> None:
    with pytest.raises(InvalidEvent, match="row must be a list"):
        parse_wire_row(WIRE_FIELDS, row)


def test_decode_message_splits_valid_rows_from_invalid_ones() -> None:
    fields = list(reversed(WIRE_FIELDS))  # the message names its field order
    good = [wire_row(user_id=f"u{i}") for i in range(3)]
    bad = [wire_row(input_tokens=-1), wire_row(status="ok")]
    rows = [list(reversed(r)) for r in (good[0], bad[0], good[1], bad[1], good[2])] + ["not a row"]
    decoded = decode_message({"v": WIRE_VERSION, "fields": fields, "rows": rows})

    assert [mapping["user_id"] for mapping, _ in decoded.rows] == ["u0", "u1", "u2"]
    for (mapping, payload), row in zip(decoded.rows, good, strict=False):
        assert payload == dict(zip(WIRE_FIELDS, row, strict=False))  # the raw event, kept for a dead letter
        assert mapping["event_id"].hex == row[0]
    assert [payload for payload, _ in decoded.invalid] == [
        dict(zip(WIRE_FIELDS, bad[0], strict=False)),
        dict(zip(WIRE_FIELDS, bad[1], strict=False)),
        "not a row",
    ]
    reasons = [reason for _, reason in decoded.invalid]
    assert "input_tokens" in reasons[0] and "status" in reasons[1] and "row must be a list" in reasons[2]


NOT_OUR_FORMAT: list[tuple[str, Any]] = [
    ("string", "hello"),
    ("null", None),
    ("list", [[1, 2, 3]]),
    ("dict without v", {"fields": list(WIRE_FIELDS), "rows": [wire_row()]}),
    ("other version", {"v": WIRE_VERSION + 1, "fields": list(WIRE_FIELDS), "rows": [wire_row()]}),
    ("version 0", {"v": 0, "fields": list(WIRE_FIELDS), "rows": [wire_row()]}),
    ("v as bool", {"v": True, "fields": list(WIRE_FIELDS_V1), "rows": [wire_row()[:12]]}),
    ("v as float", {"v": 1.0, "fields": list(WIRE_FIELDS_V1), "rows": [wire_row()[:12]]}),
    ("v as string", {"v": "1", "fields": list(WIRE_FIELDS), "rows": [wire_row()]}),
    ("a field missing", {"v": WIRE_VERSION, "fields": list(WIRE_FIELDS[:-1]), "rows": [wire_row()[:-1]]}),
    ("an extra field", {"v": WIRE_VERSION, "fields": [*WIRE_FIELDS, "cost"], "rows": [[*wire_row(), 1]]}),
    ("a field twice", {"v": WIRE_VERSION, "fields": [*WIRE_FIELDS, "tenant_id"], "rows": [[*wire_row(), "other"]]}),
    ("fields not strings", {"v": WIRE_VERSION, "fields": [[name] for name in WIRE_FIELDS], "rows": [wire_row()]}),
    ("fields as str", {"v": WIRE_VERSION, "fields": ",".join(WIRE_FIELDS), "rows": [wire_row()]}),
    ("rows missing", {"v": WIRE_VERSION, "fields": list(WIRE_FIELDS)}),
    ("rows as dict", {"v": WIRE_VERSION, "fields": list(WIRE_FIELDS), "rows": {"0": wire_row()}}),
]


@pytest.mark.parametrize("message", [c[1] for c in NOT_OUR_FORMAT], ids=[c[0] for c in NOT_OUR_FORMAT])
def test_a_message_not_in_our_format_is_one_invalid_payload(message: Any) -> None:
    decoded = decode_message(message)
    assert decoded.rows == []
    assert len(decoded.invalid) == 1
    payload, reason = decoded.invalid[0]
    assert payload == message
    assert reason
