"""Who may use the console: the token login, the signed session, and CSRF tokens.

The operator logs in with the token (``SCHEDULED_PROMPTS_CONSOLE_TOKEN``), compared in
constant time; the session is a cookie signed with a key made at start (so a restart
logs everyone out), HttpOnly and SameSite=Lax. Every form — the login form included —
carries the session's CSRF token, checked in constant time before anything is done.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

#: Shortest token accepted at start.
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
_AUTHENTICATED = "auth"
_CSRF = "csrf"
_FLASH = "flash"
#: Longest message kept for the next page (the session is a cookie: ~4 KB at most).
_FLASH_CHARS = 500


class CsrfRejected(Exception):
    """A form without the session's CSRF token: nothing was done."""


@dataclass(frozen=True)
class Access:
    """The console's one secret; ``token=None`` serves without login (loopback only)."""

    token: str | None

    @property
    def open(self) -> bool:
        return self.token is None

    def admits(self, presented: str) -> bool:
        if self.token is None:
            return True
        return hmac.compare_digest(self.token.encode(), presented.encode())


def check_token(token: str, source: str) -> str:
    """``token`` if it is long enough; else ValueError naming ``source``, never the token."""
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"{source} is too short ({len(token)} characters): use at least "
            f"{MIN_TOKEN_CHARS}, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def session_key() -> str:
    """The key the session cookie is signed with: new at every start."""
    return secrets.token_urlsafe(32)


def logged_in(conn: HTTPConnection, access: Access) -> bool:
    return access.open or conn.session.get(_AUTHENTICATED) is True


def log_in(conn: HTTPConnection) -> None:
    """A fresh session (new CSRF token) for the operator who gave the token."""
    conn.session.clear()
    conn.session[_AUTHENTICATED] = True
    conn.session[_CSRF] = secrets.token_urlsafe(32)


def log_out(conn: HTTPConnection) -> None:
    conn.session.clear()


def csrf_token(conn: HTTPConnection) -> str:
    """The session's CSRF token, made on first use (a visitor's login form has one too)."""
    token = conn.session.get(_CSRF)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        conn.session[_CSRF] = token
    return token


def check_csrf(conn: HTTPConnection, form: Mapping[str, Any]) -> None:
    """Raise :class:`CsrfRejected` unless ``form`` carries this session's token."""
    expected = conn.session.get(_CSRF)
    given = form.get("csrf")
    if not isinstance(expected, str) or not expected or not isinstance(given, str):
        raise CsrfRejected()
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise CsrfRejected()


def flash(conn: HTTPConnection, kind: str, text: str) -> None:
    """A message for the next page shown (after a POST-redirect-GET)."""
    clipped = text if len(text) <= _FLASH_CHARS else text[: _FLASH_CHARS - 1] + "…"
    conn.session[_FLASH] = {"kind": kind, "text": clipped}


def take_flash(conn: HTTPConnection) -> dict[str, str] | None:
    found = conn.session.pop(_FLASH, None)
    if isinstance(found, dict) and {"kind", "text"} <= found.keys():
        return {"kind": str(found["kind"]), "text": str(found["text"])}
    return None


def safe_next(target: object) -> str:
    """Where to go after login: a path on this site only (no ``//host`` or ``/\\host``)."""
    if (
        isinstance(target, str)
        and target.startswith("/")
        and not target.startswith(("//", "/\\"))
        and all(c.isprintable() for c in target)
    ):
        return target
    return "/"
