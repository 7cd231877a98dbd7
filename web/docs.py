"""The API's documentation: ``GET /docs`` (Swagger UI) and ``GET /openapi.json``, off by default.

Both answer 404 unless API_DOCS_ENABLED is set: a deployment publishes its
schema only when it chooses to. ReDoc (``/redoc``) is not served. Swagger UI's
assets come from the npm package swagger-ui-dist (web/package.json, pinned by
web/package-lock.json, installed by ``scripts/setup``) and are served by this
process under ``/static/vendor/swagger-ui``; the page carries the dashboard's
Content-Security-Policy (``'self'`` only), so it loads nothing from the
internet. Without the package (npm was unavailable at setup) ``/docs`` says
so instead of falling back to a CDN.

The app itself is made with ``docs_url=None, redoc_url=None, openapi_url=None``
(web.app): these routes replace FastAPI's own, which load floating CDN
scripts without integrity.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

from config import get_settings

STATIC_DIR = Path(__file__).resolve().parent / "static"
DOCS_PAGE = STATIC_DIR / "docs.html"
DOCS_UNAVAILABLE_PAGE = STATIC_DIR / "docs-unavailable.html"
SWAGGER_UI_DIR = Path(__file__).resolve().parent / "node_modules" / "swagger-ui-dist"
SWAGGER_UI_URL = "/static/vendor/swagger-ui"
SWAGGER_UI_FILES = ("swagger-ui-bundle.js", "swagger-ui.css")  # what docs.html loads
DOCS_URL = "/docs"
SCHEMA_URL = "/openapi.json"
NOT_FOUND = 404
# As the dashboard page's (web.page), plus a connect-src for Swagger UI's "Try it out" (same origin).
DOCS_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(include_in_schema=False)


def swagger_ui_dir() -> Path | None:
    """Swagger UI's built assets, or None when the npm package was not installed."""
    present = all((SWAGGER_UI_DIR / name).is_file() for name in SWAGGER_UI_FILES)
    return SWAGGER_UI_DIR if present else None


def _enabled() -> None:
    """404 (as for any unknown path) unless API_DOCS_ENABLED: read per request, so a test can switch it."""
    if not get_settings().api_docs_enabled:
        raise HTTPException(NOT_FOUND, "Not Found")


@router.get(DOCS_URL)
def docs_page() -> HTMLResponse:
    _enabled()
    page = DOCS_PAGE if swagger_ui_dir() is not None else DOCS_UNAVAILABLE_PAGE
    return HTMLResponse(page.read_text(), headers=DOCS_HEADERS)


@router.get(SCHEMA_URL)
def openapi_schema(request: Request) -> JSONResponse:
    _enabled()
    return JSONResponse(request.app.openapi())
