"""The broker attacks of ``bench.abuse``: messages put straight on the private ingest queue.

Refused means dead-lettered with a reason (found by the attack's marker in the
dead letter's payload), nothing of it stored, and no foreign work done: no
rollup run, no partition created.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from bench.abuse_attacks import MONTHS, mid_month, outside_window_months
from bench.abuse_context import RAW_CONTROLS, AttackContext
from bench.abuse_core import Judge, Verdict, attack
from devtools.faults import malformed
from storage.partitions import Month, months_ahead
from tasks.names import INGEST_WRITE_BATCH, PARTITIONS_ENSURE_AHEAD, ROLLUPS_RUN

INGEST_TASK = INGEST_WRITE_BATCH
ROW_PADDING_TO = 120  # user_id length of the rows of the over-bytes message (valid: under MAX_USER_ID_LEN)


def _task_headers(task: str, marker: str) -> dict[str, str]:
    return {"task": task, "id": f"{marker}{uuid.uuid4()}", "lang": "py", "argsrepr": "", "kwargsrepr": ""}


def dead_lettered(
    ctx: AttackContext, marker: str, months: Iterable[Month] = (), no_effect: Callable[[], str] | None = None
) -> Judge:
    """Refused: at least one dead letter naming ``marker`` with a reason, no row of it, none of ``months``
    created, and ``no_effect`` (a check of foreign work; returns what it saw, empty if nothing) quiet."""
    months = set(months)

    def judge() -> Verdict:
        letters, stored = ctx.dead_letters(marker), ctx.rows(marker)
        reasons = [r for r in ctx.dead_letter_reasons(marker) if r.strip()]
        made = len(months & ctx.months())
        effect = no_effect() if no_effect else ""
        refused = letters > 0 and bool(reasons) and stored == 0 and made == 0 and not effect
        reason = reasons[0][:70].encode("unicode_escape").decode() if reasons else "none"
        parked = ctx.parked() if not letters else 0
        happened = (
            f"{letters} dead letter(s) (reason: {reason}); {stored} row(s) stored"
            + (f"; {parked} message(s) parked on the queue's .dead" if parked else "")
            + (f"; {made} partition(s) created" if months else "")
            + (f"; {effect}" if effect else "")
        )
        return Verdict(refused, happened)

    return judge


def _rows(ctx: AttackContext, marker: str, n: int, pad_to: int = 0) -> list[list[object]]:
    return [malformed.row(malformed.event(ctx.attacker, f"{marker}{i}".ljust(pad_to, "p"))) for i in range(n)]


@attack(
    "broker_nul_in_content_type",
    "broker",
    "a message whose content type holds NUL and ESC",
    "dead-lettered with the reason, the queue keeps flowing",
)
def broker_nul_in_content_type(ctx: AttackContext) -> Judge:
    marker = ctx.marker("broker_nul_in_content_type")
    ctx.publish_raw(f"{{broken {marker}".encode(), content_type="application/json\x00\x1b[2Jevil",
                    headers={"x-marker": marker})  # fmt: skip
    return dead_lettered(ctx, marker)


@attack(
    "broker_control_chars_in_headers",
    "broker",
    "a message with NUL and control characters in its headers",
    "dead-lettered with the reason, escaped in `cli dead-letters list`",
)
def broker_control_chars_in_headers(ctx: AttackContext) -> Judge:
    marker = ctx.marker("broker_control_chars_in_headers")
    headers = {**_task_headers(INGEST_TASK + "\x00\x1b[31m", marker), "x-evil\x07": "a\x00b\r\nFAKE LOG LINE"}
    ctx.publish_raw(json.dumps([[marker], {}, {}]).encode(), content_type="application/json", headers=headers)

    def raw_in_listing() -> str:
        raw = sum(byte in RAW_CONTROLS for byte in ctx.operator_output("dead-letters", "list"))
        return f"{raw} raw control bytes in `cli dead-letters list`" if raw else ""

    return dead_lettered(ctx, marker, no_effect=raw_in_listing)


@attack(
    "broker_nul_in_body",
    "broker",
    "an ingest task body with raw NUL and control bytes (not JSON)",
    "dead-lettered with the reason",
)
def broker_nul_in_body(ctx: AttackContext) -> Judge:
    marker = ctx.marker("broker_nul_in_body")
    body = json.dumps([[malformed.message(_rows(ctx, marker, 1))], {}, {}]).encode()
    ctx.publish_raw(body[:40] + b"\x00\x01\x1b" + body[40:], content_type="application/json",
                    headers=_task_headers(INGEST_TASK, marker))  # fmt: skip
    return dead_lettered(ctx, marker)


@attack("broker_non_json_body", "broker", "a body that says JSON and is not", "dead-lettered with the reason")
def broker_non_json_body(ctx: AttackContext) -> Judge:
    marker = ctx.marker("broker_non_json_body")
    ctx.publish_raw(f"{{broken json {marker}".encode(), content_type="application/json",
                    headers=_task_headers(INGEST_TASK, marker))  # fmt: skip
    return dead_lettered(ctx, marker)


@attack(
    "broker_rollups_task",
    "broker",
    "a rollups.run task message on the ingest queue",
    "dead-lettered, not run (no rollup row written)",
)
def broker_rollups_task(ctx: AttackContext) -> Judge:
    marker = ctx.marker("broker_rollups_task")
    ctx.send_task(ROLLUPS_RUN, task_id=f"{marker}{uuid.uuid4()}")
    return dead_lettered(ctx, marker, no_effect=lambda: f"{n} rollup rows written" if (n := ctx.rollup_rows()) else "")


@attack(
    "broker_partitions_task",
    "broker",
    "a partitions.ensure_ahead task message on the ingest queue",
    "dead-lettered, not run (no month ahead created)",
)
def broker_partitions_task(ctx: AttackContext) -> Judge:
    marker = ctx.marker("broker_partitions_task")
    ahead = set(months_ahead(datetime.now(UTC), ctx.settings.partition_months_ahead)) - ctx.months()
    ctx.send_task(PARTITIONS_ENSURE_AHEAD, task_id=f"{marker}{uuid.uuid4()}")
    return dead_lettered(ctx, marker, ahead)


@attack(
    "broker_write_batch_wrong_args",
    "broker",
    "ingest.write_batch with a surplus argument",
    "dead-lettered, nothing stored",
)
def broker_write_batch_wrong_args(ctx: AttackContext) -> Judge:
    marker = ctx.marker("broker_write_batch_wrong_args")
    ctx.send_task(INGEST_TASK, [malformed.message(_rows(ctx, marker, 3)), "surplus"], task_id=f"{marker}{uuid.uuid4()}")
    return dead_lettered(ctx, marker)


def _over_cap(ctx: AttackContext, marker: str, rows: list[list[object]], reason_like: str) -> Judge:
    """Send ``rows`` as one message if it breaks only the cap it is meant to (rows or bytes)."""
    message = malformed.message(rows)
    size, limit = len(json.dumps(message)), ctx.settings.ingest_max_message_bytes
    over_rows = len(rows) > ctx.settings.ingest_max_rows_per_message
    if (reason_like == "%row%") == (size > limit) or (reason_like == "%byte%") == over_rows:
        return lambda: Verdict(False, f"cannot build it: {len(rows)} rows make {size} bytes (byte cap {limit})")
    ctx.send_task(INGEST_TASK, [message], task_id=f"{marker}{uuid.uuid4()}")
    judge = dead_lettered(ctx, marker)

    def named() -> Verdict:
        verdict = judge()
        named = ctx.dead_letters(marker, reason_like) > 0
        return Verdict(verdict.refused and named, verdict.happened + ("" if named else f"; reason not {reason_like}"))

    return named


@attack(
    "broker_rows_over_limit",
    "broker",
    "a message of INGEST_MAX_ROWS_PER_MESSAGE + 1 rows (under the byte cap)",
    "dead-lettered whole, naming the row cap, nothing stored",
)
def broker_rows_over_limit(ctx: AttackContext) -> Judge:
    marker = ctx.marker("broker_rows_over_limit")
    return _over_cap(ctx, marker, _rows(ctx, marker, ctx.settings.ingest_max_rows_per_message + 1), "%row%")


@attack(
    "broker_bytes_over_limit",
    "broker",
    "a message over INGEST_MAX_MESSAGE_BYTES (rows under the row cap)",
    "dead-lettered whole, naming the byte cap, nothing stored",
)
def broker_bytes_over_limit(ctx: AttackContext) -> Judge:
    marker = ctx.marker("broker_bytes_over_limit")
    row_bytes = len(json.dumps(_rows(ctx, marker, 1, ROW_PADDING_TO)[0]))
    n = min(ctx.settings.ingest_max_rows_per_message, ctx.settings.ingest_max_message_bytes // row_bytes + 10)
    return _over_cap(ctx, marker, _rows(ctx, marker, n, ROW_PADDING_TO), "%byte%")


@attack(
    "broker_1000_months",
    "broker",
    f"one message of {MONTHS} rows over {MONTHS} months outside the window",
    "rows dead-lettered by the window, no partition created",
)
def broker_1000_months(ctx: AttackContext) -> Judge:
    marker = ctx.marker("broker_1000_months")
    months = outside_window_months(ctx, MONTHS)
    rows = [malformed.row(malformed.event(ctx.attacker, f"{marker}{i}",
                                          timestamp_us=int(mid_month(m).timestamp() * 1_000_000)))
            for i, m in enumerate(months)]  # fmt: skip
    ctx.send_task(INGEST_TASK, [malformed.message(rows)], task_id=f"{marker}{uuid.uuid4()}")
    return dead_lettered(ctx, marker, months)
