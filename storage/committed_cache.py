"""A per-process set of keys known to be committed, learnt only when the transaction that found them commits.

A hot path asks ``unknown(keys)`` (a set difference, no SQL) and looks up only
what it returns; the code that finds or adds those rows puts their keys in
``pending(session)``. The set learns them in a Session ``after_commit`` of the
root transaction (a SAVEPOINT released may still be rolled back with its
parent); any rollback, a savepoint's included, forgets what the session had
pending, so a rolled-back key never counts as committed (at worst it is looked
up again). The set is bounded: past ``max_entries`` it is emptied and refilled
by lookups.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

from sqlalchemy import event
from sqlalchemy.orm import Session

K = TypeVar("K", bound=Hashable)


class CommittedCache(Generic[K]):
    """Keys known committed; the session's pending ones live in ``session.info[info_key]`` until it ends."""

    def __init__(self, info_key: str, max_entries: int) -> None:
        self._info_key = info_key
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._keys: set[K] = set()
        event.listen(Session, "after_commit", self._learn_on_commit)
        event.listen(Session, "after_rollback", self._forget_on_rollback)

    def unknown(self, keys: set[K]) -> set[K]:
        """Those of ``keys`` not known committed."""
        with self._lock:
            return keys - self._keys

    def pending(self, session: Session) -> set[K]:
        """The keys ``session`` learns once its root transaction commits (add to it)."""
        pending: set[K] = session.info.setdefault(self._info_key, set())
        return pending

    def add(self, keys: Iterable[K]) -> None:
        with self._lock:
            if len(self._keys) > self._max_entries:
                self._keys.clear()
            self._keys.update(keys)

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()

    def _learn_on_commit(self, session: Session) -> None:
        if session.in_nested_transaction():
            return  # a SAVEPOINT released: the root transaction may still roll back
        pending = session.info.pop(self._info_key, None)
        if pending:
            self.add(pending)

    def _forget_on_rollback(self, session: Session) -> None:
        session.info.pop(self._info_key, None)
