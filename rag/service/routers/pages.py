"""The playground page and the API docs, both from files installed with the packages (nothing from a CDN).

The playground is three static files shipped in the package (``rag/service/static``); its Content-Security-Policy
refuses anything from elsewhere. Swagger UI's files come from the ``swagger-ui-py`` package's data (Swagger UI 5,
which reads the OpenAPI 3.1 documents FastAPI writes), so ``/docs`` works on an offline machine.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
"""The playground's files (package data: shipped in the wheel)."""

PAGE_HEADERS = {
    # Everything the page uses comes from this service; inline script, eval, frames and plugins are refused.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter()


@router.get("/", include_in_schema=False)
async def playground() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/docs", include_in_schema=False)
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="ragops query service - API docs",
        swagger_js_url="/docs-assets/swagger-ui-bundle.js",
        swagger_css_url="/docs-assets/swagger-ui.css",
        swagger_favicon_url="/docs-assets/favicon-32x32.png",
    )


def mount_pages(app: FastAPI) -> None:
    """The page routes plus the two static folders they load from."""
    from importlib.resources import files

    swagger_files = Path(str(files("swagger_ui") / "static"))
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs-assets", StaticFiles(directory=swagger_files), name="docs-assets")
