"""The ``scheduled-prompts`` command line against a real redis-server.

Most commands run in-process: ``CliRunner`` on ``scheduled_prompts.cli.cli`` for the
happy paths, and ``scheduled_prompts.cli.main`` (what the console script calls) for user
errors, which must print one ``Error:`` line, exit 2 and write nothing. A few runs of the
installed console script check the same from the outside; ``doctor`` runs only that way
(it calls ``sys.exit`` and asks Celery workers over the broker).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

import scheduled_prompts as sp
from scheduled_prompts._time import from_iso, to_ms, utcnow
from scheduled_prompts.cli import cli, main
from scheduled_prompts.connection import get_redis
from scheduled_prompts.keys import Keys
from support.redis_server import RedisServer, free_port
from tests.conftest import key_count

K = Keys("sp")
REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "scheduled-prompts"
FUTURE_CRON_START = "2031-01-01T00:00:00Z"  # keeps cron prompts out of the horizon


# --- helpers ---------------------------------------------------------------------------


def ok(*args: str, input: str | None = None) -> Result:
    """Run a command in-process; it must succeed."""
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def ok_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json").stdout)


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the console entry point in-process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2, (code, out, err)
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: "), err
    return lines[0]


def script_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULED_PROMPTS_")}
    env.update({f"SCHEDULED_PROMPTS_{k.upper()}": v for k, v in settings.items()})
    return env


def run_script(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        check=False,
        env=script_env(**settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def once(prompt: str = "hello", *, user: str = "ana", platform: str = "tg", **kw: Any) -> Any:
    if "at" not in kw:
        kw.setdefault("delay", 3600)
    return sp.schedule_prompt(prompt, user_id=user, platform=platform, **kw)


def cron(prompt: str = "daily", *, user: str = "ana", platform: str = "tg", **kw: Any) -> Any:
    kw.setdefault("cron", "0 9 * * *")
    kw.setdefault("start_at", FUTURE_CRON_START)
    return sp.schedule_prompt(prompt, user_id=user, platform=platform, **kw)


def stored(prompt_id: str) -> dict[str, Any]:
    record = sp.get_prompt(prompt_id)
    assert record is not None
    return record.to_dict()


ADD = ("add", "hello", "--user", "ana", "--platform", "tg")


# --- add ---------------------------------------------------------------------------------


def test_add_delay_json_is_the_stored_record(redis_url: str) -> None:
    before = utcnow()
    data = ok_json(*ADD, "--channel", "c1", "--delay", "3600")
    after = utcnow()
    assert data == stored(data["id"])
    assert (data["kind"], data["status"], data["channel_id"]) == ("once", "scheduled", "c1")
    when = from_iso(data["schedule_time"])
    assert before + timedelta(seconds=3600) <= when <= after + timedelta(seconds=3600)
    assert data["next_run_at"] == data["schedule_time"]


def test_add_at_with_offset_is_stored_in_utc(redis_url: str) -> None:
    data = ok_json(*ADD, "--at", "2031-01-02T09:00:00+02:00")
    assert data["schedule_time"] == "2031-01-02T07:00:00.000Z"
    assert data == stored(data["id"])


def test_add_naive_at_is_read_in_tz(redis_url: str) -> None:
    data = ok_json(*ADD, "--at", "2031-07-01T09:00", "--tz", "Europe/Berlin")
    assert data["schedule_time"] == "2031-07-01T07:00:00.000Z"  # CEST, UTC+2
    assert data["timezone"] == "Europe/Berlin"


def test_add_cron_in_timezone_with_bounds(redis_url: str) -> None:
    data = ok_json(
        *ADD,
        "--cron", "0 9 * * 1-5",
        "--tz", "America/New_York",
        "--start-at", "2031-01-06T00:00",
        "--end-at", "2031-02-01T00:00",
        "--max-runs", "3",
    )  # fmt: skip
    assert (data["kind"], data["status"]) == ("cron", "active")
    assert (data["cron_expression"], data["timezone"]) == ("0 9 * * 1-5", "America/New_York")
    assert data["start_at"] == "2031-01-06T05:00:00.000Z"  # naive bounds read in --tz (EST)
    assert data["end_at"] == "2031-02-01T05:00:00.000Z"
    assert data["max_runs"] == 3
    assert data["next_run_at"] == "2031-01-06T14:00:00.000Z"  # Monday 09:00 EST
    assert data == stored(data["id"])


def test_add_cron_with_an_overlap_policy_and_a_one_time_prompt_refusing_one(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ok_json(*ADD, "--cron", "*/5 * * * *", "--overlap", "buffer_one")
    assert data["overlap"] == "buffer_one" and data["skipped_runs"] == 0
    assert data == stored(data["id"])
    message = assert_one_error_line(*run_main(capsys, *ADD, "--delay", "60", "--overlap", "allow"))
    assert "only applies to a repeating prompt" in message
    assert len(get_redis().keys("sp:prompt:*")) == 1  # the refused one wrote nothing


def test_add_metadata_json_object_is_stored(redis_url: str) -> None:
    meta = {"source": "cli", "n": 3, "tags": ["a", "b"], "nested": {"ok": True}}
    data = ok_json(*ADD, "--delay", "3600", "--metadata", json.dumps(meta))
    assert data["metadata"] == meta
    assert stored(data["id"])["metadata"] == meta


def test_add_same_id_twice_returns_the_stored_record_unchanged(
    r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    first = ok_json(*ADD, "--delay", "3600", "--id", "reminder-42")
    keys = key_count(r)
    again = ok_json(*ADD, "--delay", "7200", "--id", "reminder-42")  # delay always matches
    assert again == first == stored("reminder-42")
    assert key_count(r) == keys
    code, out, err = run_main(
        capsys, "add", "other text", "--user", "ana", "--platform", "tg", "--delay", "60",
        "--id", "reminder-42",
    )  # fmt: skip
    assert_one_error_line(code, out, err)
    assert key_count(r) == keys
    assert stored("reminder-42") == first


def test_add_table_shows_utc_and_local_time(redis_url: str) -> None:
    out = ok(*ADD, "--at", "2031-01-15T09:30", "--tz", "Europe/Berlin").stdout
    row = next(line for line in out.splitlines() if line.startswith("schedule_time"))
    assert "2031-01-15 08:30:00 UTC" in row
    assert "2031-01-15 09:30:00 CET" in row
    assert re.search(r"^id\s+\w+", out, re.M)


# --- user errors: one line, exit 2, nothing written -----------------------------------------


BAD_ARGUMENTS = {
    "six-field cron": ([*ADD, "--cron", "* * * * * *"], "5 fields"),
    "unknown timezone": ([*ADD, "--delay", "60", "--tz", "Mars/Olympus"], "Mars/Olympus"),
    "past --at": ([*ADD, "--at", "2020-01-01T00:00:00Z"], "past"),
    "--delay and --cron": ([*ADD, "--delay", "60", "--cron", "* * * * *"], "exactly one"),
    "--metadata not JSON": ([*ADD, "--delay", "60", "--metadata", "{bad"], "--metadata"),
    "--metadata a list": ([*ADD, "--delay", "60", "--metadata", "[1, 2]"], "metadata"),
    "--max-runs on once": ([*ADD, "--delay", "60", "--max-runs", "2"], "max_runs"),
    "cron that never fires": ([*ADD, "--cron", "0 0 30 2 *"], "never"),
    "missing --user": (["add", "x", "--platform", "tg", "--delay", "60"], "--user"),
    "unknown command": (["frobnicate"], "frobnicate"),
    "--limit 0": (["list", "--limit", "0"], "--limit"),
    "show of an unknown id": (["show", "no-such-id"], "no-such-id"),
    "cancel of an unknown id": (["cancel", "no-such-id"], "no-such-id"),
    "preview bad --start": (["preview", "* * * * *", "--start", "soon"], "--start"),
    "preview --count 0": (["preview", "* * * * *", "--count", "0"], "--count"),
    "import of a missing file": (["import", "/nonexistent/prompts.jsonl"], "nonexistent"),
}


@pytest.mark.parametrize(("args", "needle"), list(BAD_ARGUMENTS.values()), ids=list(BAD_ARGUMENTS))
def test_bad_argument_exits_2_with_one_line_and_writes_nothing(
    r: redis.Redis, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    once()
    keys = key_count(r)
    line = assert_one_error_line(*run_main(capsys, *args))
    assert needle in line
    assert key_count(r) == keys


@pytest.mark.parametrize("verb", ["cancel", "pause", "resume", "trigger"])
def test_acting_on_another_users_prompt_is_not_found_and_writes_nothing(
    r: redis.Redis, capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    p = cron(user="ana")
    if verb == "resume":
        sp.pause_prompt(p.id)
    before = stored(p.id)
    keys = key_count(r)
    line = assert_one_error_line(*run_main(capsys, verb, p.id, "--user", "bob"))
    assert f"no scheduled prompt with id {p.id!r}" in line
    assert key_count(r) == keys
    assert stored(p.id) == before


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["show", "x"],
        [*ADD, "--delay", "60"],
        ["cancel", "x"],
        ["stats"],
        ["cleanup"],
        ["hydrate"],
        ["export"],
        ["import", "{backup}"],
    ],
    ids=lambda a: a[0],
)
def test_unreachable_redis_is_one_line_with_the_password_masked(
    r: redis.Redis,
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
) -> None:
    backup = tmp_path / "backup.jsonl"
    backup.write_text(json.dumps(stored(once().id)) + "\n")
    keys = key_count(r)
    port = free_port()
    url = f"redis://:s3cret-pw@127.0.0.1:{port}/0"
    args = [a.replace("{backup}", str(backup)) for a in args]
    code, out, err = run_main(capsys, "--redis-url", url, *args)
    line = assert_one_error_line(code, out, err)
    assert f"redis://:***@127.0.0.1:{port}/0" in line
    assert "s3cret-pw" not in out + err
    sp.configure(redis_url=redis_url)
    assert key_count(get_redis()) == keys


def test_console_script_bad_cron_is_one_line_without_traceback(
    r: redis.Redis, redis_url: str
) -> None:
    keys = key_count(r)
    proc = run_script(*ADD, "--cron", "* * * * * *", redis_url=redis_url)
    line = assert_one_error_line(proc.returncode, proc.stdout, proc.stderr)
    assert "5 fields" in line
    assert key_count(r) == keys


def test_console_script_unknown_command_is_one_line(redis_url: str) -> None:
    proc = run_script("frobnicate", redis_url=redis_url)
    assert "frobnicate" in assert_one_error_line(proc.returncode, proc.stdout, proc.stderr)


def test_console_script_unreachable_redis_masks_password(redis_url: str) -> None:
    port = free_port()
    proc = run_script("list", redis_url=f"redis://:s3cret-pw@127.0.0.1:{port}/0")
    line = assert_one_error_line(proc.returncode, proc.stdout, proc.stderr)
    assert f"redis://:***@127.0.0.1:{port}/0" in line
    assert "s3cret-pw" not in proc.stdout + proc.stderr


def test_console_script_add_json_succeeds(redis_url: str) -> None:
    proc = run_script(*ADD, "--delay", "3600", "--json", redis_url=redis_url)
    assert (proc.returncode, proc.stderr) == (0, "")
    data = json.loads(proc.stdout)
    assert data == stored(data["id"])


@pytest.mark.parametrize(
    ("args", "fires"),
    [
        # Nothing fires after the last midnight there is: an empty preview.
        (["preview", "0 0 * * *", "--start", "9999-12-31T23:00"], []),
        # Five asked for, one left before the calendar ends.
        (
            ["preview", "0 0 * * *", "--start", "9999-12-30T00:00", "--count", "5"],
            ["9999-12-31T00:00:00+00:00"],
        ),
        # Year one, New York: local mean time (-04:56:02), the days after the start.
        (
            ["preview", "0 0 * * *", "--start", "0001-01-01T00:00", "--tz", "America/New_York",
             "--count", "3"],
            ["0001-01-02T04:56:02+00:00", "0001-01-03T04:56:02+00:00", "0001-01-04T04:56:02+00:00"],
        ),
    ],
    ids=["after-last-fire", "runs-off-the-end", "year-one-new-york"],
)  # fmt: skip
def test_preview_at_the_edges_of_the_calendar_lists_the_fires_that_exist(
    capsys: pytest.CaptureFixture[str], args: list[str], fires: list[str]
) -> None:
    # The fires that exist, exit 0 — never OverflowError, never a traceback.
    code, out, err = run_main(capsys, *args, "--json")
    assert (code, err) == (0, ""), (code, out, err)
    assert [f["utc"] for f in json.loads(out)["fires"]] == fires
    code, out, err = run_main(capsys, *args)  # the table too
    assert (code, err) == (0, ""), (code, out, err)
    assert len(out.splitlines()) == 1 + len(fires)  # a header, then one row per fire


def test_cron_starting_after_the_last_representable_day_is_one_line_and_writes_nothing(
    r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = key_count(r)
    args = [*ADD, "--cron", "0 0 * * *", "--start-at", "9999-12-31T23:00"]
    assert_one_error_line(*run_main(capsys, *args))
    assert key_count(r) == keys


# --- list --------------------------------------------------------------------------------


def _ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["items"]]


def test_list_filters_by_user_platform_and_repeated_status(redis_url: str) -> None:
    a1 = once(user="ana", platform="tg")
    a2 = cron(user="ana", platform="web")
    b1 = once(user="bob", platform="tg")
    sp.pause_prompt(b1.id)
    b2 = once(user="bob", platform="tg")
    sp.cancel_prompt(b2.id)
    assert _ids(ok_json("list")) == [a1.id, a2.id, b1.id, b2.id]
    assert _ids(ok_json("list", "--user", "ana")) == [a1.id, a2.id]
    assert _ids(ok_json("list", "--platform", "tg")) == [a1.id, b1.id, b2.id]
    assert _ids(ok_json("list", "--status", "paused", "--status", "cancelled")) == [b1.id, b2.id]
    assert _ids(ok_json("list", "--user", "bob", "--status", "paused")) == [b1.id]
    assert _ids(ok_json("list", "--user", "bob", "--platform", "web")) == []


def test_list_json_shape_is_items_and_next_cursor(redis_url: str) -> None:
    p = once()
    page = ok_json("list")
    assert set(page) == {"items", "next_cursor"}
    assert page["items"] == [stored(p.id)]
    assert page["next_cursor"] is None


def test_list_pages_with_limit_and_cursor_visit_every_prompt_once(redis_url: str) -> None:
    made = [once(f"p{i}", user=f"u{i % 3}").id for i in range(7)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        args = ["list", "--limit", "3"] + (["--cursor", cursor] if cursor else [])
        page = ok_json(*args)
        pages += 1
        seen += _ids(page)
        assert len(page["items"]) <= 3
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert seen == made  # oldest first, each once
    assert pages >= 3


def test_list_table_shows_times_and_the_next_cursor(redis_url: str) -> None:
    p = once(at="2031-01-15T09:30:00", timezone="Europe/Berlin")
    once()
    out = ok("list", "--limit", "1").stdout
    assert out.splitlines()[0].split()[:4] == ["ID", "STATUS", "USER", "PLATFORM"]
    row = next(line for line in out.splitlines() if line.startswith(p.id))
    assert "2031-01-15 08:30:00 UTC" in row
    assert "2031-01-15 09:30:00 CET" in row
    assert f"more: --cursor {p.id}" in out
    assert ok_json("list", "--limit", "1")["next_cursor"] == p.id


# --- show, cancel, pause, resume, trigger -----------------------------------------------


def test_show_json_is_the_stored_record_and_table_lists_fields(redis_url: str) -> None:
    p = once(metadata={"k": "v"}, channel_id="c9")
    assert ok_json("show", p.id) == stored(p.id)
    out = ok("show", p.id).stdout
    fields = {line.split()[0] for line in out.splitlines()[1:] if line.strip()}
    assert {"id", "prompt", "user_id", "platform", "channel_id", "status", "next_run_at"} <= fields
    assert '{"k": "v"}' in out


def test_pause_resume_cancel_change_status(r: redis.Redis) -> None:
    p = cron()
    paused = ok_json("pause", p.id)
    assert (paused["status"], paused["next_run_at"]) == ("paused", None)
    assert paused == stored(p.id)
    assert r.zscore(K.due, p.id) is None
    resumed = ok_json("resume", p.id, "--user", "ana")
    assert resumed["status"] == "active"
    assert resumed["next_run_at"] == "2031-01-01T09:00:00.000Z"
    assert r.zscore(K.due, p.id) == to_ms(from_iso(resumed["next_run_at"]))
    out = ok("cancel", p.id, "--user", "ana").stdout
    assert out.strip() == f"{p.id}: cancelled, next run -"
    record = stored(p.id)
    assert record["status"] == "cancelled"
    assert record["version"] == 4
    assert r.zscore(K.due, p.id) is None


def test_pause_text_output_names_the_prompt(redis_url: str) -> None:
    p = once()
    assert ok("pause", p.id).stdout.strip() == f"{p.id}: paused, next run -"
    resumed = ok("resume", p.id).stdout.strip()
    assert resumed.startswith(f"{p.id}: scheduled, next run 20")
    assert resumed.endswith(" UTC")


def test_trigger_returns_its_key_and_keeps_the_schedule(r: redis.Redis) -> None:
    p = cron()
    data = ok_json("trigger", p.id, "--user", "ana")
    assert set(data) == {"prompt_id", "idempotency_key"}
    assert data["prompt_id"] == p.id
    assert re.fullmatch(rf"{re.escape(p.id)}:trigger:\d+", data["idempotency_key"])
    assert r.zscore(K.inflight, data["idempotency_key"]) is not None
    after = stored(p.id)
    assert (after["status"], after["next_run_at"]) == ("active", "2031-01-01T09:00:00.000Z")
    out = ok("trigger", p.id).stdout
    assert re.fullmatch(rf"triggered {re.escape(p.id)}: delivery {re.escape(p.id)}:trigger:\d+ "
                        r"queued\n", out)  # fmt: skip


def test_trigger_of_a_cancelled_prompt_is_refused(
    r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    p = once()
    sp.cancel_prompt(p.id)
    keys = key_count(r)
    assert_one_error_line(*run_main(capsys, "trigger", p.id))
    assert key_count(r) == keys


# --- preview -----------------------------------------------------------------------------


def test_preview_prints_count_fire_times() -> None:
    out = ok("preview", "0 9 * * *", "--count", "3", "--start", "2031-01-01T00:00").stdout
    lines = out.splitlines()
    assert len(lines) == 4  # header + 3
    assert [line.split()[:2] for line in lines[1:]] == [
        ["2031-01-01", "09:00:00"],
        ["2031-01-02", "09:00:00"],
        ["2031-01-03", "09:00:00"],
    ]


SPRING = ["preview", "30 2 * * *", "--tz", "America/New_York", "--start", "2026-03-06T00:00"]


def test_preview_marks_the_new_york_spring_forward_gap_day() -> None:
    out = ok(*SPRING, "--count", "5").stdout
    rows = out.splitlines()[1:]
    assert len(rows) == 5
    gap = [row for row in rows if row.startswith("2026-03-08")]
    assert len(gap) == 1
    assert "2026-03-08 07:00:00 UTC" in gap[0]
    assert "2026-03-08 03:00:00 EDT" in gap[0]
    assert "DST" in gap[0]
    assert [row for row in rows if "DST" in row] == gap
    assert "2026-03-09 02:30:00 EDT" in out


def test_preview_json_sets_dst_shift_exactly_on_the_shifted_row() -> None:
    data = ok_json(*SPRING, "--count", "5")
    assert (data["cron"], data["timezone"]) == ("30 2 * * *", "America/New_York")
    fires = data["fires"]
    assert [f["utc"] for f in fires] == [
        "2026-03-06T07:30:00+00:00",
        "2026-03-07T07:30:00+00:00",
        "2026-03-08T07:00:00+00:00",
        "2026-03-09T06:30:00+00:00",
        "2026-03-10T06:30:00+00:00",
    ]
    assert fires[2]["local"] == "2026-03-08T03:00:00-04:00"
    assert fires[2]["zone"] == "EDT"
    assert [f["dst_shift"] for f in fires] == [None, None, "-05:00 -> -04:00", None, None]
    assert set(fires[0]) == {"utc", "local", "zone", "dst_shift"}


def test_preview_fall_back_fires_once_and_marks_the_next_row() -> None:
    args = ["preview", "30 1 * * *", "--tz", "America/New_York", "--start", "2026-10-31T12:00"]
    fires = ok_json(*args, "--count", "3")["fires"]
    assert [f["local"] for f in fires] == [
        "2026-11-01T01:30:00-04:00",  # first pass of the repeated hour only
        "2026-11-02T01:30:00-05:00",
        "2026-11-03T01:30:00-05:00",
    ]
    assert [f["dst_shift"] for f in fires] == [None, "-04:00 -> -05:00", None]


# --- stats -------------------------------------------------------------------------------


def test_stats_counts_by_status_and_the_overdue_backlog(r: redis.Redis) -> None:
    late = once("late")
    once("on time")
    cron()
    paused = cron()
    sp.pause_prompt(paused.id)
    cancelled = once()
    sp.cancel_prompt(cancelled.id)
    r.zadd(K.due, {late.id: to_ms(utcnow()) - 90_000})  # due 90 s ago, never fired
    data = ok_json("stats")
    assert set(data) == {
        "total",
        "by_status",
        "due_overdue",
        "due_within_horizon",
        "in_flight",
        "in_flight_past_deadline",
        "oldest_overdue_seconds",
        "last_tick",
    }
    assert data["total"] == 5
    assert data["by_status"] == {
        "scheduled": 2,
        "active": 1,
        "paused": 1,
        "executed": 0,
        "cancelled": 1,
        "failed": 0,
    }
    assert data["due_overdue"] == 1
    assert 90 <= data["oldest_overdue_seconds"] < 120
    assert (data["in_flight"], data["in_flight_past_deadline"]) == (0, 0)
    assert data["last_tick"] is None


def test_recount_rebuilds_the_counts_by_status_from_the_records(r: redis.Redis) -> None:
    once()
    sp.cancel_prompt(once().id)
    r.hset(K.counts, mapping={"scheduled": 40, "failed": 3})  # wrong, as after a hand restore
    assert ok_json("recount") == {
        "scheduled": 1, "active": 0, "paused": 0, "executed": 0, "cancelled": 1, "failed": 0
    }  # fmt: skip
    table_out = ok("recount").stdout
    assert "STATUS" in table_out and "cancelled" in table_out


def test_stats_of_an_empty_store_and_its_table(redis_url: str) -> None:
    data = ok_json("stats")
    assert data["total"] == 0
    assert set(data["by_status"].values()) == {0}
    assert (data["due_overdue"], data["oldest_overdue_seconds"]) == (0, 0)
    once()
    out = ok("stats").stdout
    assert re.search(r"^scheduled\s+1$", out, re.M)
    assert re.search(r"^total\s+1$", out, re.M)
    assert re.search(r"^due_overdue\s+0$", out, re.M)


# --- cleanup, hydrate ----------------------------------------------------------------------


def _age(r: redis.Redis, prompt_id: str, days: float) -> None:
    """Make a terminal prompt look finished ``days`` ago (record and finished index)."""
    record = sp.get_prompt(prompt_id)
    assert record is not None and record.status.is_terminal
    when = utcnow() - timedelta(days=days)
    r.set(K.prompt(prompt_id), record.replace(updated_at=when).to_json())
    r.zadd(K.finished, {prompt_id: to_ms(when)})


def test_cleanup_deletes_only_terminal_prompts_older_than_days(r: redis.Redis) -> None:
    old = once()
    sp.cancel_prompt(old.id)
    _age(r, old.id, 10)
    recent = once()
    sp.cancel_prompt(recent.id)
    live = once()
    data = ok_json("cleanup", "--days", "7")
    assert set(data) == {"success", "message", "days_kept", "deleted"}
    assert (data["success"], data["days_kept"], data["deleted"]) == (True, 7, 1)
    assert data["message"].startswith("deleted 1 prompt(s)")
    assert sp.get_prompt(old.id) is None
    assert sp.get_prompt(recent.id) is not None
    assert sp.get_prompt(live.id) is not None
    out = ok("cleanup", "--days", "0").stdout
    assert out.startswith("deleted 1 prompt(s) finished more than 0")
    assert sp.get_prompt(live.id) is not None


def test_hydrate_json_reports_how_many_it_published(r: redis.Redis) -> None:
    soon = once("soon", platform="tg")
    once("far")
    r.zadd(K.due, {soon.id: to_ms(utcnow()) + 60_000})  # now inside the horizon
    assert ok_json("hydrate", "--platform", "web") == {"published": 0}
    assert ok_json("hydrate") == {"published": 1}
    assert r.zscore(K.due, soon.id) is None
    assert [k for k in r.zrange(K.inflight, 0, -1) if str(k).startswith(soon.id)]
    assert ok("hydrate", "--platform", "web").stdout.strip() == "published 0 occurrence(s)"


# --- export, import ---------------------------------------------------------------------


def _mixed(user: str = "ana") -> list[str]:
    a = once("one-time", user=user, metadata={"x": 1}, channel_id="c1")
    b = cron("cron", user=user, timezone="Europe/Berlin", max_runs=4)
    c = cron("paused", user=user)
    sp.pause_prompt(c.id)
    d = once("cancelled", user="bob")
    sp.cancel_prompt(d.id)
    return [a.id, b.id, c.id, d.id]


def test_export_writes_one_json_line_per_prompt(redis_url: str) -> None:
    ids = _mixed()
    result = ok("export")
    lines = result.stdout.splitlines()
    assert len(lines) == len(ids)
    assert [json.loads(line) for line in lines] == [stored(i) for i in ids]
    assert result.stderr.strip() == "exported 4 prompt(s)"


def test_export_skips_an_unreadable_record_names_it_and_counts_it(
    r: redis.Redis, redis_url: str
) -> None:
    ids = _mixed()
    r.set(K.prompt("broken"), "{not json")
    r.zadd(K.ids, {"broken": 0})
    result = ok("export")
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ids
    err = result.stderr.splitlines()
    assert err[0].startswith(f"skipped {K.prompt('broken')}: unreadable (")
    assert err[-1].startswith("exported 4 prompt(s); skipped 1 unreadable (")


def test_export_then_import_into_another_prefix_restores_identical_records(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    ids = _mixed()
    originals = {i: stored(i) for i in ids}
    open_counts = r.hgetall(K.open_counts)
    backup = tmp_path / "backup.jsonl"
    ok("--redis-url", redis_url, "export", "-o", str(backup))
    result = ok("--redis-url", redis_url, "--prefix", "restored", "import", str(backup))
    assert result.stderr.strip() == "imported 4 prompt(s)"

    sp.configure(redis_url=redis_url, key_prefix="restored")
    k2 = Keys("restored")
    client = get_redis()
    assert {i: stored(i) for i in ids} == originals
    for i in ids:
        record = sp.get_prompt(i)
        assert record is not None
        score = client.zscore(k2.due, i)
        if record.is_live:
            assert record.next_run_at is not None
            assert score == to_ms(record.next_run_at)
        else:
            assert score is None
    assert client.zscore(k2.finished, ids[3]) is not None
    assert client.hgetall(k2.open_counts) == open_counts
    assert [p.id for p in sp.list_prompts(user_id="ana").items] == ids[:3]


def test_import_twice_skips_every_record_as_already_exists(r: redis.Redis, redis_url: str) -> None:
    _mixed()
    dump = ok("export").stdout
    target = ("--redis-url", redis_url, "--prefix", "copy")
    assert ok(*target, "import", "-", input=dump).stderr.strip() == "imported 4 prompt(s)"
    keys = key_count(r)
    again = ok(*target, "import", "-", input=dump)
    assert again.stderr.strip() == "imported 0 prompt(s); skipped 4 already exists"
    assert key_count(r) == keys


def test_import_skips_garbage_and_unknown_schema_lines(redis_url: str, tmp_path: Path) -> None:
    p = once()
    good = stored(p.id)
    sp.configure(redis_url=redis_url, key_prefix="other")
    future = dict(good, id="from-the-future", schema=9)
    source = tmp_path / "mixed.jsonl"
    source.write_text(
        json.dumps(good) + "\n" + "this is not json {\n" + json.dumps(future) + "\n\n"
    )
    result = ok("--redis-url", redis_url, "--prefix", "other", "import", str(source))
    err = result.stderr.splitlines()
    assert err[-1] == "imported 1 prompt(s); skipped 1 invalid record, 1 unsupported schema"
    assert any(line.startswith("line 2: skipped") for line in err)
    assert any(line.startswith("line 3: skipped") and "schema" in line for line in err)
    assert stored(p.id) == good
    assert sp.get_prompt("from-the-future") is None


@pytest.mark.parametrize(
    "change",
    [{"id": "evil:trigger"}, {"id": "has space"}, {"prompt": "   "}],
    ids=["trigger-suffix-id", "id-with-space", "blank-prompt"],
)
def test_import_refuses_records_the_api_would_refuse(
    redis_url: str, change: dict[str, str]
) -> None:
    good = stored(once().id)
    bad = dict(good, **change)
    if "id" not in change:
        bad["id"] = "bad-record"
    result = ok("--redis-url", redis_url, "--prefix", "other", "import", "-",
                input=json.dumps(bad) + "\n")  # fmt: skip
    assert result.stderr.splitlines()[-1] == "imported 0 prompt(s); skipped 1 invalid record"
    sp.configure(redis_url=redis_url, key_prefix="other")
    assert sp.get_prompt(bad["id"]) is None


def test_export_import_between_two_servers(redis_url: str, tmp_path: Path) -> None:
    ids = _mixed()
    originals = {i: stored(i) for i in ids}
    backup = tmp_path / "backup.jsonl"
    ok("--redis-url", redis_url, "export", "-o", str(backup))
    with RedisServer() as other:
        result = ok("--redis-url", other.url, "import", str(backup))
        assert result.stderr.strip() == "imported 4 prompt(s)"
        sp.configure(redis_url=other.url)
        assert {i: stored(i) for i in ids} == originals
        assert get_redis().zcard(K.due) == 2  # the once and the active cron prompt
        sp.configure(redis_url=redis_url)


# --- doctor (real processes: it exits and pings workers over the broker) -------------------


def _checks(text: str) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for line in text.splitlines():
        match = re.match(r"^(ok  |FAIL) ([^:]+): ", line)
        assert match, line
        out[match.group(2)] = match.group(1) == "ok  "
    return out


LOG_RUNNER = "scheduled_prompts.runners:LogRunner"


@pytest.fixture(scope="module")
def doctor_runs(
    redis_server: RedisServer,
) -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    """``doctor`` run three ways at once (each waits 1.5 s for workers that never answer):
    against a persistent redis-server with no worker or beat, with and without a runner,
    and against the suite's server, which has no persistence."""
    with RedisServer("--appendonly", "yes") as server:
        variants = {
            "plain": (["doctor"], script_env(redis_url=server.url)),
            "runner": (["doctor", "--json"], script_env(redis_url=server.url, runner=LOG_RUNNER)),
            "no-persistence": (["doctor"], script_env(redis_url=redis_server.url)),
        }
        procs = {
            name: subprocess.Popen(
                [str(SCRIPT), *args],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, (args, env) in variants.items()
        }
        results = {}
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=30)
            results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        yield results


