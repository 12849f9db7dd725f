"""Security (docs/security.md): Redis credentials and TLS, passwords masked in every log and
error, webhook signatures against replays, no prompt text in logs at INFO, Flower in
compose, and identity taken only from the ToolContext."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import shutil
import subprocess
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis

import scheduled_prompts as sp
from scheduled_prompts import aio, engine
from scheduled_prompts._time import to_ms, utcnow
from scheduled_prompts.cli import main as cli_main
from scheduled_prompts.connection import get_redis
from scheduled_prompts.engine import Outcome
from scheduled_prompts.keys import Keys
from scheduled_prompts.occurrences import Delivery
from scheduled_prompts.runners import SIGNATURE_HEADER, sign, verify_signature
from scheduled_prompts.settings import mask_url
from scheduled_prompts.tools import ToolContext, handle_tool_call, handle_tool_call_async
from support.redis_server import RedisServer, free_port, redis_server_binary
from tests.test_compose import argv, environment, raw_compose, services

PASSWORD = "s3cret-Pw-7d1e"
ACL_USER = "app"
ACL_PASSWORD = "s3cret-acl-4f9a"
WRONG = "wr0ng-guess-c2b8"
SECRET_PROMPT = "SECRET-PROMPT-7f3a: transfer the savings to account 0042"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


# --- redis-servers that require credentials, or TLS ------------------------------------


@dataclass(frozen=True)
class Tls:
    """A throwaway CA and a server certificate it signed (for 127.0.0.1 and localhost)."""

    ca: Path
    cert: Path
    key: Path


class SecuredRedis(RedisServer):
    """A :class:`RedisServer` whose readiness check authenticates (and speaks TLS).

    ``RedisServer.start`` pings without credentials, so a server that requires a password
    never looks ready to it.
    """

    def __init__(
        self,
        *extra: str,
        username: str | None = None,
        password: str | None = None,
        tls: Tls | None = None,
    ) -> None:
        super().__init__(*extra)
        self.username = username
        self.password = password
        self.tls = tls

    def url_with(
        self, username: str | None = None, password: str | None = None, scheme: str = ""
    ) -> str:
        scheme = scheme or ("rediss" if self.tls else "redis")
        auth = ""
        if username or password:
            auth = f"{quote(username or '', safe='')}:{quote(password or '', safe='')}@"
        url = f"{scheme}://{auth}127.0.0.1:{self.port}/0"
        if self.tls and scheme == "rediss":
            url += f"?ssl_cert_reqs=required&ssl_ca_certs={self.tls.ca}"
        return url

    @property
    def url(self) -> str:
        return self.url_with(self.username, self.password)

    @property
    def log_path(self) -> Path:
        return Path(self.directory) / "server.log"

    def start(self) -> SecuredRedis:
        if self.tls is None:
            listen = ["--port", str(self.port)]
        else:
            listen = [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no",
            ]  # fmt: skip
        args = [
            redis_server_binary(), *listen,
            "--bind", "127.0.0.1", "--dir", self.directory, "--save", "",
            "--appendonly", "no", "--protected-mode", "no", *self.extra,
        ]  # fmt: skip
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, cwd=self.directory
            )
        client = redis.Redis(
            port=self.port,
            username=self.username,
            password=self.password,
            ssl=self.tls is not None,
            ssl_ca_certs=str(self.tls.ca) if self.tls else None,
            socket_connect_timeout=0.2,
        )
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        self.stop()
                        raise RuntimeError(
                            f"redis-server did not start: {self.log_path.read_text()[-800:]}"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def flush(self) -> None:
        client = redis.Redis.from_url(self.url)
        client.flushall()
        client.close()


def password_server() -> SecuredRedis:
    return SecuredRedis("--requirepass", PASSWORD, password=PASSWORD)


def acl_server() -> SecuredRedis:
    return SecuredRedis(
        "--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all",
        "--user", "default", "off",
        username=ACL_USER, password=ACL_PASSWORD,
    )  # fmt: skip


@pytest.fixture(scope="module", params=["requirepass", "acl-user"])
def secured(request: pytest.FixtureRequest) -> Iterator[SecuredRedis]:
    server = (password_server if request.param == "requirepass" else acl_server)().start()
    yield server
    server.cleanup()


@pytest.fixture
def secured_url(secured: SecuredRedis) -> Iterator[str]:
    secured.flush()
    sp.configure(redis_url=secured.url)
    yield secured.url
    sp.configure()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    if not Path(OPENSSL).exists():
        pytest.skip("the openssl CLI is needed to make a throwaway CA")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=scheduled-prompts test CA", cwd=d)  # fmt: skip
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=d)  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf",
             cwd=d)  # fmt: skip
    return Tls(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")


@pytest.fixture(scope="module")
def tls_server(tls_files: Tls) -> Iterator[SecuredRedis]:
    server = SecuredRedis("--requirepass", PASSWORD, password=PASSWORD, tls=tls_files)
    try:
        server.start()
    except RuntimeError:
        text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
        server.cleanup()
        if "tls" in text.lower() and "bad directive" in text.lower():
            pytest.skip(f"{redis_server_binary()} was built without TLS support")
        raise
    yield server
    server.cleanup()


@pytest.fixture
def tls_url(tls_server: SecuredRedis) -> Iterator[str]:
    tls_server.flush()
    sp.configure(redis_url=tls_server.url)
    yield tls_server.url
    sp.configure()


def schedule_list_cancel() -> None:
    """The API's round trip: what works with the configured URL."""
    p = sp.schedule_prompt("water the plants", user_id="ana", platform="tg", delay=3600)
    assert [x.id for x in sp.list_prompts(user_id="ana").items] == [p.id]
    assert sp.cancel_prompt(p.id, user_id="ana").status is sp.Status.CANCELLED
    assert asyncio.run(aio.get_prompt(p.id)) == sp.get_prompt(p.id)


