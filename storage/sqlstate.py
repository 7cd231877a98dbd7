"""The SQLSTATE of a failed statement: whether redoing the transaction is safe.

Shared by the retry loops of storage.partitions and storage.rollups, which
retry only the codes they name (lock timeout, deadlock, serialization failure).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.exc import DBAPIError


def sqlstate(exc: BaseException) -> str | None:
    """The driver's SQLSTATE (psycopg2's ``pgcode``) of a DBAPIError; None for anything else."""
    if not isinstance(exc, DBAPIError):
        return None
    code = getattr(exc.orig, "pgcode", None)
    return code if isinstance(code, str) else None


def sqlstate_in(codes: frozenset[str]) -> Callable[[BaseException], bool]:
    """A predicate for retry_policy.call_with_retry: true for a DBAPIError with one of ``codes``."""

    def matches(exc: BaseException) -> bool:
        return sqlstate(exc) in codes

    return matches
