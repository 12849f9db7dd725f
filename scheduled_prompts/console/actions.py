"""The forms (POST): log in, log out, and pause, resume, trigger or cancel a prompt.

Every form is checked for the session's CSRF token first; a prompt action runs the
library's verb as the operator (``user_id=None``) and redirects back to the prompt's page
(POST-redirect-GET) with what happened — the library's own message when it refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .. import verbs
from .._time import utcnow
from ..errors import ConflictingPrompt, InvalidSchedule, PromptNotFound
from ..plans import Plan
from ..store import Scope
from .auth import check_csrf, flash, log_in, log_out, safe_next
from .pages import prompt_url
from .site import Site

log = logging.getLogger("scheduled_prompts.console")

Verb = Callable[[Scope, str, str | None, datetime], Plan[Any]]
VERBS: dict[str, Verb] = {
    "pause": verbs.pause,
    "resume": verbs.resume,
    "trigger": verbs.trigger,
    "cancel": verbs.cancel,
}
DONE = {
    "pause": "paused",
    "resume": "resumed",
    "trigger": "triggered: one extra delivery is on its way",
    "cancel": "cancelled",
}


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


async def login_form(site: Site, request: Request) -> Response:
    if site.access.open:
        return see_other("/")
    target = safe_next(request.query_params.get("next"))
    return site.render(request, "login.html", {"title": "Log in", "next": target, "error": None})


async def login(site: Site, request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form)
    target = safe_next(form.get("next"))
    presented = form.get("token")
    if site.access.admits(presented if isinstance(presented, str) else ""):
        log_in(request)
        return see_other(target)
    client = request.client.host if request.client else "-"
    log.warning("console login refused from %s: wrong token", client)
    return site.render(
        request,
        "login.html",
        {"title": "Log in", "next": target, "error": "That is not the console's token."},
        status_code=401,
    )


async def logout(site: Site, request: Request) -> Response:
    check_csrf(request, await request.form())
    log_out(request)
    return see_other("/login" if not site.access.open else "/")


async def act(site: Site, request: Request) -> Response:
    """``POST /actions/{action}`` with the form's ``prompt_id``."""
    form = await request.form()
    check_csrf(request, form)
    action = request.path_params["action"]
    prompt_id = form.get("prompt_id")
    if action not in VERBS or not isinstance(prompt_id, str) or not prompt_id:
        return Response("unknown action or prompt", status_code=400, media_type="text/plain")
    try:
        await site.run(VERBS[action](site.scope, prompt_id, None, utcnow()))
    except (ConflictingPrompt, PromptNotFound, InvalidSchedule) as exc:
        flash(request, "error", str(exc))
    else:
        log.info("%s %s by the operator", action, prompt_id)
        flash(request, "ok", f"Prompt {DONE[action]}.")
    return see_other(prompt_url(prompt_id))
