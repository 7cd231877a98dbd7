"""Whose fault a failed write is: the database's (wait and retry) or the message's (park it).

A write that fails because PostgreSQL is unreachable, restarting, or busy
(connection errors, deadlocks, serialization failures, lock or statement
timeouts) is retried for as long as it takes: the message is not at fault.
Any other error that survives ``store_batch`` (which already dead-letters bad
rows) and the dead-letter insert (which makes everything storable) is tried
``POISON_ATTEMPTS`` times and then the message is parked on the broker
(tasks.broker.park), logged and counted, never looped on.
"""

from __future__ import annotations

import psycopg2
from sqlalchemy import exc as sa_exc

POISON_ATTEMPTS = 3  # tries of one message whose write fails for a reason not the database's

_TRANSIENT_DBAPI = (
    psycopg2.OperationalError,  # connection lost or refused, deadlock, lock/statement timeout, shutdown
    psycopg2.InterfaceError,  # connection already closed
    psycopg2.errors.SerializationFailure,
)


def database_unavailable(error: BaseException) -> bool:
    """True when the error is about the database or the connection, not the data."""
    if isinstance(error, (sa_exc.DisconnectionError, sa_exc.TimeoutError, ConnectionError, TimeoutError)):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        return error.connection_invalidated or isinstance(error.orig, _TRANSIENT_DBAPI)
    return isinstance(error, (*_TRANSIENT_DBAPI, OSError))
