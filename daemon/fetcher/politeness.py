"""Per-host politeness that adapts to the host: a limit on requests in flight per host that
halves when the host pushes back and grows again additively (AIMD), a host-wide pause when it
asks for one with Retry-After, and an optional token bucket.

What a request's outcome teaches is read from the exception (or its absence) that leaves its
``slot``:
- 429 or 503 with Retry-After: no new request to the host starts until then (capped by
  ``retry_after_max``); requests already under way finish, queued ones wait.
- 429 or 503 without Retry-After, or ``FAILURE_RUN`` timeouts/resets in a row: the host's limit
  halves (floor 1). Only requests started after the previous halving count, so one burst of
  answers to requests sent under the old limit halves it once, as TCP does once per window.
- any other answer: after as many answers as the limit, the limit grows by one, up to
  ``per_host``.

State for a host lives while someone uses it, and after that only while the host is paused,
below its full limit or in a run of failures, for at most ``REMEMBERED_HOSTS`` hosts (the least
recently used are forgotten first), so memory follows the active hosts, not the millions a job
may touch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque

from .. import metrics
from . import errors
from .throttles import CURRENT_LOG

PUSHBACK = frozenset({429, 503})
FAILURE_RUN = 3
"""Timeouts and connection failures in a row from one host that halve its limit."""
REMEMBERED_HOSTS = 10_000
"""Idle hosts kept while paused, below their full limit or in a run of failures; beyond, the
least recently used are forgotten (they start again afresh)."""
CLOCK_SLACK_S = 0.001
"""A pause's timer may fire this much early (libuv's clock has millisecond steps)."""


class _TokenBucket:
    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._stamp = time.monotonic()

    def delay(self) -> float:
        """Take a token; return how long the caller must wait before using it."""
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate


class _Host:
    __slots__ = (
        "active",
        "bucket",
        "credit",
        "failures",
        "limit",
        "lowered_at",
        "not_before",
        "resume",
        "users",
        "waiters",
    )

    def __init__(self, per_host: int, rps: float | None) -> None:
        self.limit = per_host
        self.active = 0
        """Slots held."""
        self.users = 0
        """Slots held or awaited."""
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.bucket = _TokenBucket(rps) if rps else None
        self.credit = 0
        """Answers since the limit last changed."""
        self.failures = 0
        """Timeouts and connection failures in a row."""
        self.lowered_at = float("-inf")
        self.not_before = 0.0
        """While paused: the ``time.monotonic()`` before which no request starts."""
        self.resume: asyncio.TimerHandle | None = None
        """The end of the pause under way; None when the host is not paused."""


class HostLimiter:
    """Hands out per-host slots under each host's current limit and pause (module docstring)."""

    def __init__(
        self,
        per_host: int,
        rps: float | None,
        host_labels: metrics.BoundedHostLabels,
        retry_after_max: float,
    ) -> None:
        self._per_host = per_host
        self._rps = rps
        self._host_labels = host_labels
        self._retry_after_max = retry_after_max
        self._hosts: dict[str, _Host] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()
        """Hosts remembered without users, least recently used first."""

    def in_use(self, host: str) -> bool:
        """Whether a request to ``host`` holds or awaits one of its slots now."""
        state = self._hosts.get(host)
        return state is not None and state.users > 0

    def slot(self, host: str) -> _Slot:
        """``async with limiter.slot(host):`` holds one of the host's slots; the exception
        leaving the block, if any, is the outcome the host's limit and pause learn from."""
        return _Slot(self, host)

    async def _acquire(self, host: str) -> _Host:
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _Host(self._per_host, self._rps)
        else:
            self._idle.pop(host, None)
        state.users += 1
        started = time.monotonic()
        try:
            if state.resume is None and not state.waiters and state.active < state.limit:
                state.active += 1
            else:
                await self._queue(state)
                while state.resume is not None:  # paused after the slot was handed over
                    state.active -= 1
                    await self._queue(state)
        except BaseException:
            self._leave(host, state)
            raise
        wait = state.bucket.delay() if state.bucket else 0.0
        if wait > 0:
            try:
                await asyncio.sleep(wait)
            except BaseException as exc:
                self._release(host, state, exc, started)
                raise
        waited = time.monotonic() - started
        if waited > 0.001:
            metrics.HOST_WAIT.labels(self._host_labels(host)).inc(waited)
        return state

    async def _queue(self, state: _Host) -> None:
        """Wait in line until ``_admit`` hands this task a slot."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.waiters.append(future)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():  # handed a slot while cancelled
                state.active -= 1
                self._admit(state)
            with contextlib.suppress(ValueError):  # _admit may have dropped it already
                state.waiters.remove(future)
            raise

    def _admit(self, state: _Host) -> None:
        """Hand free slots to the waiters, first come first served, unless the host is paused."""
        while state.waiters and state.active < state.limit and state.resume is None:
            future = state.waiters.popleft()
            if not future.done():  # a cancelled waiter's future is done
                state.active += 1
                future.set_result(None)

    def _release(
        self, host: str, state: _Host, outcome: BaseException | None, started: float
    ) -> None:
        state.active -= 1
        self._learn(host, state, outcome, started)
        self._admit(state)
        self._leave(host, state)

    def _leave(self, host: str, state: _Host) -> None:
        state.users -= 1
        if state.users:
            return
        if self._forgettable(state):
            del self._hosts[host]
            return
        self._idle[host] = None
        if len(self._idle) > REMEMBERED_HOSTS:
            oldest, _ = self._idle.popitem(last=False)
            self._forget(oldest)

    def _forgettable(self, state: _Host) -> bool:
        """Nothing learnt about the host is left to keep: no pause, full limit, no run of
        failures under way."""
        return state.resume is None and state.limit >= self._per_host and not state.failures

    def _forget(self, host: str) -> None:
        state = self._hosts.pop(host)
        if state.resume is not None:
            state.resume.cancel()
            metrics.HOSTS_PAUSED.dec()
        if state.limit < self._per_host:
            self._show_limit(host, self._per_host)

    # --- what outcomes teach ---------------------------------------------------------------

    def _learn(
        self, host: str, state: _Host, outcome: BaseException | None, started: float
    ) -> None:
        if outcome is None:
            self._answered(host, state)
            return
        if not isinstance(outcome, Exception):  # cancelled: says nothing about the host
            return
        failure = errors.classify_exception(outcome)
        log = CURRENT_LOG.get()
        if failure.http_status in PUSHBACK:
            if log is not None:
                log.count(host, "throttled")
            if failure.retry_after is not None:
                changed = self._pause(host, state, min(failure.retry_after, self._retry_after_max))
                kind = "pauses"
            else:
                changed = self._lower(host, state, started)
                kind = "halvings"
            if changed and log is not None:
                log.count(host, kind)
        elif failure.status in errors.RETRYABLE and failure.http_status is None:
            state.failures += 1
            if state.failures >= FAILURE_RUN:
                state.failures = 0
                if self._lower(host, state, started) and log is not None:
                    log.count(host, "halvings")
        elif failure.http_status is not None and failure.http_status < 500:
            self._answered(host, state)

    def _answered(self, host: str, state: _Host) -> None:
        """Additive increase: one more slot after as many answers as the limit."""
        state.failures = 0
        if state.limit >= self._per_host:
            return
        state.credit += 1
        if state.credit >= state.limit:
            state.credit = 0
            state.limit += 1
            self._show_limit(host, state.limit)

    def _lower(self, host: str, state: _Host, started: float) -> bool:
        """Multiplicative decrease, once for the requests sent under the same limit."""
        if started < state.lowered_at or state.limit == 1:
            return False
        state.lowered_at = time.monotonic()
        state.credit = 0
        state.limit = max(1, state.limit // 2)
        metrics.HOST_HALVINGS.labels(self._host_labels(host)).inc()
        self._show_limit(host, state.limit)
        return True

    def _pause(self, host: str, state: _Host, seconds: float) -> bool:
        """Pause the host for ``seconds``; True when it was not paused already (a pause under
        way is only extended)."""
        until = time.monotonic() + seconds
        if seconds <= 0 or until <= state.not_before:
            return False
        state.not_before = until
        if state.resume is not None:
            return False  # the timer sees the later end when it fires
        state.resume = asyncio.get_running_loop().call_later(seconds, self._resume, host, state)
        metrics.HOSTS_PAUSED.inc()
        metrics.HOST_PAUSES.labels(self._host_labels(host)).inc()
        return True

    def _resume(self, host: str, state: _Host) -> None:
        remaining = state.not_before - time.monotonic()
        if remaining > CLOCK_SLACK_S:  # extended meanwhile
            state.resume = asyncio.get_running_loop().call_later(
                remaining, self._resume, host, state
            )
            return
        state.resume = None
        metrics.HOSTS_PAUSED.dec()
        self._admit(state)
        if not state.users and self._forgettable(state):
            self._idle.pop(host, None)
            del self._hosts[host]

    def _show_limit(self, host: str, limit: int) -> None:
        label = self._host_labels(host)
        if label != metrics.OTHER_HOST:  # one value for many hosts would mean nothing
            metrics.HOST_LIMIT.labels(label).set(limit)


class _Slot:
    """A class-based context manager: cheaper per request than a generator-based one."""

    __slots__ = ("_host", "_limiter", "_started", "_state")

    def __init__(self, limiter: HostLimiter, host: str) -> None:
        self._limiter = limiter
        self._host = host
        self._state: _Host | None = None
        self._started = 0.0

    async def __aenter__(self) -> None:
        self._state = await self._limiter._acquire(self._host)
        self._started = time.monotonic()

    async def __aexit__(self, _type: object, outcome: BaseException | None, _tb: object) -> None:
        assert self._state is not None
        self._limiter._release(self._host, self._state, outcome, self._started)
