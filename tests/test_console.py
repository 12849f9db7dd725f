"""The operator console over HTTP, against the real app and the suite's Redis: the login
and its session, CSRF, escaping, the response headers, the pages (filters, search, cursor
pages and the scan budget, a prompt's fire times and deliveries, failures, the load
chart), the actions — and ``scheduled-prompts console`` as a real process (refusing to
start without a token, its access log)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
from starlette.testclient import TestClient

import scheduled_prompts as sp
from scheduled_prompts import engine, verbs
from scheduled_prompts._time import to_ms, utcnow
from scheduled_prompts.connection import get_redis, scope
from scheduled_prompts.console import load as upcoming
from scheduled_prompts.console import pages
from scheduled_prompts.console.app import create_app
from scheduled_prompts.console.auth import Access
from scheduled_prompts.console.middleware import CONTENT_SECURITY_POLICY
from scheduled_prompts.errors import InvalidSchedule, PermanentDeliveryError
from scheduled_prompts.occurrences import Delivery
from support.recording_runner import MemoryRunner
from support.redis_server import free_port
from support.served import SCRIPT, Served, command_env

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
TOKEN = "console-token-7f3a9c2e5b8d1f40"
SCRIPT_TAG = "<script>alert(1)</script>"
ATTRIBUTE_BREAK = "\"'><img src=x onerror=alert(2)>"
HOSTILE = f"{SCRIPT_TAG} {ATTRIBUTE_BREAK}"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


# --- helpers ------------------------------------------------------------------------------


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def log_in(client: TestClient | httpx.Client, token: str = TOKEN) -> httpx.Response:
    form = client.get("/login")
    assert form.status_code == 200
    return client.post("/login", data={"csrf": csrf_of(form.text), "token": token, "next": "/"})


@pytest.fixture
def console(redis_url: str) -> Iterator[TestClient]:
    """A client of the console app, not logged in (redirects are not followed)."""
    with TestClient(create_app(Access(TOKEN)), follow_redirects=False) as client:
        yield client


@pytest.fixture
def operator(console: TestClient) -> TestClient:
    """The same client, logged in."""
    assert log_in(console).status_code == 303
    return console


def schedule(text: str = "hello", **kwargs: Any) -> sp.ScheduledPrompt:
    args: dict[str, Any] = {"user_id": "u1", "platform": "web", "delay": 3600} | kwargs
    if "cron" in kwargs or "at" in kwargs:
        args.pop("delay")
    return sp.schedule_prompt(text, **args)


def stored(r: redis.Redis, prompt_id: str) -> dict[str, Any]:
    raw = r.get(scope().keys.prompt(prompt_id))
    assert raw is not None
    return dict(json.loads(raw))


def snapshot(r: redis.Redis) -> dict[str, bytes]:
    """Every key with its serialized value: equal snapshots mean nothing was written."""
    raw = redis.Redis(connection_pool=r.connection_pool)
    return {key: raw.dump(key) for key in sorted(raw.keys("*"))}  # type: ignore[misc]


def ids_on(html: str) -> list[str]:
    return re.findall(r'<td class="id"><a href="/prompts/[^"]+">([^<]+)</a>', html)


def follow(client: TestClient, response: httpx.Response) -> httpx.Response:
    assert response.status_code == 303, response.text
    return client.get(response.headers["location"])


def deliver(prompt: sp.ScheduledPrompt, error: Exception | None = None) -> MemoryRunner:
    runner = MemoryRunner(error)
    sp.set_bot_runner(runner)
    try:
        assert prompt.next_run_at is not None
        delivery = Delivery(prompt.id, to_ms(prompt.next_run_at))
        engine.deliver(get_redis(), scope(), delivery, now=prompt.next_run_at)
    finally:
        sp.set_bot_runner(None)
    return runner


# --- login and session --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/failures", "/load", "/prompts/abc", "/?q=secret"])
def test_every_page_sends_a_visitor_without_a_session_to_the_login_form(
    console: TestClient, path: str
) -> None:
    got = console.get(path)
    assert got.status_code == 303
    assert got.headers["location"] == "/login?next=" + quote(path, safe="")


def test_an_action_without_a_session_is_401_and_writes_nothing(
    console: TestClient, r: redis.Redis
) -> None:
    p = schedule()
    before = snapshot(r)
    got = console.post("/actions/pause", data={"prompt_id": p.id, "csrf": "x"})
    assert got.status_code == 401
    assert snapshot(r) == before


def test_a_wrong_token_is_refused_and_the_right_one_logs_in_until_logout(
    console: TestClient,
) -> None:
    wrong = log_in(console, "not-the-token-at-all")
    assert wrong.status_code == 401
    assert "not the console&#39;s token" in wrong.text
    assert console.get("/").status_code == 303  # still not logged in
    right = log_in(console)
    assert right.status_code == 303 and right.headers["location"] == "/"
    cookie = right.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    page = console.get("/")
    assert page.status_code == 200 and "Log out" in page.text
    out = console.post("/logout", data={"csrf": csrf_of(page.text)})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert console.get("/").status_code == 303


def test_login_returns_to_the_page_asked_for_but_never_to_another_site(
    console: TestClient,
) -> None:
    form = console.get("/login?next=/failures")
    back = console.post(
        "/login", data={"csrf": csrf_of(form.text), "token": TOKEN, "next": "/failures"}
    )
    assert back.headers["location"] == "/failures"
    console.post("/logout", data={"csrf": csrf_of(console.get("/").text)})
    form = console.get("/login")
    away = console.post(
        "/login", data={"csrf": csrf_of(form.text), "token": TOKEN, "next": "//evil.example/"}
    )
    assert away.headers["location"] == "/"


def test_the_login_form_itself_needs_its_csrf_token(console: TestClient) -> None:
    console.get("/login")
    assert console.post("/login", data={"token": TOKEN}).status_code == 403
    assert console.post("/login", data={"token": TOKEN, "csrf": "forged"}).status_code == 403
    assert console.get("/").status_code == 303


def test_a_token_check_is_constant_time_and_exact() -> None:
    access = Access(TOKEN)
    assert access.admits(TOKEN)
    assert not access.admits(TOKEN[:-1])
    assert not access.admits(TOKEN + " ")
    assert not access.admits("")
    assert Access(None).admits("anything")


# --- CSRF ---------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["pause", "cancel", "trigger"])
@pytest.mark.parametrize("csrf", [None, "", "wrong-token"])
def test_an_action_without_the_sessions_csrf_token_is_403_and_writes_nothing(
    operator: TestClient, r: redis.Redis, action: str, csrf: str | None
) -> None:
    p = schedule()
    before = snapshot(r)
    data = {"prompt_id": p.id} | ({} if csrf is None else {"csrf": csrf})
    got = operator.post(f"/actions/{action}", data=data)
    assert got.status_code == 403
    assert "CSRF" in got.text and "nothing was done" in got.text
    assert snapshot(r) == before


def test_logout_without_the_csrf_token_is_403_and_keeps_the_session(
    operator: TestClient,
) -> None:
    assert operator.post("/logout", data={}).status_code == 403
    assert operator.get("/").status_code == 200


def test_a_csrf_token_of_another_session_is_refused(operator: TestClient, r: redis.Redis) -> None:
    p = schedule()
    with TestClient(create_app(Access(TOKEN)), follow_redirects=False) as other:
        log_in(other)
        foreign = csrf_of(other.get("/").text)
    before = snapshot(r)
    got = operator.post("/actions/pause", data={"prompt_id": p.id, "csrf": foreign})
    assert got.status_code == 403
    assert snapshot(r) == before


# --- escaping and headers -----------------------------------------------------------------


def test_prompt_text_user_and_metadata_are_escaped_on_every_page(operator: TestClient) -> None:
    p = schedule(
        HOSTILE,
        user_id=f"u{SCRIPT_TAG}{ATTRIBUTE_BREAK}",
        platform=f"web{ATTRIBUTE_BREAK}",
        metadata={"note": HOSTILE, HOSTILE: [ATTRIBUTE_BREAK]},
    )
    deliver(p, PermanentDeliveryError(f"runner said {HOSTILE}"))
    for path in ("/", f"/prompts/{p.id}", "/failures", f"/?q={quote(SCRIPT_TAG)}"):
        page = operator.get(path)
        assert page.status_code == 200, path
        assert SCRIPT_TAG not in page.text, path
        assert ATTRIBUTE_BREAK not in page.text, path
        assert "<img" not in page.text, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text, path
    detail = operator.get(f"/prompts/{p.id}").text
    assert "&#34;&#39;&gt;&lt;img src=x onerror=alert(2)&gt;" in detail  # text, user, metadata
    assert detail.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4


def test_an_unknown_prompt_is_404_with_its_id_escaped(operator: TestClient) -> None:
    got = operator.get("/prompts/" + quote(SCRIPT_TAG, safe=""))
    assert got.status_code == 404
    assert SCRIPT_TAG not in got.text and "no prompt with id" in got.text


EXPECTED_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def test_every_response_carries_the_security_headers(operator: TestClient) -> None:
    p = schedule()
    assert EXPECTED_HEADERS["content-security-policy"] == CONTENT_SECURITY_POLICY
    responses = [
        operator.get("/"),
        operator.get(f"/prompts/{p.id}"),
        operator.get("/failures"),
        operator.get("/load"),
        operator.get("/static/console.css"),
        operator.get("/prompts/nope"),  # 404
        operator.get("/?status=bogus"),  # 400
        operator.post("/actions/pause", data={"prompt_id": p.id}),  # 403
        operator.post(
            "/actions/pause", data={"prompt_id": p.id, "csrf": csrf_of(operator.get("/").text)}
        ),  # 303
    ]
    with TestClient(create_app(Access(TOKEN)), follow_redirects=False) as visitor:
        responses += [visitor.get("/login"), visitor.get("/"), visitor.post("/actions/pause")]
        icon = visitor.get("/favicon.ico")  # asked by browsers before login too: no 404
        assert icon.status_code == 204 and not icon.content
        responses.append(icon)
    for response in responses:
        for name, value in EXPECTED_HEADERS.items():
            assert response.headers.get(name) == value, (response.request.url, name)
    pages_only = [x for x in responses if not x.request.url.path.startswith("/static/")]
    assert all(x.headers["cache-control"] == "no-store" for x in pages_only)


def test_pages_have_no_inline_script_or_style(operator: TestClient) -> None:
    p = schedule(cron="*/30 * * * *")
    for path in ("/", f"/prompts/{p.id}", "/failures", "/load", "/login"):
        html = operator.get(path).text
        assert "<script" not in html and "<style" not in html and " style=" not in html, path
    css = operator.get("/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


# --- the list: filters, search, cursor pages, the scan budget -----------------------------


def test_the_list_filters_by_user_platform_and_status_and_counts_every_prompt(
    operator: TestClient,
) -> None:
    ana_web = schedule("a1", user_id="ana", platform="web")
    ana_tg = schedule("a2", user_id="ana", platform="telegram")
    bob = schedule("b1", user_id="bob", platform="web")
    sp.pause_prompt(ana_tg.id)
    assert set(ids_on(operator.get("/").text)) == {ana_web.id, ana_tg.id, bob.id}
    front = operator.get("/").text
    assert "3 stored" in front
    assert '<a href="/?status=paused"><span class="status paused">paused</span> 1</a>' in front
    assert '<span class="status scheduled">scheduled</span> 2</a>' in front
    assert ids_on(operator.get("/?user=ana").text) == [ana_web.id, ana_tg.id]
    assert ids_on(operator.get("/?platform=web").text) == [ana_web.id, bob.id]
    assert ids_on(operator.get("/?status=paused").text) == [ana_tg.id]
    assert ids_on(operator.get("/?user=ana&status=scheduled").text) == [ana_web.id]
    assert ids_on(operator.get("/?user=nobody").text) == []


def test_search_is_a_case_insensitive_substring_of_the_text(operator: TestClient) -> None:
    inbox = schedule("Summarise my INBOX please")
    schedule("water the plants")
    assert ids_on(operator.get("/?q=inbox").text) == [inbox.id]
    assert ids_on(operator.get("/?q=MY%20inBox").text) == [inbox.id]
    assert ids_on(operator.get("/?q=nothing-like-it").text) == []


def test_a_bad_status_filter_is_400_with_the_librarys_message(operator: TestClient) -> None:
    got = operator.get("/?status=bogus")
    assert got.status_code == 400
    assert "status must be one of" in got.text


def test_cursor_pages_walk_every_prompt_once(operator: TestClient) -> None:
    made = sp.schedule_many(
        [{"prompt": f"n{i}", "user_id": "u", "platform": "web", "delay": 600} for i in range(120)]
    )
    seen: list[str] = []
    page = operator.get("/")
    pages_read = 1
    while True:
        seen += ids_on(page.text)
        found = re.search(r'id="next-page" href="([^"]+)"', page.text)
        if not found:
            break
        page = operator.get(found.group(1).replace("&amp;", "&"))
        pages_read += 1
        assert "First page" in page.text
    assert seen == sorted(p.id for p in made)
    assert pages_read == 3


def test_a_search_that_matches_little_stops_at_the_scan_budget_and_hands_back_a_cursor(
    operator: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "SCAN_BUDGET", 40)
    made = sp.schedule_many(
        [
            {"prompt": "needle" if i == 95 else f"hay {i}", "user_id": "u", "platform": "p",
             "delay": 600}
            for i in range(100)
        ]
    )  # fmt: skip
    ids = sorted(p.id for p in made)
    first = operator.get("/?q=NEEDLE")
    assert ids_on(first.text) == []
    assert "Examined 40 records" in first.text and ids[39] in first.text
    link = re.search(r'id="next-page" href="([^"]+)"', first.text)
    assert link is not None
    second = operator.get(link.group(1).replace("&amp;", "&"))
    assert "q=NEEDLE" in link.group(1) and f"cursor={ids[39]}" in link.group(1)
    assert ids_on(second.text) == [] and ids[79] in second.text
    link = re.search(r'id="next-page" href="([^"]+)"', second.text)
    assert link is not None
    third = operator.get(link.group(1).replace("&amp;", "&"))
    assert ids_on(third.text) == [ids[95]]
    assert 'id="next-page"' not in third.text and "Examined" not in third.text


def test_list_page_scan_limit_returns_the_cursor_where_the_scan_stopped(r: redis.Redis) -> None:
    made = sp.schedule_many(
        [{"prompt": f"x{i}", "user_id": "u", "platform": "p", "delay": 600} for i in range(10)]
    )
    ids = sorted(p.id for p in made)

    def page(**kw: Any) -> verbs.PromptPage:
        args: dict[str, Any] = {
            "user_id": None, "platform": None, "status": None, "limit": 5, "cursor": None,
        } | kw  # fmt: skip
        return sp.api.run(verbs.list_page(scope(), **args))

    assert page(text="X9").items[0].id == ids[9]
    stopped = page(text="x9", scan_limit=4)
    assert stopped.items == [] and stopped.next_cursor == ids[3]
    found = page(text="x9", scan_limit=4, cursor=ids[7])
    assert [p.id for p in found.items] == [ids[9]] and found.next_cursor is None
    full = page(scan_limit=3, limit=3)  # the page fills as the budget runs out
    assert [p.id for p in full.items] == ids[:3] and full.next_cursor == ids[2]
    by_user = page(user_id="u", text="x1", scan_limit=100)
    assert [p.id for p in by_user.items] == [ids[1]] and by_user.next_cursor is None
    assert page().next_cursor == ids[4]  # without the new arguments: as before
    for bad in (0, -1, True, 2.5):
        with pytest.raises(InvalidSchedule, match="scan_limit"):
            page(scan_limit=bad)
    with pytest.raises(InvalidSchedule, match="text must be a string"):
        page(text=3)


# --- one prompt ---------------------------------------------------------------------------


def test_a_cron_prompt_shows_every_field_and_its_next_ten_fire_times_in_utc_and_local(
    operator: TestClient,
) -> None:
    p = schedule("standup", cron="0 9 * * *", timezone="Europe/Berlin", metadata={"team": "a"})
    html = operator.get(f"/prompts/{p.id}").text
    for field in p.to_dict():
        if field not in ("prompt", "metadata", "schema"):
            assert f"<th>{field}</th>" in html, field
    fires = re.findall(r"<tr><td>([^<]+ UTC)</td><td>([^<]+)</td></tr>", html)
    assert len(fires) == 10
    assert all(local.startswith(utc[:10]) and "09:00:00 CE" in local for utc, local in fires)
    assert fires[0][0] == p.next_run_at.strftime("%Y-%m-%d %H:%M:%S UTC")  # type: ignore[union-attr]
    assert "&#34;team&#34;: &#34;a&#34;" in html


def test_fire_times_respect_max_runs_and_a_one_time_prompt_shows_its_one_time(
    operator: TestClient,
) -> None:
    bounded = schedule(cron="*/5 * * * *", max_runs=3)
    html = operator.get(f"/prompts/{bounded.id}").text
    assert len(re.findall(r"<tr><td>([^<]+ UTC)</td><td>", html)) == 3
    once = schedule(delay=7200, timezone="Asia/Tokyo")
    html = operator.get(f"/prompts/{once.id}").text
    fires = re.findall(r"<tr><td>([^<]+ UTC)</td><td>([^<]+)</td></tr>", html)
    assert len(fires) == 1 and fires[0][1].endswith("JST")


def test_a_paused_prompt_shows_no_fire_times(operator: TestClient) -> None:
    p = schedule(cron="0 * * * *")
    sp.pause_prompt(p.id)
    html = operator.get(f"/prompts/{p.id}").text
    assert "None: the prompt is paused." in html
    assert 'id="action-resume"' in html and 'id="action-pause"' not in html


def test_recent_deliveries_and_the_last_error_are_shown(operator: TestClient) -> None:
    ok = schedule("fine", delay=60)
    deliver(ok)
    html = operator.get(f"/prompts/{ok.id}").text
    assert '<span class="outcome delivered">delivered</span>' in html
    bad = schedule("broken", delay=60)
    deliver(bad, PermanentDeliveryError("HTTP 410 from the bot"))
    html = operator.get(f"/prompts/{bad.id}").text
    assert '<span class="outcome failed">failed</span>' in html
    assert "HTTP 410 from the bot" in html.split("Last error", 1)[1]


# --- failures and the load chart ----------------------------------------------------------


def test_the_failures_page_lists_failed_deliveries_newest_first_linking_to_them(
    operator: TestClient,
) -> None:
    first = schedule("one", delay=60)
    second = schedule("two", delay=60)
    fine = schedule("three", delay=60)
    deliver(first, PermanentDeliveryError("first failure"))
    deliver(second, PermanentDeliveryError("second failure"))
    deliver(fine)
    html = operator.get("/failures").text
    assert ids_on(html) == [second.id, first.id]
    assert html.index("second failure") < html.index("first failure")
    assert f'href="/prompts/{first.id}"' in html


def bars(html: str) -> dict[int, int]:
    found = re.findall(r'<rect class="bar" data-hour="(\d+)" data-count="(\d+)"', html)
    return {int(h): int(c) for h, c in found}


def test_the_chart_puts_a_prompt_due_in_three_hours_in_the_fourth_bar(
    operator: TestClient,
) -> None:
    schedule(delay=timedelta(hours=3, minutes=30))
    schedule(delay=timedelta(hours=3, minutes=40))
    schedule(delay=timedelta(hours=30))  # beyond the window
    html = operator.get("/load").text
    assert "<svg" in html
    counts = bars(html)
    assert len(counts) == 24
    assert counts[3] == 2 and sum(counts.values()) == 2
    heights = dict(re.findall(r'data-hour="(\d+)" data-count="\d+" x="[^"]+" y="[^"]+" '
                              r'width="[^"]+" height="([^"]+)"', html))  # fmt: skip
    assert float(heights["3"]) > 0 and float(heights["2"]) == 0


def test_the_chart_adds_the_repeats_of_cron_prompts_when_they_are_few(
    operator: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    schedule(cron="*/30 * * * *")
    counts = bars(operator.get("/load").text)
    # Any hour from now holds exactly two half-hours, whether or not the next one is
    # already in flight (promoted: it left the due index).
    assert list(counts.values()) == [2] * 24
    monkeypatch.setattr(upcoming, "EXPAND_LIMIT", 0)
    html = operator.get("/load").text
    assert sum(bars(html).values()) <= 1
    assert "next occurrence only" in html


def test_occurrences_already_in_flight_are_placed_in_their_hour(
    operator: TestClient, r: redis.Redis
) -> None:
    soon = schedule(delay=120)  # within the horizon: promoted at once
    assert r.zscore(scope().keys.due, soon.id) is None
    assert r.zcard(scope().keys.inflight) == 1
    html = operator.get("/load").text
    assert bars(html)[0] == 1
    assert "In the bars: 1 occurrence(s) already handed to Celery" in html


def test_an_in_flight_occurrence_past_its_time_is_overdue_not_in_a_bar() -> None:
    start = utcnow()
    late = Delivery("p1", to_ms(start - timedelta(seconds=5)))
    later = Delivery("p2", to_ms(start + timedelta(hours=5, minutes=1)), trigger=True)
    seen = upcoming.Window(start, [0] * 24, 2, 2, [late, later], [], read=True)
    load = upcoming.expand(seen)
    assert load.overdue == 3 and load.counts[5] == 1 and load.total == 1
    geometry = upcoming.chart(load)
    assert len(geometry.bars) == 24
    assert [b.hour for b in geometry.bars if b.height > 0] == [5]


# --- actions ------------------------------------------------------------------------------


def act(client: TestClient, action: str, prompt_id: str) -> httpx.Response:
    page = client.get(f"/prompts/{prompt_id}")
    return client.post(
        f"/actions/{action}", data={"prompt_id": prompt_id, "csrf": csrf_of(page.text)}
    )


def test_pause_resume_and_cancel_change_the_record_in_redis(
    operator: TestClient, r: redis.Redis
) -> None:
    p = schedule(cron="0 * * * *")
    done = act(operator, "pause", p.id)
    assert done.headers["location"] == f"/prompts/{p.id}"
    assert stored(r, p.id)["status"] == "paused"
    assert "Prompt paused." in follow(operator, done).text
    act(operator, "resume", p.id)
    assert stored(r, p.id)["status"] == "active"
    act(operator, "cancel", p.id)
    assert stored(r, p.id)["status"] == "cancelled"


def test_trigger_puts_one_extra_delivery_in_flight(operator: TestClient, r: redis.Redis) -> None:
    p = schedule(cron="0 * * * *")
    done = act(operator, "trigger", p.id)
    members = r.zrange(scope().keys.inflight, 0, -1)
    assert [m for m in members if m.startswith(f"{p.id}:trigger:")]
    assert "triggered" in follow(operator, done).text


def test_a_refused_action_shows_the_librarys_message(operator: TestClient, r: redis.Redis) -> None:
    p = schedule()
    sp.cancel_prompt(p.id)
    done = act(operator, "pause", p.id)
    assert done.status_code == 303
    page = follow(operator, done)
    assert f"cannot pause prompt &#39;{p.id}&#39;: it is cancelled" in page.text
    assert stored(r, p.id)["status"] == "cancelled"
    assert "cannot pause" not in operator.get(f"/prompts/{p.id}").text  # shown once


def test_an_action_on_an_unknown_prompt_says_so(operator: TestClient) -> None:
    page = operator.get("/")
    done = operator.post(
        "/actions/pause", data={"prompt_id": "missing", "csrf": csrf_of(page.text)}
    )
    shown = follow(operator, done)
    assert shown.status_code == 404 and "no scheduled prompt with id" in shown.text


def test_redis_away_is_a_503_page_naming_it(redis_url: str) -> None:
    sp.configure(redis_url=f"redis://:hunter2@127.0.0.1:{free_port()}/0", redis_timeout_seconds=1)
    with TestClient(create_app(Access(None)), follow_redirects=False) as client:
        got = client.get("/")
    assert got.status_code == 503
    assert "Redis is unavailable" in got.text and "hunter2" not in got.text
    assert got.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


# --- the real process ---------------------------------------------------------------------


class ConsoleProcess(Served):
    """``scheduled-prompts console`` on a free port, its output in a log file."""

    def __init__(self, tmp: Path, redis_url: str, *flags: str, **env: str) -> None:
        super().__init__(tmp, redis_url, "console", *flags, **env)

    @property
    def url(self) -> str:
        return self.base_url


@pytest.fixture
def process(tmp_path: Path, redis_url: str) -> Iterator[ConsoleProcess]:
    server = ConsoleProcess(tmp_path, redis_url, SCHEDULED_PROMPTS_CONSOLE_TOKEN=TOKEN)
    yield server
    server.stop()


def test_the_real_process_logs_requests_without_their_query_or_any_prompt_text(
    process: ConsoleProcess,
) -> None:
    secret = "Zebra-ledger-8841 remind the accountant"
    p = schedule(secret)
    with httpx.Client(base_url=process.url, timeout=30) as client:
        assert client.get("/").status_code == 303
        assert log_in(client).status_code == 303
        found = client.get("/", params={"q": "zebra-LEDGER", "user": "u1"})
        assert found.status_code == 200 and ids_on(found.text) == [p.id]
        assert found.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        detail = client.get(f"/prompts/{p.id}")
        assert secret in detail.text
        paused = client.post(
            "/actions/pause", data={"prompt_id": p.id, "csrf": csrf_of(detail.text)}
        )
        assert paused.status_code == 303
    assert sp.get_prompt(p.id).status is sp.Status.PAUSED  # type: ignore[union-attr]
    process.stop()
    log = process.log.read_text()
    assert '"GET /" 200' in log and f'"GET /prompts/{p.id}" 200' in log
    assert '"POST /actions/pause" 303' in log
    assert "zebra" not in log.lower() and "ledger" not in log.lower()
    assert TOKEN not in log


def test_insecure_no_auth_on_loopback_serves_without_login(tmp_path: Path, redis_url: str) -> None:
    p = schedule("open console")
    server = ConsoleProcess(tmp_path, redis_url, "--insecure-no-auth")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            page = client.get("/")
            assert page.status_code == 200 and ids_on(page.text) == [p.id]
            assert "Log out" not in page.text
            assert client.get("/login").headers["location"] == "/"
            refused = client.post("/actions/pause", data={"prompt_id": p.id})
            assert refused.status_code == 403  # CSRF still applies
            detail = client.get(f"/prompts/{p.id}").text
            client.post("/actions/pause", data={"prompt_id": p.id, "csrf": csrf_of(detail)})
        assert sp.get_prompt(p.id).status is sp.Status.PAUSED  # type: ignore[union-attr]
    finally:
        server.stop()


def test_a_token_file_is_read(tmp_path: Path, redis_url: str) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    server = ConsoleProcess(tmp_path, redis_url, "--token-file", str(secret))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert log_in(client).status_code == 303
            assert client.get("/").status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ([], {}, "SCHEDULED_PROMPTS_CONSOLE_TOKEN"),
        ([], {"SCHEDULED_PROMPTS_CONSOLE_TOKEN": "short-token"}, "too short"),
        (["--insecure-no-auth", "--host", "0.0.0.0"], {}, "refusing --insecure-no-auth on 0.0.0.0"),
        (["--insecure-no-auth"], {"SCHEDULED_PROMPTS_CONSOLE_TOKEN": TOKEN}, "drop one"),
        (["--token-file", "/nonexistent/token"], {}, "--token-file /nonexistent/token"),
    ],
)  # fmt: skip
def test_the_console_refuses_to_start_unsafely_with_one_line_and_status_2(
    redis_url: str, flags: list[str], env: dict[str, str], message: str
) -> None:
    done = subprocess.run(
        [str(SCRIPT), "console", "--port", str(free_port()), *flags],
        env=command_env(redis_url, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    if not flags and not env:
        assert "--insecure-no-auth" in done.stderr
    assert "short-token" not in done.stderr
