"""create_app(config, engine): the ASGI application with its routes and lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from promptcast.config import Config
from promptcast.core.access import presented_token, token_ok
from promptcast.engine.pipeline import Engine
from promptcast.runtime.metrics import Metrics
from promptcast.runtime.runtime import Runtime
from promptcast.transport.mjpeg import mjpeg_endpoint
from promptcast.transport.webrtc import parse_ice_server, use_ice_host_addresses
from promptcast.transport.websocket import websocket_endpoint

WEB_DIR = Path(__file__).resolve().parents[2] / "client" / "web"


def create_app(
    config: Config,
    engine: Engine,
    on_failure: Callable[[BaseException], None] | None = None,
) -> Starlette:
    """The app. `engine` may be loaded already (tests share one); if not, the lifespan
    loads it in the background. `on_failure` is called if loading fails."""
    metrics = Metrics()
    ice_servers = [parse_ice_server(url) for url in config.ice_servers]
    if config.ice_hosts:
        use_ice_host_addresses(config.ice_hosts)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = Runtime(config, engine, metrics)
        app.state.runtime = runtime
        app.state.ice_servers = ice_servers
        runtime.start(on_failure)
        try:
            yield
        finally:
            await runtime.stop()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        ready, body = runtime.health()
        return JSONResponse(body, 200 if ready else 503)

    async def metrics_route(request: Request) -> Response:
        if config.protect_metrics and not token_ok(
            config.token, presented_token(request.headers, request.query_params, ())
        ):
            return JSONResponse({"error": "a valid bearer token is required"}, 401,
                                headers={"WWW-Authenticate": "Bearer"})
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_route),
        Route("/stream.mjpg", mjpeg_endpoint),
        WebSocketRoute("/ws", websocket_endpoint),
    ]
    if WEB_DIR.is_dir():  # the page lives in the source tree (editable installs)
        routes.append(Mount("/", StaticFiles(directory=WEB_DIR, html=True)))
    return Starlette(routes=routes, lifespan=lifespan)
