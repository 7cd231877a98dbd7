"""Webhook signatures: HMAC-SHA256 of ``"<timestamp>.<raw body>"`` with the webhook's secret.

Every delivery carries ``X-Analytics-Signature: t=<unix seconds>,v1=<hex digest>``
and ``X-Analytics-Notification-Id: <uuid>``. The timestamp is signed with the
body, so a receiver that refuses old timestamps (``verify``'s tolerance) cannot
be fed a recorded delivery again later; the notification id is the same on
every attempt of the same notification, so a receiver deduplicates by it.

``verify`` is what a receiver runs (the README's snippet is this function):
it compares in constant time and accepts any ``v1`` of the header, so a secret
can be rotated by signing with both for a while.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

SIGNATURE_HEADER = "X-Analytics-Signature"
NOTIFICATION_ID_HEADER = "X-Analytics-Notification-Id"
SIGNATURE_VERSION = "v1"
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # 256 bits of randomness
DEFAULT_TOLERANCE_S = 300


class SignatureError(ValueError):
    """The signature header is missing, malformed, too old or does not match the body."""


def new_secret() -> str:
    """A fresh signing secret (shown to the tenant once, when the webhook is created)."""
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def digest(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>.<body>"`` keyed with the secret's UTF-8 bytes."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Analytics-Signature`` value for ``body`` sent at ``timestamp`` (default: now)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return f"t={ts},{SIGNATURE_VERSION}={digest(secret, ts, body)}"


def verify(
    secret: str, body: bytes, header: str | None, tolerance_s: int = DEFAULT_TOLERANCE_S, now: float | None = None
) -> int:
    """Check a delivery; returns its timestamp, or raises SignatureError saying what is wrong.

    ``body`` must be the raw bytes received (not re-serialized JSON).
    """
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {SIGNATURE_HEADER} header")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError("the signature timestamp is not an integer") from None
        elif key == SIGNATURE_VERSION:
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError(f"{SIGNATURE_HEADER} needs t=<timestamp> and {SIGNATURE_VERSION}=<signature>")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(f"the signature timestamp is more than {tolerance_s} s away from now")
    expected = digest(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise SignatureError("the signature does not match the body")
    return timestamp
