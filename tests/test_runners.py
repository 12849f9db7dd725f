"""Runners: LogRunner, signatures, WebhookRunner against a real local HTTP server,
registration and loading by import path."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import scheduled_prompts as sp
from scheduled_prompts.runners import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    get_runner,
    load_runner,
    sign,
    verify_signature,
)
from support.redis_server import free_port

SECRET = "whsec-test-0123456789"


def payload(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "scheduled_prompt",
        "prompt_id": "p1",
        "idempotency_key": "p1:1767225600000",
        "occurrence": "2026-01-01T00:00:00.000Z",
        "fired_at": "2026-01-01T00:00:00.250Z",
        "lateness_seconds": 0.25,
        "attempt": 1,
        "run_number": 3,
        "kind": "cron",
        "prompt": "summarise my secret inbox",
        "user_id": "u1",
        "platform": "slack",
        "channel_id": "C42",
        "metadata": {"lang": "pt", "emoji": "☕"},
    }
    return {**base, **changes}


class Noop:
    def handle_webhook(self, payload: dict[str, Any]) -> None:
        pass


# --- LogRunner ------------------------------------------------------------------------


def test_log_runner_logs_key_at_info_and_prompt_only_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = sp.LogRunner()
    with caplog.at_level(logging.INFO, "scheduled_prompts.deliveries"):
        runner.handle_webhook(payload())
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "p1:1767225600000" in caplog.text
    assert "slack/C42" in caplog.text and "u1" in caplog.text
    assert "secret inbox" not in caplog.text

    caplog.clear()
    with caplog.at_level(logging.DEBUG, "scheduled_prompts.deliveries"):
        runner.handle_webhook(payload())
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 1 and "summarise my secret inbox" in debug[0].getMessage()
    info = [r for r in caplog.records if r.levelno == logging.INFO]
    assert all("secret inbox" not in r.getMessage() for r in info)


def test_log_runner_uses_the_logger_it_is_given(caplog: pytest.LogCaptureFixture) -> None:
    runner = sp.LogRunner(logging.getLogger("my.bot"))
    with caplog.at_level(logging.INFO, "my.bot"):
        runner.handle_webhook(payload(channel_id=None))
    assert [r.name for r in caplog.records] == ["my.bot"]
    assert "slack/-" in caplog.text


# --- signatures -----------------------------------------------------------------------

BODY = b'{"prompt_id":"p1","prompt":"hi"}'
TS = 1_767_225_600


def test_verify_accepts_signature_made_with_same_secret_within_tolerance() -> None:
    header = sign(SECRET, TS, BODY)
    assert header.startswith(f"t={TS},v1=")
    assert verify_signature(BODY, header, SECRET, now=TS)
    assert verify_signature(BODY, header, SECRET, now=TS + 299)
    assert verify_signature(BODY, header, SECRET, now=TS - 299)  # small clock skew
    assert verify_signature(BODY, header, SECRET.encode(), now=TS + 1)  # bytes secret
    assert verify_signature(BODY, sign(SECRET, int(time.time()), BODY), SECRET)


def test_verify_rejects_wrong_secret() -> None:
    assert not verify_signature(BODY, sign("other-secret", TS, BODY), SECRET, now=TS)


def test_verify_rejects_modified_body() -> None:
    header = sign(SECRET, TS, BODY)
    assert not verify_signature(BODY.replace(b"hi", b"ho"), header, SECRET, now=TS)
    assert not verify_signature(BODY + b" ", header, SECRET, now=TS)


def test_verify_rejects_timestamp_outside_tolerance() -> None:
    header = sign(SECRET, TS, BODY)
    assert not verify_signature(BODY, header, SECRET, now=TS + 301)  # a replay
    assert not verify_signature(BODY, header, SECRET, now=TS - 301)
    assert not verify_signature(BODY, header, SECRET, now=TS + 61, tolerance_seconds=60)
    # A fresh timestamp on a captured MAC does not verify: the MAC covers the timestamp.
    mac = header.partition(",v1=")[2]
    assert not verify_signature(BODY, f"t={TS + 1000},v1={mac}", SECRET, now=TS + 1000)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        "t=,v1=abc",
        "t=notanumber,v1=abc",
        f"v1={sign(SECRET, TS, BODY).partition(',v1=')[2]}",  # no timestamp
        f"t={TS}",  # no MAC
        f"t={TS},v1=",
        f"t={TS},v1=00",
    ],
)
def test_verify_rejects_missing_or_garbled_header(header: str | None) -> None:
    assert not verify_signature(BODY, header, SECRET, now=TS)


# --- WebhookRunner against a real HTTP server -----------------------------------------


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.status = 200
        self.hang = False
        self.release = threading.Event()
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/prompt"


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append((self.path, dict(self.headers.items()), body))
        if self.server.hang:
            self.server.release.wait(30)  # far longer than the runner's timeout
            return
        answer = b"" if self.server.status == 204 else f"status {self.server.status}".encode()
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture
def make_runner() -> Iterator[Callable[..., sp.WebhookRunner]]:
    made: list[sp.WebhookRunner] = []

    def make(url: str, **kw: Any) -> sp.WebhookRunner:
        kw.setdefault("timeout", 5.0)
        runner = sp.WebhookRunner(url, SECRET, **kw)
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.client.close()


def header(headers: dict[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def test_webhook_posts_signed_json_with_idempotency_key(
    server: Server, make_runner: Callable[..., sp.WebhookRunner]
) -> None:
    runner = make_runner(server.url, headers={"Authorization": "Bearer abc"})
    sent = payload()
    assert runner.handle_webhook(sent) is None
    ((path, headers, body),) = server.requests
    assert path == "/hooks/prompt"
    assert json.loads(body) == sent
    assert header(headers, "Content-Type") == "application/json"
    assert header(headers, IDEMPOTENCY_HEADER) == "p1:1767225600000"
    assert header(headers, "Idempotency-Key") == "p1:1767225600000"
    assert SIGNATURE_HEADER == "X-Scheduled-Prompts-Signature"
    assert header(headers, "Authorization") == "Bearer abc"
    signature = header(headers, SIGNATURE_HEADER)
    assert signature is not None
    assert verify_signature(body, signature, SECRET)
    assert not verify_signature(body, signature, "wrong-secret")


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_webhook_2xx_is_delivered(
    server: Server, make_runner: Callable[..., sp.WebhookRunner], status: int
) -> None:
    server.status = status
    make_runner(server.url).handle_webhook(payload())
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
def test_webhook_retryable_status_raises_delivery_error(
    server: Server, make_runner: Callable[..., sp.WebhookRunner], status: int
) -> None:
    server.status = status
    with pytest.raises(sp.DeliveryError, match=str(status)) as info:
        make_runner(server.url).handle_webhook(payload())
    assert not isinstance(info.value, sp.PermanentDeliveryError)


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_webhook_other_4xx_raises_permanent_delivery_error(
    server: Server, make_runner: Callable[..., sp.WebhookRunner], status: int
) -> None:
    server.status = status
    with pytest.raises(sp.PermanentDeliveryError, match=str(status)):
        make_runner(server.url).handle_webhook(payload())


def test_webhook_timeout_raises_delivery_error(
    server: Server, make_runner: Callable[..., sp.WebhookRunner]
) -> None:
    server.hang = True
    runner = make_runner(server.url, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(sp.DeliveryError, match="timed out") as info:
        runner.handle_webhook(payload())
    # It gave up on its own 0.2 s timeout, not when the server let go (30 s); the bound
    # leaves 50 times the timeout for a loaded machine.
    assert time.monotonic() - started < 10
    assert not isinstance(info.value, sp.PermanentDeliveryError)


def test_webhook_connection_refused_raises_delivery_error(
    make_runner: Callable[..., sp.WebhookRunner],
) -> None:
    runner = make_runner(f"http://127.0.0.1:{free_port()}/hook", timeout=2.0)
    with pytest.raises(sp.DeliveryError, match="unreachable") as info:
        runner.handle_webhook(payload())
    assert not isinstance(info.value, sp.PermanentDeliveryError)


@pytest.mark.parametrize(
    ("url", "secret", "message"),
    [
        ("ftp://example.com/hook", SECRET, "http:// or https://"),
        ("example.com/hook", SECRET, "http:// or https://"),
        ("https://example.com/hook", "", "secret is required"),
    ],
)
def test_webhook_runner_rejects_bad_url_or_empty_secret(
    url: str, secret: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sp.WebhookRunner(url, secret)


# --- registration and loading ---------------------------------------------------------


@pytest.fixture
def clean_registry() -> Iterator[None]:
    yield
    sp.set_bot_runner(None)
    for platform in ("slack", "telegram"):
        sp.set_bot_runner(None, platform=platform)
    sp.configure()


@pytest.mark.parametrize(
    "bad", [object(), "a string", type("HasAttr", (), {"handle_webhook": 3})()]
)
def test_set_bot_runner_rejects_object_without_handle_webhook(
    clean_registry: None, bad: object
) -> None:
    with pytest.raises(TypeError, match="handle_webhook"):
        sp.set_bot_runner(bad)  # type: ignore[arg-type]
    sp.configure(runner=None)
    with pytest.raises(sp.RunnerNotConfigured):
        get_runner("telegram")  # nothing was registered


def test_platform_registration_wins_over_default(clean_registry: None) -> None:
    default, slack = Noop(), Noop()
    sp.set_bot_runner(default)
    sp.set_bot_runner(slack, platform="slack")
    assert get_runner("slack") is slack
    assert get_runner("telegram") is default
    sp.set_bot_runner(None, platform="slack")
    assert get_runner("slack") is default
    sp.set_bot_runner(None)
    sp.configure(runner=None)
    with pytest.raises(sp.RunnerNotConfigured, match="SCHEDULED_PROMPTS_RUNNER"):
        get_runner("slack")


def test_registered_runner_wins_over_import_path_setting(clean_registry: None) -> None:
    sp.configure(runner="tests.test_runners:Noop")
    loaded = get_runner("slack")
    assert isinstance(loaded, Noop)
    assert get_runner("telegram") is loaded  # loaded once per worker
    mine = Noop()
    sp.set_bot_runner(mine)
    assert get_runner("slack") is mine


def test_load_runner_instantiates_class_and_keeps_instances() -> None:
    assert isinstance(load_runner("tests.test_runners:Noop"), Noop)
    assert isinstance(load_runner("scheduled_prompts.runners:LogRunner"), sp.LogRunner)
    instance = load_runner("tests.test_runners:NOOP_INSTANCE")
    assert instance is NOOP_INSTANCE


NOOP_INSTANCE = Noop()


@pytest.mark.parametrize(
    "path",
    [
        "no_colon_at_all",
        ":Runner",
        "tests.test_runners:",
        "no_such_module_xyz:Runner",
        "tests.test_runners:NoSuchRunner",
        "builtins:object",  # imports, has no handle_webhook
        "os:sep",  # imports, is not callable
        "json:dumps",  # a callable that needs arguments
        ".relative_module:Runner",  # a relative import: importlib raises TypeError
    ],
)
def test_load_runner_bad_path_names_the_setting(path: str) -> None:
    with pytest.raises(ValueError, match="SCHEDULED_PROMPTS_RUNNER"):
        load_runner(path)
