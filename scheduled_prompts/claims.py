"""Claims on occurrences, in batches: take them, keep them, give them back, commit them.

A claim is a per-prompt lease (``lease:{id}``) taken by the CLAIM script only while the
record still schedules the occurrence. One :class:`Claims` object serves one ``deliver``
or ``deliver_batch`` task: every occurrence it claims shares its token, so a batch of
any size costs one round trip to claim, one to commit, and one more per half-lease its
runners take (to renew what is still to run).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis

from . import history, store
from ._time import to_ms, utcnow
from .connection import TRANSIENT
from .metrics import Batch, Observation
from .models import SCHEMA_VERSION, RecordError, ScheduledPrompt
from .occurrences import Delivery, redrive_delay
from .outcomes import Outcome, Result
from .store import Scope

log = logging.getLogger("scheduled_prompts.claims")

#: How long a delivered trigger's marker is kept (duplicate messages arrive within it).
DONE_TTL = timedelta(days=7)


@dataclass(frozen=True)
class Claimed:
    """An occurrence this task holds the lease of, with the record as CLAIM read it."""

    delivery: Delivery
    record: ScheduledPrompt
    raw: str


Change = Callable[[ScheduledPrompt], ScheduledPrompt]


class Claims:
    """The claims of one delivery task (one token for all of them).

    While :meth:`kept`, a thread renews every claim still held each half lease, so a
    runner call of any length keeps its claim (and the batch's other claims theirs);
    between runner calls the deliverer renews them too (``renewal_due``): the same
    :meth:`renew`. A claim lost at a renewal (it had expired: another deliverer may hold
    it) is in :attr:`lost`.
    """

    def __init__(self, client: redis.Redis, ctx: Scope) -> None:
        self.client = client
        self.ctx = ctx
        self.token = secrets.token_hex(8)
        self.lease_ms = int(ctx.settings.lease_seconds * 1000)
        self._renewed = time.monotonic()
        # Read by the keeper thread: each change is one dict operation (atomic under the
        # GIL), and it reads a copy.
        self._held: dict[str, Claimed] = {}
        #: Keys of claims found lost at a renewal: not to be delivered by this task.
        self.lost: set[str] = set()
        settings = ctx.settings
        self._log_lengths = [settings.delivery_log_length, settings.failure_log_length]

    def claim(
        self,
        deliveries: Sequence[Delivery],
        now: datetime,
        slots: Sequence[int | None] | None = None,
    ) -> list[Result | Claimed]:
        """Run CLAIM for every delivery: its :class:`Claimed`, or the Result that ends it
        (``slots``: the rate slot each holds from an earlier LIMITED attempt)."""
        keys = self.ctx.keys
        script_keys = [keys.inflight, keys.metrics]
        args: list[str | int | float] = [
            self.token,
            self.lease_ms,
            to_ms(now) + redrive_delay(self.ctx),
            SCHEMA_VERSION,
            self.ctx.settings.limits.script_arg,
            keys.prefix + ":",
        ]
        held = slots if slots is not None else [None] * len(deliveries)
        ops = []
        for lot in range(0, len(deliveries), store.LOT):
            lot_keys, lot_args = list(script_keys), list(args)
            end = lot + store.LOT
            for d, slot in zip(deliveries[lot:end], held[lot:end], strict=True):
                expected = str(d.occurrence_ms) if d.scheduled else ""
                lot_keys += [keys.prompt(d.prompt_id), keys.lease(d.lease_name), keys.done(d.key)]
                lot_args += [expected, d.key, "" if slot is None else slot]
            ops.append(store.Eval(store.CLAIM, lot_keys, lot_args))
        rows = [row for reply in self._run(ops) for row in reply]
        self._renewed = time.monotonic()
        out: list[Result | Claimed] = []
        for i, d in enumerate(deliveries):
            state, detail = store.as_text(rows[2 * i]), store.as_text(rows[2 * i + 1])
            out.append(self._read(d, state, detail))
        for c in out:
            if isinstance(c, Claimed):
                self._held[c.delivery.key] = c
        return out

    @contextlib.contextmanager
    def kept(self) -> Iterator[None]:
        """Keep every claim still held renewed, from a thread, until the block ends."""
        _keeper.watch(self)
        try:
            yield
        finally:
            _keeper.unwatch(self)

    def _read(self, d: Delivery, state: str, detail: str) -> Result | Claimed:
        rkey = self.ctx.keys.prompt(d.prompt_id)
        if state == "wait":
            # Over its platform's rate or concurrency limit: come back later (holding
            # the rate slot it reserved, if any).
            wait, _, slot = detail.partition(":")
            return Result(
                Outcome.LIMITED, retry_in=int(wait) / 1000, slot_ms=int(slot) if slot else None
            )
        if state == "busy":
            # Another delivery of this prompt is in progress: look again soon (a live
            # holder finishes in moments; a dead one's lease expires).
            return Result(Outcome.BUSY, retry_in=min(2.0, max(0.2, int(detail) / 1000 + 0.1)))
        if state == "unreadable":
            log.warning("skipping %s: unreadable record %s (left as it is)", d.key, rkey)
            return Result(Outcome.SKIPPED, error=f"unreadable record {rkey}")
        if state != "ok":
            log.debug("skipping %s: %s", d.key, state)
            return Result(Outcome.SKIPPED)
        try:
            return Claimed(d, ScheduledPrompt.from_json(detail), detail)
        except RecordError as exc:
            # Broken fields: leave the record as it is and stop re-driving this occurrence.
            log.warning("skipping %s: unreadable record %s: %s", d.key, rkey, exc)
            self.release(d, None, drop=True)
            return Result(Outcome.SKIPPED, error=str(exc))

    @property
    def renewal_due(self) -> bool:
        """Whether half a lease passed since the claims were taken or last renewed."""
        return time.monotonic() - self._renewed >= self.ctx.settings.lease_seconds / 2

    def renew(self) -> None:
        """Renew every claim still held (taken, not yet committed or given back) and move
        their re-drive deadlines. A lease that ran out may be another deliverer's now:
        its occurrence goes to ``lost`` and is not delivered by this task."""
        held = [c for key, c in list(self._held.items()) if key not in self.lost]
        if not held:
            return
        keys = self.ctx.keys
        leases = [keys.lease(c.delivery.lease_name) for c in held]
        deadline = to_ms(utcnow()) + redrive_delay(self.ctx)
        args: list[str | int] = [self.token, self.lease_ms, deadline]
        args += [c.delivery.key for c in held]
        renewed = store.Eval(store.RENEW, [keys.inflight, *leases], args).run(self.client)
        self._renewed = time.monotonic()
        self.lost |= {c.delivery.key for c, r in zip(held, renewed, strict=True) if not int(r)}

    def release(
        self,
        d: Delivery,
        retry_at: datetime | None,
        *,
        drop: bool = False,
        counted: Observation | None = None,
    ) -> None:
        """End a claim without committing: retry later (``retry_at``) or leave it to
        re-drive; ``counted`` is what the step adds to the metrics (a retry)."""
        self._held.pop(d.key, None)
        deadline = "" if retry_at is None else to_ms(retry_at) + redrive_delay(self.ctx)
        keys = self.ctx.keys
        batch = Batch()
        step = batch.step(counted)
        entry, failed = ("", "") if counted is None else history.encode(counted)
        store.Eval(
            store.RELEASE,
            [keys.lease(d.lease_name), keys.inflight, keys.metrics, keys.log, keys.failures],
            [*self._log_lengths, self.token, d.key, deadline, step, entry, failed, batch.fields()],
        ).run(self.client)
        if drop:
            self.client.zrem(self.ctx.keys.inflight, d.key)

    def commit(
        self,
        changes: Sequence[tuple[Claimed, Change]],
        counted: Sequence[Observation | None] | None = None,
    ) -> list[ScheduledPrompt | None]:
        """Record the outcomes (``counted``: what each adds to the metrics, counted with
        it); if Redis is unreachable, keep trying while the lease lasts.

        After a runner returned, giving up would leave the occurrence to be re-driven — a
        second runner call. Retrying here, as long as our lease keeps others away, turns
        a Redis outage shorter than the lease into a late commit instead of a repeat.
        """
        # At least two socket timeouts, so a Redis that hangs (rather than refuses) gets
        # a second try even when the lease is short.
        settings = self.ctx.settings
        budget = max(1.0, settings.lease_seconds - 1, 2 * settings.redis_timeout_seconds + 1)
        deadline = time.monotonic() + budget
        pause = 0.2
        results: list[ScheduledPrompt | None] = [None] * len(changes)
        metrics = list(counted) if counted is not None else [None] * len(changes)
        raws: list[str | None] = [c.raw for c, _ in changes]
        settled: set[int] = set()
        while True:
            try:
                self._commit_rounds(changes, metrics, raws, results, settled)
                return results
            except TRANSIENT as exc:
                if time.monotonic() + pause > deadline:
                    raise
                left = len(changes) - len(settled)
                log.warning("commit of %d outcome(s) waits for Redis: %s", left, exc)
                time.sleep(pause)
                pause = min(2.0, pause * 2)

    def _commit_rounds(
        self,
        changes: Sequence[tuple[Claimed, Change]],
        metrics: Sequence[Observation | None],
        raws: list[str | None],
        results: list[ScheduledPrompt | None],
        settled: set[int],
    ) -> None:
        """Compare-and-set every outcome not ``settled``, reading again what changed.

        A reply lost to a connection error is safe to retry: COMMIT answers 'ok' when the
        record already is the new JSON (``change`` is deterministic for a given record).
        """
        keys = self.ctx.keys
        for _ in range(store.CAS_ATTEMPTS):
            todo = [i for i in range(len(changes)) if i not in settled]
            if not todo:
                return
            stale = [i for i in todo if raws[i] is None]
            if stale:
                # Changed since it was read (an edit, a trigger): read it again.
                rkeys = [keys.prompt(changes[i][0].delivery.prompt_id) for i in stale]
                for i, value in zip(stale, self.client.mget(rkeys), strict=True):
                    raws[i] = None if value is None else store.as_text(value)
            sent: list[tuple[int, ScheduledPrompt, ScheduledPrompt, str]] = []
            for i in todo:
                claimed, change = changes[i]
                d = claimed.delivery
                raw = raws[i]
                record = (
                    claimed.record
                    if raw == claimed.raw
                    else store.parse_record(keys.prompt(d.prompt_id), raw)
                )
                if record is None or raw is None:
                    self.release(d, None, drop=True)
                    settled.add(i)
                    continue
                sent.append((i, record, change(record), raw))
            if not sent:
                return
            ops = []
            for lot in range(0, len(sent), store.LOT):
                script_keys = self._commit_keys()
                args: list[str | int | float] = [*self._log_lengths]
                batch = Batch()
                for i, record, new, raw in sent[lot : lot + store.LOT]:
                    d = changes[i][0].delivery
                    self._outcome(
                        script_keys, args, batch, d, record=record, raw=raw, new=new,
                        step=metrics[i],
                    )  # fmt: skip
                args.append(batch.fields())
                ops.append(store.Eval(store.COMMIT, script_keys, args))
            replies = [reply for lot_replies in self._run(ops) for reply in lot_replies]
            for (i, _, new, _), reply in zip(sent, replies, strict=True):
                if store.as_text(reply) == "ok":
                    results[i] = new
                    settled.add(i)
                    self._held.pop(changes[i][0].delivery.key, None)
                else:
                    raws[i] = None
        left = ", ".join(c.delivery.key for i, (c, _) in enumerate(changes) if i not in settled)
        raise RuntimeError(f"could not commit {left}: the record kept changing")

    def detach(
        self, claimed: Claimed, new: ScheduledPrompt, occurrence_ms: int, now: datetime
    ) -> Claimed | None:
        """Start an ``overlap="allow"`` run: commit ``new`` (the record moved past the
        claimed occurrence, so the next one comes due on time) and move the claim to the
        occurrence's detached run (``Delivery.detached``: its own lease and in-flight
        entry, delivered like a trigger), in one step. Returns the run's claim, or None
        when the record changed since it was claimed (the claim is then given back, and
        the occurrence stays in flight to be claimed again)."""
        d = claimed.delivery
        run = Delivery(d.prompt_id, occurrence_ms, detached=True, shard=d.shard)
        capped = self.ctx.settings.limits.concurrency.get(new.platform)
        running = self.ctx.keys.running(new.platform) if capped else ""
        deadline = to_ms(now) + redrive_delay(self.ctx)
        spec = json.dumps([run.key, deadline, self.lease_ms, running])
        script_keys = self._commit_keys()
        args: list[str | int | float] = [*self._log_lengths]
        batch = Batch()
        raw = self._outcome(
            script_keys, args, batch, d, record=claimed.record, raw=claimed.raw, new=new, step=None
        )
        script_keys.append(self.ctx.keys.lease(run.lease_name))
        args += [spec, batch.fields()]
        reply = self.ctx.durable(store.Eval(store.COMMIT, script_keys, args)).run(self.client)
        if store.as_text(reply[0]) != "ok":
            self.release(d, None)
            return None
        started = Claimed(run, new, raw)
        self._held.pop(d.key, None)
        self._held[run.key] = started
        return started

    def _run(self, ops: list[store.Eval]) -> list[Any]:
        """Each call's reply, in one round trip, made durable as the settings ask."""
        return self.ctx.durable(store.Pipeline(ops)).run(self.client)

    def _commit_keys(self) -> list[str]:
        """COMMIT's keys before the per-outcome ones."""
        keys = self.ctx.keys
        return [*store.record_indexes(keys), keys.inflight, keys.metrics, keys.log, keys.failures]

    def _outcome(
        self,
        script_keys: list[str],
        args: list[str | int | float],
        batch: Batch,
        d: Delivery,
        *,
        record: ScheduledPrompt,
        raw: str,
        new: ScheduledPrompt,
        step: Observation | None,
    ) -> str:
        """Add one outcome's keys and arguments to a COMMIT call; returns the new JSON."""
        keys = self.ctx.keys
        due, finished = store.index_entries(new)
        delta = int(new.status.is_open) - int(record.status.is_open)
        done_ttl = "" if d.scheduled else str(int(DONE_TTL.total_seconds() * 1000))
        script_keys += [
            keys.prompt(d.prompt_id),
            keys.user(new.user_id),
            keys.lease(d.lease_name),
            keys.done(d.key),
        ]
        entry, failed = ("", "") if step is None else history.encode(step)
        raw_new = new.to_json()
        args += [raw, new.id, new.user_id, raw_new, due, finished, delta, self.token, d.key,
                 done_ttl, batch.step(step), record.status.value, new.status.value, entry,
                 failed]  # fmt: skip
        return raw_new


