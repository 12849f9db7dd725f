"""What every page handler needs: the access rule, the templates, the Redis client, and
the library's plans driven on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import jinja2
from redis.asyncio import Redis as AsyncRedis
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from .. import aio, connection
from ..plans import Plan
from ..store import Scope
from .auth import Access, csrf_token, take_flash

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def templates() -> Jinja2Templates:
    # Autoescape everywhere: prompt text, user ids and metadata come from users and models.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return Jinja2Templates(env=env)


class Site:
    """One running console: opened by the app's lifespan, closed with it."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self.templates = templates()
        self._redis: AsyncRedis | None = None

    async def open(self) -> None:
        self._redis = connection.new_async_redis()

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    @property
    def scope(self) -> Scope:
        return connection.scope()

    async def run(self, plan: Plan[T]) -> T:
        """Drive a library plan on the console's client (Redis away: StoreUnavailable)."""
        if self._redis is None:
            raise RuntimeError("the console is not started (no lifespan)")
        return await aio.arun(plan, self._redis)

    def render(
        self, request: Request, name: str, context: dict[str, Any], status_code: int = 200
    ) -> HTMLResponse:
        """A page, with what every page shows: the CSRF token, the message left by the
        last action, and whether there is a session to log out of."""
        page = {
            "csrf": csrf_token(request),
            "flash": take_flash(request),
            "login_required": not self.access.open,
            **context,
        }
        return self.templates.TemplateResponse(request, name, page, status_code=status_code)
