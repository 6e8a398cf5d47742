"""The FastAPI app: the routes of ``serving.routes`` (/predict, /predict/batch, /healthz, /v1/model, practice,
calibration), /docs, and the Gradio demo at /demo.

``create_app`` takes any ``Backend``: tests drive it in-process with a ``LocalBackend``, the Serve
ingress builds it on its replica around a ``HandleBackend`` (see ``deployments``).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from asl_platform.config import ServeConfig
from asl_platform.serving.backends import Backend
from asl_platform.serving.demo import mount_demo
from asl_platform.serving.metrics import RequestMetrics
from asl_platform.serving.protocol import BodySizeLimit, install_error_handlers
from asl_platform.serving.routes import (
    Serving, calibration_router, landmarks_router, model_router, practice_router, predict_router,
)

# multipart framing around a max-sized Gradio upload (its own per-file limit is max_request_bytes)
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def create_app(backend: Backend, settings: ServeConfig, browser_assets: bool | None = None) -> FastAPI:
    """The app for ``backend``: the routers of ``serving.routes``, /docs, and the demo. ``settings`` is read
    when the app is built, except ``SPELLING_KEYS``, which the demo (and /healthz) read at use time: the
    ingress's ``reconfigure`` changes them. The ``Serving`` the routes share is ``app.state.serving``.
    ``browser_assets``: whether the page's MediaPipe files are here (the ingress fetched them in a thread); None:
    make sure of them now (blocking; in-process use)."""
    serving = Serving(backend, settings)
    info = serving.info
    app = FastAPI(
        title="ASL alphabet recogniser",
        version=info["version"],
        description="Classify a photo of an American Sign Language hand sign into one of "
        f"{len(serving.classes)} classes (A-Z, del, nothing, space).",
        docs_url=None, redoc_url=None,  # /docs below, from local files: no CDN, works offline
    )
    app.state.serving = serving
    install_error_handlers(app)
    routers = [predict_router(serving), model_router(serving), practice_router(serving)]
    if serving.hand_aware:  # calibration reads hands: an image-only model has no such route
        routers += [landmarks_router(serving), calibration_router(serving)]
    for router in routers:
        add_routes(app, router)
    add_docs(app)
    app.add_api_route("/", _index_route("/demo/" if settings.demo else "/docs"), include_in_schema=False)
    if settings.demo:
        app = mount_demo(app, backend, settings, browser_assets)
    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes + MULTIPART_OVERHEAD_BYTES)
    app.add_middleware(RequestMetrics, metrics=serving.metrics)  # added last: outermost, so it sees every answer
    return app


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """The router's routes as routes of the app itself. FastAPI 0.165's ``include_router`` keeps a router
    as one opaque entry of ``app.routes``; flat, every route (and its path) stays visible to whoever
    lists them, as test_security's check that no route takes a path does. No prefix, no dependencies:
    nothing of ``include_router`` is lost."""
    app.router.routes.extend(router.routes)


def _index_route(target: str):
    """``/``: to the demo when there is one, else to the API's docs."""

    async def index() -> RedirectResponse:
        return RedirectResponse(target)

    return index


def add_docs(app: FastAPI) -> None:
    """/docs: Swagger UI from fastapi-offline's copy (Swagger UI 5, which reads OpenAPI 3.1) instead
    of FastAPI's default CDN links, so "Try it out" works on machines without internet. Three fixed
    routes, not a static mount: no route of this API takes a path."""
    from importlib.resources import files

    assets = files("fastapi_offline") / "static"
    for name, media_type in (("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css"),
                             ("favicon.png", "image/png")):
        app.add_api_route(f"/docs/{name}", _file_route(str(assets / name), media_type), include_in_schema=False)

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API",
                                   swagger_js_url=f"{root}/docs/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}/docs/swagger-ui.css",
                                   swagger_favicon_url=f"{root}/docs/favicon.png")


def _file_route(path: str, media_type: str):
    """An endpoint that answers one fixed file (no parameters, so none in its signature either)."""

    async def send_file() -> FileResponse:
        return FileResponse(path, media_type=media_type)

    return send_file