class _Keeper:
    """One thread per process that renews the claims of deliveries in progress each half
    lease (of real time: the clock tests move by hand does not reach it)."""

    #: How often the thread looks at what it keeps.
    TICK = 0.5
    #: How soon a renewal that failed (Redis away) is tried again, at most.
    RETRY = 2.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[Claims, float] = {}
        self._pid = 0

    def watch(self, claims: Claims) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use in this process (or a forked child)
                self._pid = os.getpid()
                self._due = {}
                thread = threading.Thread(target=self._run, name="sp-lease-keeper", daemon=True)
                thread.start()
            self._due[claims] = _real_monotonic() + claims.ctx.settings.lease_seconds / 2

    def unwatch(self, claims: Claims) -> None:
        with self._lock:
            self._due.pop(claims, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK)
            now = _real_monotonic()
            with self._lock:
                due = [c for c, at in self._due.items() if at <= now]
            for claims in due:
                again = now + claims.ctx.settings.lease_seconds / 2
                try:
                    claims.renew()
                except Exception as exc:  # Redis away: try again soon, within the lease
                    log.warning("could not renew the leases of a delivery in progress: %s", exc)
                    again = now + min(self.RETRY, claims.ctx.settings.lease_seconds / 4)
                with self._lock:
                    if claims in self._due:
                        self._due[claims] = again


_real_monotonic = time.monotonic
_keeper = _Keeper()
