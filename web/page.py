"""The dashboard page: ``GET /dashboard`` (HTML) with its script and styles under ``/static``.

The page holds no data and no key: it runs in the browser, keeps the API key
the user pasted in ``sessionStorage`` (this tab only, gone when it closes; never
``localStorage``, which any later visitor of the browser profile could read)
and calls the tenant-scoped JSON routes (web.dashboard) with it in the
``Authorization`` header, like any other client. ``GET /api/me`` tells it which tenant a key reads, so a tenant key
needs no tenant typed in. Its charts come from one ``/feature-series`` request
for the web.dashboard.DEFAULT_SERIES_FEATURES features with the most calls (the
page says so when there are more); the table lists every feature. Its cost
figures come from web.cost (per feature with the previous period, per model,
per hour or day, top users) and ``/active-users``, filtered by feature and
model; amounts stay decimal strings, rounded as text, and calls no price covers
are flagged UNPRICED with their models, never shown as $0.

Chart.js is installed from the npm registry by ``scripts/setup`` (web/package.json,
pinned by web/package-lock.json) and served from this process at
``/static/vendor/chart.js``: the page loads nothing from the internet, and its
Content-Security-Policy (``'self'`` only) makes sure of it. When the library is
missing (npm was unavailable at setup) the page leaves its script tag out and
shows the summary table alone, saying why.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from config import get_settings
from storage.api_keys import Principal
from web import docs
from web.auth import KEY_REFUSED, principal

REPO_ROOT = Path(__file__).resolve().parent.parent
STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_FILE = STATIC_DIR / "dashboard.html"
STATIC_URL = "/static"
VENDOR_URL = "/static/vendor/chart.js"
CHART_JS_FILE = "chart.umd.min.js"  # the self-contained browser build
CHART_SCRIPT_MARK = "<!-- chart.js -->"
PAGE_URL = "/dashboard"
# Same origin only: scripts, styles, fetches. Chart.js styles its canvases
# through the CSSOM, which style-src does not restrict.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter()


class KeyInfo(BaseModel):
    """What the presented key may read: its tenant, or any tenant (admin, ``tenant_id`` null)."""

    scope: str
    tenant_id: str | None


def vendor_dir() -> Path | None:
    """The Chart.js build to serve, or None when it was not installed."""
    configured = Path(get_settings().dashboard_vendor_dir)
    directory = configured if configured.is_absolute() else REPO_ROOT / configured
    return directory if (directory / CHART_JS_FILE).is_file() else None


@lru_cache(maxsize=2)
def _page(charts: bool) -> str:
    script = f'<script src="{VENDOR_URL}/{CHART_JS_FILE}"></script>' if charts else ""
    return PAGE_FILE.read_text().replace(CHART_SCRIPT_MARK, script)


@router.get("/", include_in_schema=False)
def root() -> RedirectResponse:
    return RedirectResponse(PAGE_URL)


@router.get(PAGE_URL, include_in_schema=False)
def dashboard_page(request: Request) -> HTMLResponse:
    charts = getattr(request.app.state, "charts_available", False)
    return HTMLResponse(_page(charts), headers=PAGE_HEADERS)


@router.get("/api/me", tags=["keys"], response_model=KeyInfo, responses=KEY_REFUSED)
def key_info(who: Principal = Depends(principal)) -> KeyInfo:
    """The scope and tenant of the key in the request (the page fills its tenant from it)."""
    return KeyInfo(scope=who.scope, tenant_id=who.tenant_id)


def mount_static(app: FastAPI) -> None:
    """Serve web/static and, before it (mounts match in order), the vendored Chart.js and Swagger UI."""
    vendor = vendor_dir()
    app.state.charts_available = vendor is not None  # the page links the script only if it is served
    if vendor is not None:
        app.mount(VENDOR_URL, StaticFiles(directory=vendor), name="vendor-chart.js")
    swagger_ui = docs.swagger_ui_dir()
    if swagger_ui is not None:
        app.mount(docs.SWAGGER_UI_URL, StaticFiles(directory=swagger_ui), name="vendor-swagger-ui")
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")
