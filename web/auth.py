"""Who is calling: the API key in ``Authorization: Bearer ...`` (or ``X-API-Key``).

401 when the key is missing, malformed, unknown or revoked; 403 when a valid
key asks for what its scope does not cover (another tenant's data, an admin
route). The tenant always comes from the key, never from the request body.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from storage.api_keys import KeyRejected, Principal, authenticate
from web.db import sessions

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer ak_...`")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key: `X-API-Key: ak_...`")

UNAUTHORIZED_HEADERS = {"WWW-Authenticate": "Bearer"}


class ErrorDetail(BaseModel):
    """The body of a refusal: what was wrong, in words."""

    detail: str


# For the OpenAPI schema of routes behind ``principal``: what a refused key gets.
KEY_REFUSED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorDetail, "description": "Missing, malformed, unknown, revoked or expired API key"},
}
# For routes that read a JSON body: one that is not even text (not UTF-8) gets a 400 (web.body_limit).
BODY_UNREADABLE: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorDetail, "description": "The body could not be read (not UTF-8 text)"},
}
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    **KEY_REFUSED,
    403: {"model": ErrorDetail, "description": "The key's scope does not cover this request"},
}


def principal(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    header_key: str | None = Depends(api_key_header),
) -> Principal:
    key = credentials.credentials if credentials is not None else header_key
    if not key:
        raise HTTPException(401, "an API key is required (Authorization: Bearer ak_...)", UNAUTHORIZED_HEADERS)
    try:
        # begin(): authenticate records the key's last use (at most once a minute) and this commits it.
        with sessions(request).begin() as session:
            return authenticate(session, key)
    except KeyRejected as exc:
        raise HTTPException(401, str(exc), UNAUTHORIZED_HEADERS) from None


def tenant_principal(who: Principal = Depends(principal)) -> Principal:
    """A key that writes as one tenant; admin keys do not write events."""
    if who.tenant_id is None:
        raise HTTPException(403, "this route needs a tenant key; admin keys have no tenant to write as")
    return who


def admin_principal(who: Principal = Depends(principal)) -> Principal:
    """An admin key: routes that read across tenants or change what every tenant sees (prices)."""
    if not who.is_admin:
        raise HTTPException(403, "this route needs an admin key")
    return who


def readable_tenant(tenant_id: str, who: Principal = Depends(principal)) -> str:
    """The path's tenant, if the key may read it: its own tenant, or any for admin."""
    if not who.is_admin and who.tenant_id != tenant_id:
        raise HTTPException(403, "this key cannot read another tenant's data")
    return tenant_id
