"""Stored identifiers shown to operators with their control characters escaped.

Tenant, feature, user and model names, error types and dead-letter reasons
and payloads come from clients. Printed raw, an ESC sequence in a feature
name repaints the operator's terminal and a newline in a user id forges a log
line. ``escape`` shows every C0 control (newline and tab included), DEL and
every C1 control as ``\\xNN``, and the Unicode line/paragraph separators and
bidirectional overrides (which reorder what a terminal shows) as ``\\uNNNN``;
every other character, accents and emoji included, is left alone.

``install_log_escaping`` does the same for log records process-wide: it
wraps the log record factory so that string arguments of every record
(``logger.info("... %s", tenant)``) are escaped before any handler formats
them. Message templates are code and keep their own newlines.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

C0 = range(0x00, 0x20)
DEL = 0x7F
C1 = range(0x80, 0xA0)
# Line/paragraph separators and the bidirectional embedding, override and isolate controls.
UNICODE_LAYOUT = (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))

_TABLE: dict[int, str] = {
    **{code: f"\\x{code:02x}" for code in (*C0, DEL, *C1)},
    **{code: f"\\u{code:04x}" for code in UNICODE_LAYOUT},
}


def escape(value: object) -> str:
    """``str(value)`` with control characters escaped (see the module docstring); None stays "None"."""
    return str(value).translate(_TABLE)


def _escape_arg(value: Any) -> Any:
    # An exception's text often quotes the input that caused it.
    return escape(value) if isinstance(value, (str, BaseException)) else value


def _escaped_args(args: Any) -> Any:
    if isinstance(args, tuple):
        return tuple(_escape_arg(arg) for arg in args)
    if isinstance(args, Mapping):
        return {key: _escape_arg(arg) for key, arg in args.items()}
    return args


_installed = False


def install_log_escaping() -> None:
    """Escape the string arguments of every log record made from now on in this process (idempotent)."""
    global _installed
    if _installed:
        return
    make_record = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if record.args:
            record.args = _escaped_args(record.args)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
