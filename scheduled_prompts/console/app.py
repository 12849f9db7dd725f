"""The console's ASGI app (Starlette) and the uvicorn server that runs it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from ..errors import StoreUnavailable
from . import actions, pages
from .auth import Access, CsrfRejected, session_key
from .middleware import AccessLog, LoginGate, SecurityHeaders
from .site import STATIC, Site

log = logging.getLogger("scheduled_prompts.console")

#: A session lasts this long after login (the cookie's Max-Age and signature age).
SESSION_SECONDS = 8 * 3600
SESSION_COOKIE = "sp_console"

Handler = Callable[[Site, Request], Awaitable[Response]]


def create_app(access: Access, *, secret: str | None = None) -> ASGIApp:
    """The console for ``access``; ``secret`` signs the session cookie (new if None)."""
    site = Site(access)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await site.open()
        try:
            yield
        finally:
            await site.close()

    def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await handler(site, request)

        return endpoint

    async def refused(request: Request, exc: Exception) -> Response:
        status, text = _refusal(exc)
        return site.render(
            request,
            "message.html",
            {"title": f"Error {status}", "nav": "", "message": text},
            status,
        )

    routes = [
        Route("/", page(pages.prompt_list)),
        Route("/prompts/{prompt_id:path}", page(pages.prompt_detail)),
        Route("/failures", page(pages.failures)),
        Route("/load", page(pages.load)),
        Route("/login", page(actions.login_form), methods=["GET"]),
        Route("/login", page(actions.login), methods=["POST"]),
        Route("/logout", page(actions.logout), methods=["POST"]),
        Route("/actions/{action}", page(actions.act), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        # Browsers ask for it on every page: "no icon", not a 404 in the log.
        Route("/favicon.ico", _no_content),
    ]
    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=secret or session_key(),
            session_cookie=SESSION_COOKIE,
            max_age=SESSION_SECONDS,
            same_site="lax",
        ),
        Middleware(LoginGate, access=access),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            HTTPException: refused,
            CsrfRejected: refused,
            StoreUnavailable: refused,
        },
    )
    # Outside Starlette's own error middleware, so even its 500 carries the headers.
    return AccessLog(SecurityHeaders(app))


async def _no_content(request: Request) -> Response:
    return Response(status_code=204)


def _refusal(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, CsrfRejected):
        return 403, (
            "This form did not come from this console session (missing or wrong CSRF "
            "token): nothing was done. Reload the page and try again."
        )
    if isinstance(exc, StoreUnavailable):
        log.warning("console: %s", exc)
        return 503, f"Redis is unavailable right now: {exc}"
    assert isinstance(exc, HTTPException)
    return exc.status_code, exc.detail


def serve(host: str, port: int, access: Access) -> None:
    """Serve the console until SIGINT or SIGTERM, logging each request without its query
    string (uvicorn's access log is off: it would print the search text)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = uvicorn.Config(
        create_app(access), host=host, port=port, log_level="info", access_log=False
    )
    uvicorn.Server(config).run()
