"""ASGI middleware of the console: response headers, the access log, the login gate."""

from __future__ import annotations

import logging
import time
from urllib.parse import quote

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import Access, logged_in

access_log = logging.getLogger("scheduled_prompts.console.access")

#: No inline script or style anywhere: the stylesheet is a file the console serves.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: Served without a session: the login form and the stylesheet it needs.
LOGIN = "/login"
STATIC = "/static/"
FAVICON = "/favicon.ico"


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response; pages (not the stylesheet) are
    also never cached, since they show prompt text."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith(STATIC)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if not static:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class AccessLog:
    """One line per request: method, path, status, time. Never the query string: the
    search text travels in it, and prompt text stays out of the logs (uvicorn's own
    access log, which prints it, is off)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            client = scope.get("client") or ("-", 0)
            access_log.info(
                '%s "%s %s" %d %.1f ms',
                client[0],
                scope["method"],
                quote(scope["path"], safe="/:@+=-._~"),
                status,
                (time.perf_counter() - started) * 1000,
            )


class LoginGate:
    """Without a logged-in session: a page is a redirect to the login form, a POST is
    401 (nothing runs)."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _public(scope["path"]):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        if logged_in(conn, self.access):
            await self.app(scope, receive, send)
            return
        response: Response
        if scope["method"] in ("GET", "HEAD"):
            target = conn.url.path + (f"?{conn.url.query}" if conn.url.query else "")
            response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        else:
            response = Response("log in first", status_code=401, media_type="text/plain")
        await response(scope, receive, send)


def _public(path: str) -> bool:
    return path in (LOGIN, FAVICON) or path.startswith(STATIC)
