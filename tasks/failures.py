"""Whose fault a failed write is: the message's (park it) or anything else's (wait and retry).

A write that fails because of what the message holds, after ``store_batch``
(which dead-letters bad rows) and the dead-letter insert (which makes
everything storable) had their go, is tried ``POISON_ATTEMPTS`` times and the
message is then parked on the broker (tasks.broker.park), logged and counted:
never looped on. Those are the errors a value can cause: the database refusing
the data (SQLSTATE classes 22 data exception, 23 integrity constraint, and
a raise from a trigger or function, P0001) and the driver or Python refusing it
(psycopg2 refuses NUL with ValueError; TypeError, UnicodeError, RecursionError,
OverflowError while decoding).

Everything else is not the message's fault and is waited out, however long:
PostgreSQL unreachable or restarting, deadlocks, timeouts, and also a
misconfiguration (a role without a grant, a missing table), which must not
drain the queue into parked messages. Nothing is acknowledged meanwhile.
"""

from __future__ import annotations

import psycopg2
from sqlalchemy import exc as sa_exc

POISON_ATTEMPTS = 3  # tries of one message whose write fails because of what it holds

# DataError: class 22; IntegrityError: class 23; InternalError: P0001 raise_exception (and XX000)
_MESSAGE_DBAPI_ERRORS = (psycopg2.DataError, psycopg2.IntegrityError, psycopg2.InternalError)
_MESSAGE_PYTHON_ERRORS = (ValueError, TypeError, UnicodeError, RecursionError, OverflowError)


def caused_by_message(error: BaseException) -> bool:
    """True when the write failed because of the data it carried (see the module docstring)."""
    if isinstance(error, sa_exc.DBAPIError):
        return not error.connection_invalidated and isinstance(error.orig, _MESSAGE_DBAPI_ERRORS)
    if isinstance(error, sa_exc.StatementError) and error.orig is not None:
        error = error.orig  # a driver error raised while binding the parameters
    return isinstance(error, (*_MESSAGE_DBAPI_ERRORS, *_MESSAGE_PYTHON_ERRORS))
