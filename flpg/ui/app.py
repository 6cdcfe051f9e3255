"""The dashboard as an ASGI app (Starlette): three pages, their JSON, and one stream of
server-sent events.

Pages: `/` (runs, filterable by `?status=&user=&app=&q=`), `/runs/{id}` (one run),
`/nodes`. JSON: `/api/runs`, `/api/runs/{id}`, `/api/runs/{id}/rounds`,
`/api/runs/{id}/selection`, `/api/runs/{id}/log?after=ID`, `/api/nodes`. Events:
`/events` (see `flpg.ui.events`). Every route answers GET (and HEAD) only: nothing here
writes, and the database connections are read-only besides. An error is a one-line
JSON `{"error": ...}` (API) or a small HTML page, never a traceback: 404 for a run this
role cannot see, 503 while the database is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from string import Template
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from flpg.errors import DatabaseUnavailable, FlpgError, NotFound, PermissionDenied
from flpg.store import ui as queries
from flpg.store.db import Connection
from flpg.store.ui import Reader, RunFilter
from flpg.ui.events import Hub

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"

KEEP_ALIVE = 15.0
"""Seconds between comments on an idle event stream (proxies close silent ones)."""


def status_of(exc: FlpgError) -> int:
    """The HTTP status of an FlpgError."""
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, DatabaseUnavailable):
        return 503
    if isinstance(exc, PermissionDenied):
        return 403
    return 500


def page(name: str, title: str, **values: str) -> str:
    """The HTML of `templates/NAME.html` inside the layout (values are HTML-escaped)."""
    safe = {k: html.escape(v) for k, v in values.items()}
    body = Template((TEMPLATES / f"{name}.html").read_text()).safe_substitute(safe)
    layout = Template((TEMPLATES / "layout.html").read_text())
    return layout.safe_substitute(title=html.escape(title), body=body, page=name)


def error_page(status: int, message: str) -> HTMLResponse:
    return HTMLResponse(page("error", f"{status}", message=message), status_code=status)


class Dashboard:
    """The routes, bound to one database's reader pool and event hub."""

    def __init__(self, url: str, *, poll: float, readers: int = 4) -> None:
        self.reader = Reader(url, size=readers)
        self.hub = Hub(url, self.reader, poll=poll)

    def read(self, fn: Callable[[Connection], Any]) -> JSONResponse:
        """`fn(conn)` on a reader connection, as JSON."""
        with self.reader.connection() as conn:
            return JSONResponse(fn(conn))

    # ------------------------------------------------------------------ pages

    def runs_page(self, request: Request) -> HTMLResponse:
        return HTMLResponse(page("runs", "flpg runs"))

    def nodes_page(self, request: Request) -> HTMLResponse:
        return HTMLResponse(page("nodes", "flpg nodes"))

    def run_page(self, request: Request) -> HTMLResponse:
        run_id = int(request.path_params["run_id"])
        with self.reader.connection() as conn:
            found = queries.run_summary(conn, run_id)
        title = f"run {run_id} · {found['app_name']}"
        return HTMLResponse(page("run", title, run_id=str(run_id)))

    # ------------------------------------------------------------------ JSON

    def api_runs(self, request: Request) -> JSONResponse:
        q = request.query_params
        filters = RunFilter(q.get("status"), q.get("user"), q.get("app"), q.get("q"))
        return self.read(lambda c: queries.runs(c, filters))

    def api_run(self, request: Request) -> JSONResponse:
        run_id = int(request.path_params["run_id"])
        return self.read(lambda c: queries.run_detail(c, run_id))

    def api_rounds(self, request: Request) -> JSONResponse:
        run_id = int(request.path_params["run_id"])
        return self.read(lambda c: queries.rounds(c, run_id))

    def api_selection(self, request: Request) -> JSONResponse:
        run_id = int(request.path_params["run_id"])
        return self.read(lambda c: queries.selection(c, run_id))

    def api_log(self, request: Request) -> JSONResponse:
        run_id = int(request.path_params["run_id"])
        after = request.query_params.get("after", "0")
        if not after.isdigit() or len(after) > 18:
            return JSONResponse({"error": f"after={after!r} is not a log line id"}, 400)
        return self.read(lambda c: queries.log(c, run_id, int(after)))

    def api_nodes(self, request: Request) -> JSONResponse:
        return self.read(queries.nodes)

    # ------------------------------------------------------------------ events

    async def events(self, request: Request) -> StreamingResponse:
        sub = self.hub.subscribe(asyncio.get_running_loop())

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 1000\nevent: hello\ndata: \n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(sub.queue.get(), KEEP_ALIVE)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if event is None:
                        return
                    yield f"event: {event[0]}\ndata: {event[1]}\n\n"
            finally:
                self.hub.unsubscribe(sub)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    # ------------------------------------------------------------------ errors

    async def flpg_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FlpgError)
        return self.error(request, status_of(exc), str(exc))

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return self.error(request, exc.status_code, str(exc.detail))

    async def server_error(self, request: Request, exc: Exception) -> Response:
        return self.error(request, 500, f"internal error ({type(exc).__name__})")

    @staticmethod
    def error(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith(("/api/", "/events")):
            return JSONResponse({"error": message}, status_code=status)
        return error_page(status, message)


def create_app(url: str, *, poll: float = 2.0) -> Starlette:
    """The dashboard of the database at `url` (read with that URL's role)."""
    board = Dashboard(url, poll=poll)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        board.hub.start()
        try:
            yield
        finally:
            board.hub.stop()
            board.reader.close()

    routes = [
        Route("/", board.runs_page),
        Route("/nodes", board.nodes_page),
        Route("/runs/{run_id:int}", board.run_page),
        Route("/api/runs", board.api_runs),
        Route("/api/runs/{run_id:int}", board.api_run),
        Route("/api/runs/{run_id:int}/rounds", board.api_rounds),
        Route("/api/runs/{run_id:int}/selection", board.api_selection),
        Route("/api/runs/{run_id:int}/log", board.api_log),
        Route("/api/nodes", board.api_nodes),
        Route("/events", board.events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            FlpgError: board.flpg_error,
            HTTPException: board.http_error,
            Exception: board.server_error,
        },
    )
    app.state.dashboard = board
    return app