def full_text(exc: BaseException) -> str:
    """Everything a traceback of ``exc`` would show, causes included."""
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(getattr(exc, "url", ""))


# --- Redis with a password or an ACL user ------------------------------------------


def test_password_or_acl_user_in_the_url_schedules_lists_and_cancels(
    secured: SecuredRedis, secured_url: str
) -> None:
    schedule_list_cancel()
    # The server really demands the credentials: without them, nothing works.
    sp.configure(redis_url=secured.url_with(), redis_timeout_seconds=1)
    with pytest.raises(sp.StoreUnavailable):
        sp.list_prompts()


def test_wrong_password_is_store_unavailable_naming_the_url_masked(
    secured: SecuredRedis, secured_url: str
) -> None:
    url = secured.url_with(secured.username, WRONG)
    sp.configure(redis_url=url, redis_timeout_seconds=1)
    for call in (
        lambda: sp.schedule_prompt("x", user_id="ana", platform="tg", delay=3600),
        lambda: sp.list_prompts(user_id="ana"),
        lambda: asyncio.run(aio.list_prompts(user_id="ana")),
    ):
        with pytest.raises(sp.StoreUnavailable) as caught:
            call()
        assert mask_url(url) in str(caught.value)
        assert f":***@127.0.0.1:{secured.port}" in str(caught.value)
        text = full_text(caught.value)
        assert WRONG not in text and PASSWORD not in text and ACL_PASSWORD not in text


