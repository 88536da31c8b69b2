"""Per-host politeness that adapts to the host: a limit on requests in flight per host that
halves when the host pushes back and grows again additively (AIMD), a host-wide pause when it
asks for one with Retry-After, and an optional token bucket.

What a request's outcome teaches is read from the exception (or its absence) that leaves its
``slot``:
- 429 or 503 with Retry-After: no new request to the host starts until then (capped by
  ``retry_after_max``); requests already under way finish, queued ones wait, and so do those
  that held a slot asleep for their token when the pause began.
- 429 or 503 without Retry-After, or ``FAILURE_RUN`` timeouts/resets in a row: the host's limit
  becomes half of what it had in flight then (its limit or fewer; floor 1), as TCP halves its
  flight size: halving a limit of 128 with 4 in flight would change nothing. Only requests
  started after the previous halving count, so one burst of answers to requests sent under the
  old limit halves it once, as TCP does once per window.
- any other answer below 500 (a success, a redirect, a 404), while the host has its whole
  limit in flight: after as many such answers
  as the limit, the limit grows by one, up to ``per_host``. A limit the host does not reach
  does not grow, so it cannot creep up past what the host was shown to take.

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

    def refund(self) -> None:
        """Give back a token taken but not used: the requests already waiting keep their turn
        and the next taker gets this one's."""
        self._tokens = min(self._capacity, self._tokens + 1.0)


class _HostState:
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
        """Above ``limit`` for a while after a halving: the requests already sent finish."""
        self.users = 0
        """Tasks holding or awaiting a slot: the state may be dropped only when none is left."""
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.bucket = _TokenBucket(rps) if rps else None
        self.credit = 0
        """Answers toward the next slot, reset by a change of the limit: a grown limit must be
        used as long again before it grows further."""
        self.failures = 0
        self.lowered_at = float("-inf")
        self.not_before = 0.0
        """A later Retry-After moves it without a new timer: ``_resume`` re-arms for it."""
        self.resume: asyncio.TimerHandle | None = None
        """Also what says the host is paused (not None), so the timer and the flag cannot
        disagree."""


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
        self._hosts: dict[str, _HostState] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()
        """Hosts remembered without users, in the order they are to be forgotten."""

    def in_use(self, host: str) -> bool:
        """Whether a request to ``host`` holds or awaits one of its slots now."""
        state = self._hosts.get(host)
        return state is not None and state.users > 0

    def slot(self, host: str) -> _Slot:
        """``async with limiter.slot(host):`` holds one of the host's slots; the exception
        leaving the block, if any, is the outcome the host's limit and pause learn from."""
        return _Slot(self, host)

    async def _acquire(self, host: str) -> _HostState:
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _HostState(self._per_host, self._rps)
        else:
            self._idle.pop(host, None)
        state.users += 1
        started = time.monotonic()
        await self._hold(host, state)
        while state.bucket is not None and (wait := state.bucket.delay()) > 0:
            try:
                await asyncio.sleep(wait)
            except BaseException as exc:
                self._release(host, state, exc, started)
                raise
            if state.resume is None:
                break
            # paused while it slept: it gives back its token and its slot and waits in line
            state.bucket.refund()
            state.active -= 1
            await self._hold(host, state)
        waited = time.monotonic() - started
        if waited > 0.001:
            metrics.HOST_WAIT.labels(self._host_labels(host)).inc(waited)
        return state

    async def _hold(self, host: str, state: _HostState) -> None:
        """A task cancelled while it waits stops counting as the host's user."""
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

    async def _queue(self, state: _HostState) -> None:
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

    def _admit(self, state: _HostState) -> None:
        while state.waiters and state.active < state.limit and state.resume is None:
            future = state.waiters.popleft()
            if not future.done():  # a cancelled waiter's future is done
                state.active += 1
                future.set_result(None)

    def _release(
        self, host: str, state: _HostState, outcome: BaseException | None, started: float
    ) -> None:
        self._learn(host, state, outcome, started)  # while the request still counts in flight
        state.active -= 1
        self._admit(state)
        self._leave(host, state)

    def _leave(self, host: str, state: _HostState) -> None:
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

    def _forgettable(self, state: _HostState) -> bool:
        """Nothing learnt about the host is left to keep: a fresh state would be the same."""
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
        self, host: str, state: _HostState, outcome: BaseException | None, started: float
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

    def _answered(self, host: str, state: _HostState) -> None:
        """Additive increase: one more slot after as many answers as the limit, counting the
        answers that came while the host used its whole limit."""
        state.failures = 0
        if state.limit >= self._per_host or state.active < state.limit:
            return
        state.credit += 1
        if state.credit >= state.limit:
            state.credit = 0
            state.limit += 1
            self._show_limit(host, state.limit)

    def _lower(self, host: str, state: _HostState, started: float) -> bool:
        """Multiplicative decrease of what the host has in flight, once for the requests
        sent under the same limit."""
        if started < state.lowered_at or state.limit == 1:
            return False
        state.lowered_at = time.monotonic()
        state.credit = 0
        state.limit = max(1, min(state.limit, state.active) // 2)
        metrics.HOST_HALVINGS.labels(self._host_labels(host)).inc()
        self._show_limit(host, state.limit)
        return True

    def _pause(self, host: str, state: _HostState, seconds: float) -> bool:
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

    def _resume(self, host: str, state: _HostState) -> None:
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
        self._state: _HostState | None = None
        self._started = 0.0

    async def __aenter__(self) -> None:
        self._state = await self._limiter._acquire(self._host)
        self._started = time.monotonic()

    async def __aexit__(self, _type: object, outcome: BaseException | None, _tb: object) -> None:
        assert self._state is not None
        self._limiter._release(self._host, self._state, outcome, self._started)
