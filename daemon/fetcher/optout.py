"""Sites' opt-outs: ``X-Robots-Tag`` response headers and robots.txt (RFC 9309).

``is_opted_out`` reads the headers of an image response before its body is read, as
img2dataset's ``is_disallowed`` does. ``RobotsCache`` fetches each origin's robots.txt once per
process (concurrent rows of one origin wait for a single fetch), keeps the parsed rules in an
LRU, and answers whether ldawt's agent may fetch a URL. Google-style ``*`` and ``$`` wildcards
are understood (``protego``; ``urllib.robotparser`` has neither).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from protego import Protego
from yarl import URL

from .. import metrics
from ..contract import Status
from .options import AGENT_TOKEN

VALUED_DIRECTIVES = frozenset(
    {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
)
"""Directives written ``name: value``: their name is not a user agent token."""
EXPANSIONS = {"none": ("noindex", "nofollow")}
"""Google's ``none`` is ``noindex, nofollow``."""


def _directives(value: str) -> tuple[str | None, list[str]]:
    """(the user agent the header value addresses or None, its directive names, lower case)."""
    agent: str | None = None
    head, colon, rest = value.partition(":")
    name = head.strip().lower()
    if colon and name and "," not in name and " " not in name and name not in VALUED_DIRECTIVES:
        agent, value = name, rest
    names: list[str] = []
    for part in value.split(","):
        directive = part.split(":", 1)[0].strip().lower()
        if directive:
            names.extend(EXPANSIONS.get(directive, (directive,)))
    return agent, names


def is_opted_out(
    values: Iterable[str], disallowed: Iterable[str], user_agent_token: str | None = None
) -> str | None:
    """The offending ``X-Robots-Tag`` value when one of ``values`` (every such header of a
    response) holds a ``disallowed`` directive addressed to everyone, to ldawt or to the user's
    ``user_agent_token``; None otherwise."""
    wanted = frozenset(disallowed)
    if not wanted:
        return None
    ours = {AGENT_TOKEN}
    if user_agent_token:
        ours.add(user_agent_token.strip().lower())
    for value in values:
        agent, names = _directives(value)
        if (agent is None or agent in ours) and wanted.intersection(names):
            return value.strip()
    return None


ROBOTS_CACHE_SIZE = 10_000
"""Origins whose robots.txt rules a process keeps (least recently used dropped first)."""
ROBOTS_TTL_S = 24 * 3600.0
"""RFC 9309: a cached robots.txt should not be used for more than 24 hours."""
ROBOTS_MAX_BYTES = 512 * 1024
"""RFC 9309: crawlers must parse at least 500 KiB; the rest is ignored."""


@dataclass(slots=True, frozen=True)
class RobotsRules:
    """One origin's robots.txt outcome."""

    parser: Protego | None
    """The rules (None: everything allowed, or everything disallowed when ``unreachable``)."""
    unreachable: str | None = None
    """Why robots.txt could not be loaded (5xx, timeout, connection error): all disallowed."""
    status: str = Status.ROBOTS_DISALLOWED
    """The rows' status when unreachable: robots_disallowed, or the load's own failure when
    the host cannot be fetched from at all (dns_error, blocked_address)."""
    fetched_at: float = field(default_factory=time.monotonic)

    def refusal(self, url: URL, agent: str) -> tuple[str, str] | None:
        """(status, detail) when ``agent`` may not fetch ``url``; None when it may."""
        if self.unreachable is not None:
            return (
                self.status,
                f"robots.txt unreachable ({self.unreachable}): disallowed for this run",
            )
        if self.parser is not None and not self.parser.can_fetch(str(url), agent):
            return Status.ROBOTS_DISALLOWED, f"disallowed for {agent} by {robots_url(url)}"
        return None


def robots_url(url: URL) -> URL:
    return url.origin().with_path("/robots.txt")


class RobotsCache:
    """Per-process robots.txt rules by origin. ``rules(url, load)`` calls ``load()`` (which
    applies the fetcher's per-host limits and address guard, and turns failures into rules) only
    when the origin is neither cached nor being loaded by another task."""

    def __init__(self, size: int = ROBOTS_CACHE_SIZE) -> None:
        self._size = size
        self._rules: OrderedDict[URL, RobotsRules] = OrderedDict()
        self._loading: dict[URL, asyncio.Future[RobotsRules]] = {}

    async def rules(self, url: URL, load: Callable[[], Awaitable[RobotsRules]]) -> RobotsRules:
        origin = url.origin()
        cached = self._rules.get(origin)
        if cached is not None and time.monotonic() - cached.fetched_at < ROBOTS_TTL_S:
            self._rules.move_to_end(origin)
            return cached
        while (pending := self._loading.get(origin)) is not None:
            try:
                return await asyncio.shield(pending)
            except _Abandoned:
                continue  # its loader was cancelled: load it here
        future: asyncio.Future[RobotsRules] = asyncio.get_running_loop().create_future()
        self._loading[origin] = future
        try:
            rules = await load()
        except BaseException:
            del self._loading[origin]
            future.set_exception(_Abandoned())
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        del self._loading[origin]
        self._rules[origin] = rules
        self._rules.move_to_end(origin)
        while len(self._rules) > self._size:
            self._rules.popitem(last=False)
        future.set_result(rules)
        metrics.ROBOTS_TXT.labels(_outcome(rules)).inc()
        return rules


class _Abandoned(Exception):
    """The task loading a robots.txt stopped before it had an answer."""


def _outcome(rules: RobotsRules) -> str:
    if rules.unreachable is not None:
        return "unreachable"
    return "parsed" if rules.parser is not None else "absent"
