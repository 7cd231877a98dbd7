"""422 answers from handler code in the same shape as FastAPI's own (the documented one).

FastAPI documents every 422 as ``HTTPValidationError`` (``detail``: a list of
``{loc, msg, type}``); ``HTTPException(422, "text")`` would answer a bare
string instead and break the published contract (tests/web/test_openapi_contract.py
found it). Checks that need more than one parameter, or the database, raise
``invalid(...)`` so clients parse one shape whatever refused their request.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError

INVALID_VALUE = "value_error"


def invalid(location: str, name: str, message: str, value: Any = None) -> RequestValidationError:
    """A 422 naming the offending parameter: ``location`` is ``query``, ``path`` or ``body``."""
    return RequestValidationError([{"type": INVALID_VALUE, "loc": (location, name), "msg": message, "input": value}])


def single_valued_query(request: Request) -> None:
    """Refuse a query parameter given twice: every one of ours takes one value.

    FastAPI would silently keep the last of ``?feature=a&feature=b``, answering
    for a feature the caller may not have meant (the contract test sends such
    requests and expects them refused).
    """
    counts = Counter(name for name, _ in request.query_params.multi_items())
    for name, count in counts.items():
        if count > 1:
            raise invalid("query", name, f"given {count} times; it takes one value")
