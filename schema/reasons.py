"""Why a message is dead-lettered or parked: every reason text, defined once.

The Celery worker's consumer, the ingest task, the aggregator and
schema.message write these into ``dead_letters.reason`` (or a parked
message's header); tests and operators search for them by their prefix
(the constants). A reason quotes the input it refuses where that helps the
operator; storage.dead_letters makes it storable.
"""

from __future__ import annotations

from collections.abc import Sequence

from tasks.names import INGEST_WRITE_BATCH

# --- the broker message (tasks.admission, tasks.consumer, the aggregator) --------------

COULD_NOT_DECODE = "message could not be decoded"
NOT_A_TASK_MESSAGE = "not a Celery task message"
UNKNOWN_TASK = "unknown task"
INVALID_TASK_MESSAGE = "invalid task message"
TOO_LARGE = "message too large"
COULD_NOT_BE_DEAD_LETTERED = "could not be dead-lettered"

# --- the ingest message inside the task call (schema.message) ------------------------

NOT_AN_INGEST_MESSAGE = "not an ingest message"
MISSING_ROWS_AND_FIELDS = "message must carry 'rows' and 'fields'"
TOO_MANY_ROWS = "more than INGEST_MAX_ROWS_PER_MESSAGE"

# --- a write that failed because of what the message holds (tasks.failures) --------

NOT_STORED = "not stored after"


def could_not_decode(content_type: object, error: object) -> str:
    return f"{COULD_NOT_DECODE} ({content_type}): {error}"


def unknown_task(name: object, *, ingest_queue: bool = False) -> str:
    """``name``: the task a message names (quoted with repr, as Celery's KeyError does)."""
    reason = f"{UNKNOWN_TASK}: {name!r}"
    return f"{reason} (the ingest queue carries only {INGEST_WRITE_BATCH})" if ingest_queue else reason


def invalid_task_message(detail: object) -> str:
    return f"{INVALID_TASK_MESSAGE}: {detail}"


def protocol2_body() -> str:
    return invalid_task_message("protocol 2 body must be [args, kwargs, embed]")


def call_not_a_list() -> str:
    return invalid_task_message("args must be a list and kwargs a mapping")


def wrong_arguments(positional: int, keywords: Sequence[str]) -> str:
    return invalid_task_message(
        f"{INGEST_WRITE_BATCH} takes one argument (the batch), got {positional} positional"
        f" and keywords {sorted(keywords)}"
    )


def too_large(size: int, max_bytes: int, kept_bytes: int) -> str:
    return (
        f"{TOO_LARGE}: {size} bytes, more than INGEST_MAX_MESSAGE_BYTES={max_bytes};"
        f" dead-lettered whole and unparsed, its body kept truncated to {kept_bytes} bytes"
    )


def could_not_be_dead_lettered(reason: str, error: BaseException) -> str:
    return f"{reason}; {COULD_NOT_BE_DEAD_LETTERED}: {type(error).__name__}: {error}"


def not_an_ingest_message(versions: Sequence[int]) -> str:
    """``versions``: the wire versions the worker decodes (schema.event.FIELDS_BY_VERSION)."""
    return f"{NOT_AN_INGEST_MESSAGE} of version {' or '.join(str(v) for v in versions)}"


def missing_rows_and_fields(fields: Sequence[str]) -> str:
    return f"{MISSING_ROWS_AND_FIELDS} = {list(fields)}"


def too_many_rows(rows: int, max_rows: int, kept_rows: int) -> str:
    return (
        f"message has {rows} rows, {TOO_MANY_ROWS}={max_rows}; dead-lettered"
        f" whole and unparsed, the dead letter keeps its first {kept_rows} rows"
    )


def not_stored(attempts: int, detail: str) -> str:
    """Why a message is parked: ``attempts`` writes failed because of what it holds."""
    return f"{NOT_STORED} {attempts} attempts ({detail})"
