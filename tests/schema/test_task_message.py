"""Celery's task message read once (schema.task_message), in-process: protocol 2 and 1 alike.

The Celery worker's consumer (tasks.admission), the aggregator (its ``decode``
step) and the replay of a raw dead letter (storage.replay, in
test_dead_letters) read the same messages the same way, and refuse the others
with the reasons of schema.reasons. Messages are kombu ``Message`` objects as
the broker hands them over, built here without a broker.
"""

from __future__ import annotations

import importlib
import json
import time
import uuid
from typing import Any

import pytest
from kombu.message import Message

import celeryconfig
from config import Settings
from schema import reasons
from schema.event import WIRE_FIELDS, WIRE_VERSION
from schema.task_message import TaskCall, batch_argument, ingest_batch, task_call
from storage.dead_letters import SOURCE_QUEUE, SOURCE_WORKER
from tasks import names
from tasks.admission import kept_chars, refusal, task_argument, task_name
from tasks.aggregator import decode

PROTOCOLS = [1, 2]
MAX_BYTES = 1_000_000
MAX_ROWS = 100


def wire_row(tenant: str = "t-proto") -> list[Any]:
    return [uuid.uuid4().hex, tenant, "summarize", "u1", "m1", 3, 4, 7, 12, "success", None, time.time_ns() // 1000,
            1, 1, 2, "openai", 5]  # fmt: skip


def batch(rows: int = 3) -> dict[str, Any]:
    return {"v": WIRE_VERSION, "fields": list(WIRE_FIELDS), "rows": [wire_row() for _ in range(rows)]}


def task_message(protocol: int, args: Any, kwargs: Any = None, name: str = names.INGEST_WRITE_BATCH) -> Message:
    """A task message as Celery writes it: protocol 2 (send_task's default) or protocol 1."""
    kwargs = {} if kwargs is None else kwargs
    if protocol == 2:
        body: Any = [args, kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
        headers = {"task": name, "id": str(uuid.uuid4()), "lang": "py", "argsrepr": "", "kwargsrepr": ""}
    else:
        body, headers = {"task": name, "id": str(uuid.uuid4()), "args": args, "kwargs": kwargs}, {}
    return raw_message(json.dumps(body).encode(), headers=headers)


def raw_message(body: bytes, content_type: str = "application/json", headers: dict[str, Any] | None = None) -> Message:
    return Message(
        body=body, content_type=content_type, content_encoding="utf-8", headers=headers or {},
        delivery_info={"routing_key": "ingest"}, accept={"application/json"},  # as a consumer accepting json
    )  # fmt: skip


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_both_protocols_carry_the_same_batch_to_every_reader(protocol: int) -> None:
    message = batch(3)
    kombu_message = task_message(protocol, [message])
    assert task_name(kombu_message) == names.INGEST_WRITE_BATCH
    assert refusal(kombu_message, MAX_BYTES) is None
    assert task_argument(kombu_message) == (message, None)
    received = decode(kombu_message, MAX_BYTES, MAX_ROWS)  # the aggregator's step 1
    assert len(received.flush.rows) == 3 and received.flush.refused == []
    assert received.events == 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_batch_as_the_one_keyword_argument(protocol: int) -> None:
    message = batch(1)
    assert task_argument(task_message(protocol, [], {"message": message})) == (message, None)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_another_task_on_the_ingest_queue_is_refused_by_name(protocol: int) -> None:
    kombu_message = task_message(protocol, [], name=names.ROLLUPS_RUN)
    expected = reasons.unknown_task(names.ROLLUPS_RUN, ingest_queue=True)
    assert expected == f"unknown task: 'rollups.run' (the ingest queue carries only {names.INGEST_WRITE_BATCH})"
    assert task_name(kombu_message) == names.ROLLUPS_RUN
    assert refusal(kombu_message, MAX_BYTES) == (expected, None)
    assert task_argument(kombu_message) == (None, expected)
    received = decode(kombu_message, MAX_BYTES, MAX_ROWS)
    [letter] = received.flush.refused
    assert received.flush.rows == [] and letter.reason == expected and letter.source == SOURCE_QUEUE
    assert letter.payload["headers"] == kombu_message.headers  # the raw message, kept whole


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("args", "kwargs", "detail"),
    [
        ([batch(1), "surplus"], {}, "takes one argument (the batch), got 2 positional and keywords []"),
        ([], {"marker": 1}, "takes one argument (the batch), got 0 positional and keywords ['marker']"),
        ("not a list", {}, "args must be a list and kwargs a mapping"),
    ],
)
def test_a_call_with_other_arguments_is_an_invalid_task_message(
    protocol: int, args: Any, kwargs: dict[str, Any], detail: str
) -> None:
    _, reason = task_argument(task_message(protocol, args, kwargs))
    assert reason is not None and reason.startswith(f"{reasons.INVALID_TASK_MESSAGE}: ") and reason.endswith(detail)
    assert batch_argument(args, kwargs) == (None, reason)  # what the Celery task itself checks (tasks.ingest)