def test_cli_with_a_wrong_password_prints_one_line_without_it(
    secured: SecuredRedis, secured_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = secured.url_with(secured.username, WRONG)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--redis-url", url, "list"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("Error: ")
    assert "***" in err and WRONG not in err

    with pytest.raises(SystemExit) as exit_:
        cli_main(["--redis-url", url, "doctor", "--json"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 1
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert not checks["redis"]["ok"] and "***" in checks["redis"]["detail"]
    assert WRONG not in out + err


# --- TLS ---------------------------------------------------------------------------


def test_api_works_over_tls_with_a_verified_certificate(
    tls_server: SecuredRedis, tls_url: str
) -> None:
    assert tls_url.startswith("rediss://:")
    schedule_list_cancel()
    assert sp.get_settings().redis_url == tls_url


def test_rediss_sentinel_speaks_tls_to_the_sentinel_the_primary_and_the_broker(
    tls_server: SecuredRedis, tls_files: Tls, tmp_path: Path
) -> None:
    """A sentinel reachable over TLS only, watching the TLS-only primary: the store and
    the broker (kombu's Sentinel transport with ``broker_use_ssl``) both go through it."""
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        "\n".join(
            [
                "port 0",
                f"tls-port {port}",
                "bind 127.0.0.1",
                f"dir {tmp_path}",
                f"tls-cert-file {tls_files.cert}",
                f"tls-key-file {tls_files.key}",
                f"tls-ca-cert-file {tls_files.ca}",
                "tls-auth-clients no",
                "tls-replication yes",
                f"sentinel monitor tls-main 127.0.0.1 {tls_server.port} 1",
                f"sentinel auth-pass tls-main {PASSWORD}",
            ]
        )
        + "\n"
    )
    sentinel = subprocess.Popen(
        [redis_server_binary(), str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = (
        f"rediss+sentinel://:{PASSWORD}@127.0.0.1:{port}/tls-main/0"
        f"?ssl_cert_reqs=required&ssl_ca_certs={tls_files.ca}"
    )
    try:
        tls_server.flush()
        sp.configure(redis_url=url)
        deadline = time.monotonic() + 30
        while True:
            try:
                made = sp.schedule_prompt("over tls", user_id="u", platform="p", delay=600)
                break
            except sp.StoreUnavailable:
                assert sentinel.poll() is None, "the sentinel refused its TLS configuration"
                assert time.monotonic() < deadline, "the sentinel never named the primary"
                time.sleep(0.1)
        assert sp.get_prompt(made.id) == made
        direct = redis.Redis.from_url(tls_server.url)
        assert direct.exists(f"sp:prompt:{made.id}") == 1
        from scheduled_prompts.celery_app import app

        with app.connection_for_write() as conn:
            queue = conn.SimpleQueue("tls-sentinel-broker")
            queue.put({"over": "tls"})
            message = queue.get(timeout=10)
            assert message.payload == {"over": "tls"}
            message.ack()
            queue.close()
        assert direct.exists("_kombu.binding.tls-sentinel-broker") == 1
        direct.close()
        # Without the CA, the sentinel's certificate is not trusted: nothing is reached.
        sp.configure(redis_url=url.replace(f"&ssl_ca_certs={tls_files.ca}", ""))
        with pytest.raises(sp.StoreUnavailable) as caught:
            sp.get_prompt(made.id)
        assert PASSWORD not in str(caught.value)
    finally:
        sp.configure()
        sentinel.terminate()
        sentinel.wait(10)


def test_new_settings_drop_the_broker_tls_of_the_old_ones() -> None:
    from scheduled_prompts.celery_app import app

    sp.configure(redis_url="rediss+sentinel://:pw@127.0.0.1:1/main/0?ssl_cert_reqs=required")
    try:
        assert app.conf.broker_use_ssl == {"ssl_cert_reqs": "required"}
        assert app.conf.broker_transport_options["master_name"] == "main"
    finally:
        sp.configure()
    assert not app.conf.broker_use_ssl
    assert "master_name" not in app.conf.broker_transport_options


def test_plain_redis_url_to_the_tls_port_is_store_unavailable(
    tls_server: SecuredRedis, tls_url: str
) -> None:
    plain = tls_server.url_with(password=PASSWORD, scheme="redis")
    sp.configure(redis_url=plain, redis_timeout_seconds=1)
    with pytest.raises(sp.StoreUnavailable) as caught:
        sp.list_prompts()
    assert PASSWORD not in full_text(caught.value)


def test_tls_with_an_unknown_ca_or_wrong_password_is_refused_and_masked(
    tls_server: SecuredRedis, tls_url: str
) -> None:
    # No ssl_ca_certs: the system CAs do not know the throwaway CA, so the server's
    # certificate is refused (the client does verify it).
    unverified = f"rediss://:{PASSWORD}@127.0.0.1:{tls_server.port}/0?ssl_cert_reqs=required"
    wrong = tls_server.url_with(password=WRONG)
    for url, reason in ((unverified, "certificate verify failed"), (wrong, "")):
        sp.configure(redis_url=url, redis_timeout_seconds=2)
        with pytest.raises(sp.StoreUnavailable) as caught:
            sp.list_prompts()
        message = str(caught.value)
        assert f"rediss://:***@127.0.0.1:{tls_server.port}/0" in message
        assert reason in message
        assert PASSWORD not in full_text(caught.value) and WRONG not in full_text(caught.value)


# --- masking -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "secret", "shown"),
    [
        ("redis://:pw-only-81@cache.internal:6379/0", "pw-only-81", "redis://:***@cache.internal"),
        ("redis://app:u-and-pw-82@cache.internal/1", "u-and-pw-82", "redis://app:***@cache."),
        ("rediss://app:tls-pw-83@cache.internal:6380/0", "tls-pw-83", "rediss://app:***@cache"),
        ("redis://cache.internal:6379/0?db=1&password=q-pw-84", "q-pw-84", "password=***"),
        ("redis://cache.internal/0?password=q-pw-85&db=2", "q-pw-85", "password=***&db=2"),
        ("redis://:v6-pw-86@[2001:db8::7]:6379/0", "v6-pw-86", "redis://:***@[2001:db8::7]:6379/0"),
        ("rediss://app:v6-pw-87@[::1]/0", "v6-pw-87", "rediss://app:***@[::1]/0"),
        ("redis://:p%40ss%3Aw0rd-88@h:6379/0", "w0rd-88", "redis://:***@h:6379/0"),
        ("redis://app:pw-89-with@at@h:6379/0", "pw-89", "redis://app:***@h:6379/0"),
    ],
)
def test_mask_url_hides_every_form_of_password(url: str, secret: str, shown: str) -> None:
    masked = mask_url(url)
    assert secret not in masked
    assert shown in masked


def test_mask_url_hides_the_tls_key_password_in_the_query() -> None:
    # redis-py passes unknown query arguments on: `ssl_password` unlocks the client key.
    url = "rediss://app:pw@h:6380/0?ssl_certfile=c.pem&ssl_keyfile=k.pem&ssl_password=key-pw-90"
    assert "key-pw-90" not in mask_url(url)


def _all_text(records: list[logging.LogRecord]) -> str:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(r) for r in records)


def test_nothing_logged_or_raised_while_redis_is_unreachable_shows_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens there
    url = f"redis://{ACL_USER}:{PASSWORD}@127.0.0.1:{port}/0"
    sp.configure(redis_url=url, redis_timeout_seconds=0.5)
    ana = ToolContext("ana", "tg")
    admin = ToolContext("root", "ops", is_admin=True)
    errors: list[BaseException] = []
    outputs: list[str] = []
    try:
        with caplog.at_level(logging.DEBUG):
            for call in (
                lambda: sp.schedule_prompt("x", user_id="ana", platform="tg", delay=3600),
                lambda: sp.list_prompts(user_id="ana"),
                lambda: sp.get_prompt("01abc"),
                lambda: sp.cancel_prompt("01abc", user_id="ana"),
                sp.tick_scheduled_prompts,
                sp.hydrate_scheduled_prompts,
                lambda: asyncio.run(aio.list_prompts(user_id="ana")),
            ):
                with pytest.raises(sp.StoreUnavailable) as caught:
                    call()
                errors.append(caught.value)
            outputs.append(sp.cleanup_expired_prompts(days_to_keep=1))
            for name, args, who in (
                ("schedule_prompt", {"prompt": "x", "delay_seconds": 600}, ana),
                ("list_scheduled_prompts", {}, ana),
                ("cancel_scheduled_prompt", {"prompt_id": "01abc"}, ana),
                ("cleanup_expired_prompts", {"days_to_keep": 1}, admin),
            ):
                outputs.append(handle_tool_call(name, args, context=who))
            outputs.append(
                asyncio.run(handle_tool_call_async("list_scheduled_prompts", {}, context=ana))
            )
    finally:
        sp.configure()
    for exc in errors:
        assert f"redis://{ACL_USER}:***@127.0.0.1:{port}/0" in str(exc)
        assert PASSWORD not in full_text(exc)
    assert all("error" in json.loads(o) for o in outputs)
    assert PASSWORD not in "".join(outputs)
    assert caplog.records, "the tool handler logs the store being unavailable"
    assert PASSWORD not in _all_text(caplog.records)
    assert all(PASSWORD not in str(r.args) for r in caplog.records)


def test_a_broker_that_is_down_is_logged_without_its_password(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The store answers, the broker (with a password) does not: publishing a prompt due
    # soon on write, and a tick promoting one, both fail to reach it.
    # A tick never fails for a broker error (the occurrence waits in flight for the next).
    broker = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    sp.configure(redis_url=redis_url, broker_url=broker)
    try:
        with caplog.at_level(logging.DEBUG):
            p = sp.schedule_prompt("soon", user_id="ana", platform="tg", delay=30)
            assert p.status is sp.Status.SCHEDULED
            later = sp.schedule_prompt("later", user_id="ana", platform="tg", delay=400)
            ticked = sp.tick_scheduled_prompts(now=utcnow() + timedelta(seconds=200))
        inflight = set(get_redis().zrange(Keys("sp").inflight, 0, -1))
    finally:
        sp.configure()
    # "later" came within the horizon, "soon" past its re-drive deadline: both stay in
    # flight, though neither task reached the broker.
    assert ticked == {"promoted": 1, "redriven": 1}
    assert {f"{x.id}:{to_ms(x.next_run_at)}" for x in (p, later)} == inflight  # type: ignore[arg-type]
    failures = [r for r in caplog.records if "could not publish" in r.getMessage()]
    assert len(failures) == 3  # the write of "soon", then the tick's promotion and re-drive
    assert PASSWORD not in _all_text(caplog.records)
    assert all(PASSWORD not in str(r.args) for r in caplog.records)


# --- webhook signatures ------------------------------------------------------------

WEBHOOK_SECRET = "whsec-security-test"


def captured_request() -> tuple[bytes, str, int]:
    """What a receiver got from a real WebhookRunner: (raw body, signature header, t)."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    client = httpx.Client(transport=httpx.MockTransport(answer))
    with sp.WebhookRunner("https://bot.example/hook", WEBHOOK_SECRET, client=client) as hook:
        hook.handle_webhook({"idempotency_key": "p1:1", "prompt": "hi"})
    (request,) = seen
    header = request.headers[SIGNATURE_HEADER]
    timestamp = int(header.split(",")[0].removeprefix("t="))
    return request.content, header, timestamp


def test_verify_signature_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    body, header, t = captured_request()
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("scheduled_prompts.runners.hmac.compare_digest", spy)
    assert verify_signature(body, header, WEBHOOK_SECRET, now=t)
    mac = header.partition(",v1=")[2]
    assert calls and mac in calls[-1]
    calls.clear()
    forged = f"t={t},v1={'0' * len(mac)}"
    assert not verify_signature(body, forged, WEBHOOK_SECRET, now=t)
    assert calls, "a wrong MAC must be rejected by compare_digest, not by =="
    # The verdict is compare_digest's: a digest comparison that says yes is believed.
    monkeypatch.setattr("scheduled_prompts.runners.hmac.compare_digest", lambda a, b: True)
    assert verify_signature(body, forged, WEBHOOK_SECRET, now=t)


def test_replayed_request_is_rejected_once_past_the_tolerance() -> None:
    body, header, t = captured_request()
    assert verify_signature(body, header, WEBHOOK_SECRET, now=t + 300)  # default tolerance
    assert not verify_signature(body, header, WEBHOOK_SECRET, now=t + 301)
    assert not verify_signature(body, header, WEBHOOK_SECRET, now=t + 86_400)
    assert not verify_signature(body, header, WEBHOOK_SECRET, now=t - 301)  # from the future


def test_signature_over_another_timestamp_is_rejected() -> None:
    body, header, t = captured_request()
    mac = header.partition(",v1=")[2]
    for other in (t + 1, t - 1, t + 600):
        # The captured MAC with a fresh timestamp: a replay made to look recent.
        assert not verify_signature(body, f"t={other},v1={mac}", WEBHOOK_SECRET, now=other)
        # The same body signed properly at that time does verify (the control).
        assert verify_signature(body, sign(WEBHOOK_SECRET, other, body), WEBHOOK_SECRET, now=other)


def test_signature_tolerance_is_configurable() -> None:
    body, header, t = captured_request()
    assert verify_signature(body, header, WEBHOOK_SECRET, now=t + 29, tolerance_seconds=30)
    assert not verify_signature(body, header, WEBHOOK_SECRET, now=t + 31, tolerance_seconds=30)
    assert verify_signature(body, header, WEBHOOK_SECRET, now=t + 3000, tolerance_seconds=3600)
    assert not verify_signature(body, header, WEBHOOK_SECRET, now=t + 1, tolerance_seconds=0)


# --- no prompt text in logs at INFO ------------------------------------------------


class Failing:
    """A runner whose bot is down (the message says so, without the prompt)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def handle_webhook(self, payload: dict[str, Any]) -> None:
        raise self.error


def deliver_once(prompt: sp.ScheduledPrompt, runner: Any, attempt: int = 1) -> engine.Result:
    from scheduled_prompts.connection import get_redis, scope

    sp.set_bot_runner(runner)
    try:
        assert prompt.next_run_at is not None
        delivery = Delivery(prompt.id, to_ms(prompt.next_run_at))
        return engine.deliver(
            get_redis(), scope(), delivery, attempt=attempt, now=prompt.next_run_at
        )
    finally:
        sp.set_bot_runner(None)


def records_at(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= level]


def test_prompt_text_is_never_logged_at_info_through_a_whole_delivery(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    sp.configure(redis_url=redis_url, max_retries=1)
    ana = ToolContext("ana", "tg")
    with caplog.at_level(logging.INFO):
        result = handle_tool_call(
            "schedule_prompt", {"prompt": SECRET_PROMPT, "delay_seconds": 120}, context=ana
        )
        pid = json.loads(result)["prompt_id"]
        handle_tool_call("list_scheduled_prompts", {}, context=ana)
        delivered = sp.schedule_prompt(SECRET_PROMPT, user_id="ana", platform="tg", delay=60)
        assert deliver_once(delivered, sp.LogRunner()).outcome is Outcome.DELIVERED
        tool_prompt = sp.get_prompt(pid)
        assert tool_prompt is not None
        down = RuntimeError("bot gateway down")
        assert deliver_once(tool_prompt, Failing(down)).outcome is Outcome.RETRY
        assert deliver_once(tool_prompt, Failing(down), attempt=2).outcome is Outcome.FAILED
        cron = sp.schedule_prompt(SECRET_PROMPT, user_id="ana", platform="tg", cron="*/5 * * * *")
        refused = sp.PermanentDeliveryError("webhook answered HTTP 410: gone")
        assert deliver_once(cron, Failing(refused)).outcome is Outcome.FAILED
        sp.tick_scheduled_prompts()
        sp.cleanup_expired_prompts(days_to_keep=0)
    info = records_at(caplog, logging.INFO)
    assert any("delivered" in r.getMessage() for r in info)  # the LogRunner's line
    assert any(r.levelno == logging.WARNING and "retry" in r.getMessage() for r in info)
    assert any(r.levelno == logging.ERROR and "giving up" in r.getMessage() for r in info)
    assert "SECRET-PROMPT" not in _all_text(info)
    assert all("SECRET-PROMPT" not in str(r.args) for r in info)

    # At DEBUG the LogRunner does log the text: the check above would see a level change.
    caplog.clear()
    again = sp.schedule_prompt(SECRET_PROMPT, user_id="ana", platform="tg", delay=90)
    with caplog.at_level(logging.DEBUG, "scheduled_prompts"):
        assert deliver_once(again, sp.LogRunner()).outcome is Outcome.DELIVERED
    debug = [r for r in caplog.records if "SECRET-PROMPT" in r.getMessage()]
    assert [(r.name, r.levelno) for r in debug] == [("scheduled_prompts.deliveries", logging.DEBUG)]


def test_webhook_error_quoting_the_prompt_does_not_log_it(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Receivers commonly echo the offending input in a 4xx/5xx body (FastAPI's 422 does);
    # WebhookRunner puts the body in its error, which the engine logs and stores.
    def reject(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["prompt"]
        detail = [{"type": "string_too_long", "loc": ["body", "prompt"], "input": prompt}]
        return httpx.Response(422, json={"detail": detail})

    sp.configure(redis_url=redis_url, max_retries=1)
    p = sp.schedule_prompt(SECRET_PROMPT, user_id="ana", platform="tg", delay=60)
    client = httpx.Client(transport=httpx.MockTransport(reject))
    with (
        caplog.at_level(logging.INFO),
        sp.WebhookRunner("https://bot.example/hook", WEBHOOK_SECRET, client=client) as hook,
    ):
        assert deliver_once(p, hook).outcome is Outcome.FAILED
    assert any("HTTP 422" in r.getMessage() for r in caplog.records)
    assert "SECRET-PROMPT" not in _all_text(records_at(caplog, logging.INFO))


def test_webhook_url_credentials_are_not_logged_at_info(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Endpoints often carry their credentials in the URL (user:password@, ?token=); the
    # HTTP client's request log line must not publish them in the worker's INFO log.
    seen: list[httpx.Request] = []

    def accept(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    url = "https://bot:hook-pw-91@bot.example/hook?token=hook-token-92"
    p = sp.schedule_prompt("hello", user_id="ana", platform="tg", delay=60)
    client = httpx.Client(transport=httpx.MockTransport(accept))
    with (
        caplog.at_level(logging.INFO),
        sp.WebhookRunner(url, WEBHOOK_SECRET, client=client) as hook,
    ):
        assert deliver_once(p, hook).outcome is Outcome.DELIVERED
    assert len(seen) == 1
    text = _all_text(records_at(caplog, logging.INFO))
    assert "hook-pw-91" not in text and "hook-token-92" not in text
    assert WEBHOOK_SECRET not in text


# --- Flower in compose (what tests/test_compose.py does not cover) -------------------


def test_flower_in_compose_bakes_in_no_credentials_and_no_other_way_in() -> None:
    raw = raw_compose()["services"]["flower"]
    flower = services({})["flower"]
    # Basic auth comes from the host's environment only: no default user:password.
    assert raw["environment"]["FLOWER_BASIC_AUTH"] == "${FLOWER_BASIC_AUTH:-}"
    assert environment(flower)["FLOWER_BASIC_AUTH"] == ""
    # Not on the command line either (where `docker compose config` and ps show it).
    command = " ".join(argv(flower["command"]) + argv(flower.get("entrypoint")))
    assert "basic_auth" not in command and "basic-auth" not in command
    # Flower's API without auth, and host networking (which ignores `ports` and listens
    # on every interface) would both bypass loopback-plus-basic-auth.
    for svc in services({}).values():
        assert "FLOWER_UNAUTHENTICATED_API" not in environment(svc)
        assert svc.get("network_mode") != "host"
    # Only the consoles publish a port, each on loopback: Flower, and Prometheus and
    # Grafana of the monitoring profile; Redis, the workers and the exporter are on the
    # compose network only.
    published = {name: svc["ports"] for name, svc in services({}).items() if svc.get("ports")}
    assert set(published) == {"flower", "prometheus", "grafana"}
    assert all(str(p).startswith("127.0.0.1:") for ports in published.values() for p in ports)
    grafana = raw_compose()["services"]["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    (port,) = flower["ports"]
    assert str(port) == "127.0.0.1:5555:5555"


# --- identity comes from the ToolContext only ----------------------------------------


def test_tool_arguments_naming_an_identity_are_rejected(redis_url: str) -> None:
    ana = ToolContext("ana", "tg")
    p = sp.schedule_prompt("mine", user_id="bob", platform="tg", delay=3600)
    for name, args in (
        ("schedule_prompt", {"prompt": "x", "delay_seconds": 600, "user_id": "bob"}),
        ("schedule_prompt", {"prompt": "x", "delay_seconds": 600, "platform": "slack"}),
        ("list_scheduled_prompts", {"user_id": "bob"}),
        ("cancel_scheduled_prompt", {"prompt_id": p.id, "user_id": "bob"}),
        ("pause_scheduled_prompt", {"prompt_id": p.id, "platform": "tg", "user_id": "bob"}),
    ):
        result = json.loads(handle_tool_call(name, args, context=ana))
        assert "was unexpected" in result["error"] or "were unexpected" in result["error"]
    assert sp.get_prompt(p.id) == p
    assert [x.id for x in sp.list_prompts().items] == [p.id]


def test_another_users_prompt_id_answers_exactly_like_an_unknown_id(redis_url: str) -> None:
    bob = sp.schedule_prompt("bob's", user_id="bob", platform="tg", delay=3600)
    unknown = "01JUNKNOWNPROMPTID0000000000"
    for ctx in (ToolContext("ana", "tg"), ToolContext("bob", "slack")):
        for name in ("cancel_scheduled_prompt", "pause_scheduled_prompt"):
            other = handle_tool_call(name, {"prompt_id": bob.id}, context=ctx)
            missing = handle_tool_call(name, {"prompt_id": unknown}, context=ctx)
            assert other.replace(bob.id, "<id>") == missing.replace(unknown, "<id>")
    assert sp.get_prompt(bob.id) == bob
