"""Who is calling: the API key in ``Authorization: Bearer ...`` (or ``X-API-Key``).

401 when the key is missing, malformed, unknown or revoked; 403 when a valid
key asks for what its scope does not cover (another tenant's data, an admin
route). The tenant always comes from the key, never from the request body.
"""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from storage.api_keys import KeyRejected, Principal, authenticate
from web.db import sessions

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer ak_...`")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key: `X-API-Key: ak_...`")

UNAUTHORIZED_HEADERS = {"WWW-Authenticate": "Bearer"}


def principal(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    header_key: str | None = Depends(api_key_header),
) -> Principal:
    key = credentials.credentials if credentials is not None else header_key
    if not key:
        raise HTTPException(401, "an API key is required (Authorization: Bearer ak_...)", UNAUTHORIZED_HEADERS)
    try:
        with sessions(request)() as session:
            return authenticate(session, key)
    except KeyRejected as exc:
        raise HTTPException(401, str(exc), UNAUTHORIZED_HEADERS) from None


def tenant_principal(who: Principal = Depends(principal)) -> Principal:
    """A key that writes as one tenant; admin keys do not write events."""
    if who.tenant_id is None:
        raise HTTPException(403, "this route needs a tenant key; admin keys have no tenant to write as")
    return who


def readable_tenant(tenant_id: str, who: Principal = Depends(principal)) -> str:
    """The path's tenant, if the key may read it: its own tenant, or any for admin."""
    if not who.is_admin and who.tenant_id != tenant_id:
        raise HTTPException(403, "this key cannot read another tenant's data")
    return tenant_id
