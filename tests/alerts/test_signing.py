"""Signatures: a round trip verifies; a changed body, timestamp, secret or an old delivery does not."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from alerts.signing import SignatureError, digest, new_secret, signature_header, verify

BODY = b'{"id":"1b4e28ba-2fa1-11d2-883f-0016d3cca427","state":"warning"}'
NOW = 1_800_000_000


def test_round_trip_and_the_documented_construction() -> None:
    secret = new_secret()
    header = signature_header(secret, BODY, NOW)
    assert verify(secret, BODY, header, now=NOW + 10) == NOW
    expected = hmac.new(secret.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"


def test_secrets_are_fresh() -> None:
    assert len({new_secret() for _ in range(50)}) == 50


@pytest.mark.parametrize(
    ("body", "header_of", "message"),
    [
        (BODY + b" ", lambda s: signature_header(s, BODY, NOW), "does not match"),
        (BODY.replace(b"warning", b"critical"), lambda s: signature_header(s, BODY, NOW), "does not match"),
        (BODY, lambda s: signature_header(s, BODY, NOW).replace(f"t={NOW}", f"t={NOW + 1}"), "does not match"),
        (BODY, lambda s: signature_header("whsec_other", BODY, NOW), "does not match"),
        (BODY, lambda s: signature_header(s, BODY, NOW - 301), "away from now"),
        (BODY, lambda s: f"t={NOW}", "needs"),
        (BODY, lambda s: "garbage", "malformed"),
        (BODY, lambda s: f"t=soon,v1={digest(s, NOW, BODY)}", "not an integer"),
        (BODY, lambda s: "", "no X-Analytics-Signature"),
    ],
)
def test_tampering_is_detected(body: bytes, header_of: object, message: str) -> None:
    secret = new_secret()
    with pytest.raises(SignatureError, match=message):
        verify(secret, body, header_of(secret), now=NOW)  # type: ignore[operator]


def test_any_v1_may_match_during_a_secret_rotation() -> None:
    old, new = new_secret(), new_secret()
    header = f"t={NOW},v1={digest(old, NOW, BODY)},v1={digest(new, NOW, BODY)}"
    assert verify(new, BODY, header, now=NOW) == NOW
    assert verify(old, BODY, header, now=NOW) == NOW