def test_a_protocol2_body_that_is_not_args_kwargs_embed_is_invalid() -> None:
    headers = {"task": names.INGEST_WRITE_BATCH, "id": str(uuid.uuid4())}
    message = raw_message(json.dumps({"args": [batch(1)]}).encode(), headers=headers)
    assert task_argument(message) == (None, reasons.protocol2_body())
    assert reasons.protocol2_body().startswith(reasons.INVALID_TASK_MESSAGE)


def test_protocol2_is_routed_by_its_header_without_parsing_the_body() -> None:
    """The consumer's cheap check: the task parses a protocol 2 body once, itself."""
    headers = {"task": names.INGEST_WRITE_BATCH, "id": str(uuid.uuid4())}
    unparsable = raw_message(b"[[{broken", headers=headers)
    assert task_name(unparsable) == names.INGEST_WRITE_BATCH
    assert refusal(unparsable, MAX_BYTES) is None
    _, reason = task_argument(unparsable)  # the full read refuses it
    assert reason is not None and reason.startswith(f"{reasons.COULD_NOT_DECODE} (application/json): ")


def test_a_message_that_is_no_task_call() -> None:
    message = raw_message(json.dumps({"hello": "world"}).encode())
    assert task_name(message) is None
    assert refusal(message, MAX_BYTES) is None  # left to Celery, whose consumer dead-letters it (tasks.consumer)
    assert task_argument(message) == (None, reasons.NOT_A_TASK_MESSAGE)
    assert task_call({}, ["a", "list"]) == (None, reasons.NOT_A_TASK_MESSAGE)


def test_an_undecodable_message_names_its_content_type() -> None:
    pickled = raw_message(b"\x80\x04pickle", content_type="application/x-python-serialize")
    _, reason = task_argument(pickled)
    assert reason is not None and reason.startswith(f"{reasons.COULD_NOT_DECODE} (application/x-python-serialize): ")
    received = decode(pickled, MAX_BYTES, MAX_ROWS)
    assert [letter.reason for letter in received.flush.refused] == [reason]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_message_over_the_byte_cap_is_refused_before_it_is_parsed(protocol: int) -> None:
    message = task_message(protocol, [batch(20)])
    max_bytes = len(message.body) - 1
    expected = reasons.too_large(len(message.body), max_bytes, kept_chars(max_bytes))
    assert refusal(message, max_bytes) == (expected, kept_chars(max_bytes))
    assert expected.startswith(f"{reasons.TOO_LARGE}: {len(message.body)} bytes")
    [letter] = decode(message, max_bytes, MAX_ROWS).flush.refused
    assert letter.reason == expected and letter.payload["body_truncated_from_bytes"] == len(message.body)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_batch_over_the_row_cap_is_one_dead_letter_from_the_worker(protocol: int) -> None:
    received = decode(task_message(protocol, [batch(5)]), MAX_BYTES, max_rows=4)
    [letter] = received.flush.refused
    assert received.flush.rows == [] and letter.source == SOURCE_WORKER
    assert letter.reason.startswith("message has 5 rows, " + reasons.TOO_MANY_ROWS + "=4;")


def test_invalid_rows_are_refused_one_by_one_beside_the_good_ones() -> None:
    message = batch(3)
    message["rows"][1][5] = -1  # negative input_tokens
    received = decode(task_message(2, [message]), MAX_BYTES, MAX_ROWS)
    assert len(received.flush.rows) == 2
    [letter] = received.flush.refused
    assert letter.source == SOURCE_WORKER and "input_tokens" in letter.reason


def test_ingest_batch_reads_what_a_dead_letter_kept() -> None:
    """storage.replay hands over the headers and the JSON body of a raw dead letter."""
    message = batch(2)
    protocol1 = {"task": names.INGEST_WRITE_BATCH, "id": "x", "args": [message], "kwargs": {}}
    assert ingest_batch({}, protocol1) == (message, None)
    assert ingest_batch({"task": names.INGEST_WRITE_BATCH}, [[message], {}, {}]) == (message, None)
    assert task_call({"task": names.ROLLUPS_RUN}, [[], {}, {}]) == (TaskCall(names.ROLLUPS_RUN, [], {}), None)


def test_every_task_is_registered_and_routed_by_its_constant() -> None:
    from tasks.app import TASK_MODULES, app

    for module in TASK_MODULES:  # what the worker imports (``include``)
        importlib.import_module(module)
    constants = {value for key, value in vars(names).items() if key.isupper() and not value.endswith(".*")}
    assert constants <= set(app.tasks), constants - set(app.tasks)
    routes = celeryconfig.build(Settings(ingest_queue="q-ingest", rollup_queue="q-rollups"))["task_routes"]
    assert routes[names.INGEST_WRITE_BATCH] == {"queue": "q-ingest"}
    assert routes[names.ROLLUPS_TASKS] == {"queue": "q-rollups"}
    assert {entry["task"] for entry in celeryconfig.beat_schedule.values()} <= constants