def test_doctor_without_worker_or_beat_fails_exactly_those_checks(
    doctor_runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    proc = doctor_runs["plain"]
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    checks = _checks(proc.stdout)
    assert len(proc.stdout.splitlines()) == len(checks)  # one line per check
    assert set(checks) == {
        "redis",
        "maxmemory-policy",
        "persistence",
        "beat",
        "visibility timeout",
        "runner",
        "workers",
    }
    assert {name for name, passed in checks.items() if not passed} == {"runner", "workers", "beat"}


def test_doctor_with_a_real_runner_path_passes_the_runner_check(
    doctor_runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    proc = doctor_runs["runner"]
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) == {"ok", "checks"}
    assert data["ok"] is False
    assert all(set(c) == {"name", "ok", "detail"} for c in data["checks"])
    by_name = {c["name"]: c for c in data["checks"]}
    assert by_name["runner"]["ok"] is True
    assert "LogRunner" in by_name["runner"]["detail"]
    assert {c["name"] for c in data["checks"] if not c["ok"]} == {"workers", "beat"}


def test_doctor_against_unreachable_redis_fails_the_redis_check(redis_url: str) -> None:
    port = free_port()
    proc = run_script("doctor", redis_url=f"redis://:s3cret-pw@127.0.0.1:{port}/0")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    checks = _checks(proc.stdout)
    assert checks["redis"] is False
    assert "workers" not in checks  # not asked without a broker
    assert f"redis://:***@127.0.0.1:{port}/0" in proc.stdout
    assert "s3cret-pw" not in proc.stdout + proc.stderr
    as_json = json.loads(
        run_script("doctor", "--json", redis_url=f"redis://127.0.0.1:{port}/0").stdout
    )
    assert as_json["ok"] is False
    assert as_json["checks"][0]["name"] == "redis"
    assert as_json["checks"][0]["ok"] is False


def test_doctor_flags_a_redis_without_persistence(
    doctor_runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    # The suite's server runs with neither AOF nor RDB snapshots.
    proc = doctor_runs["no-persistence"]
    checks = _checks(proc.stdout)
    assert proc.returncode == 1
    assert checks["redis"] is True
    assert checks["persistence"] is False
    assert "a restart loses every prompt" in proc.stdout
