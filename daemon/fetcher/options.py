"""Fetch settings: one frozen, JSON-able record that travels inside every shard spec."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..records import known_fields

USER_AGENT = "ldawt/0.1 (image dataset downloader)"
AGENT_TOKEN = "ldawt"
"""ldawt's product token: robots.txt groups and X-Robots-Tag directives addressed to it apply."""
DEFAULT_DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
"""img2dataset's default ``--disallowed_header_directives``."""
ROBOTS_MODES = ("obey", "ignore")


@dataclass(frozen=True)
class FetchOptions:
    concurrency: int = 256
    """Requests in flight per daemon process (all shards together)."""
    per_host: int = 128
    """Requests in flight per host, for the whole job: the manager gives each running shard
    some of a large host's units (``ShardSpec.host_shares``), and each process also holds
    itself to it. 128 across the fleet suits the object-store hosts that serve most of a large
    URL list, which take many parallel requests; it also caps how many shards of one host run
    at once (one unit each): lower it for small origins, with ``--group-by-host`` when a host's
    rows spread over many shards."""
    host_rps: float | None = None
    """Optional requests/second per host, for the whole job like ``per_host``: the running
    shards send on the instants of the host's common wall-clock schedule that their units own
    (``contract.HostShare``); each process also holds itself to it with a token bucket, burst
    of one second."""
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    """Longest stall between two reads of one response."""
    total_timeout: float = 120.0
    """Deadline for one attempt, redirects included."""
    retries: int = 3
    """Retries after the first attempt, for retryable failures only."""
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 60.0
    """Longest wait granted to a server's Retry-After (a 429 or 503 with one pauses its whole
    host in the process that long at most)."""
    max_bytes: int = 50 * 1024 * 1024
    max_buffered_bytes: int = 32 * 1024 * 1024
    """Image bytes held in memory (downloaded, not yet written) before new reads wait."""
    max_redirects: int = 10
    allow_private: bool = False
    """Allow loopback and private addresses (tests, benchmarks, intranet origins)."""
    tls_verify: bool = True
    ca_file: str | None = None
    user_agent: str = USER_AGENT
    user_agent_token: str | None = None
    """A contact (URL or address) appended to the user agent as img2dataset's
    ``--user_agent_token`` does (``<agent> (compatible; <token>; +<its project URL>)``); ldawt
    has no public project page to name, so the header is ``<agent> (compatible; <token>)``."""
    disallowed_header_directives: tuple[str, ...] = DEFAULT_DISALLOWED_DIRECTIVES
    """``X-Robots-Tag`` directives that opt a response out (row status ``opted_out``, body not
    read); empty to disable the check."""
    robots: str = "obey"
    """``obey``: robots.txt is fetched once per host and applied; ``ignore``: it is not."""
    dns_socket: str | None = None
    """The Unix socket of the local engine's shared DNS cache (``fetcher/dnsshare.py``), set by the
    local engine when it runs more than one worker process, so that a host is looked up once
    for all of them; the process's own cache asks it, and resolves by itself when it cannot be
    reached. None (TaskVine workers, one local process): the process resolves by itself."""

    def __post_init__(self) -> None:
        directives = self.disallowed_header_directives
        if isinstance(directives, str):
            directives = directives.split(",")
        normal = tuple(d.strip().lower() for d in directives if d and d.strip())
        object.__setattr__(self, "disallowed_header_directives", normal)
        token = (self.user_agent_token or "").strip() or None
        object.__setattr__(self, "user_agent_token", token)
        if self.robots not in ROBOTS_MODES:
            raise ValueError(f"robots must be one of {ROBOTS_MODES}, not {self.robots!r}")

    @property
    def agent_header(self) -> str:
        """The User-Agent header sent: the honest agent, with the contact token when given."""
        if not self.user_agent_token:
            return self.user_agent
        return f"{self.user_agent} (compatible; {self.user_agent_token})"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FetchOptions:
        return cls(**known_fields(cls, values, "fetch option"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def session_key(self) -> tuple[Any, ...]:
        """The fields that shape the connection pool and the per-host limits; shards that agree
        on them share one."""
        return (
            self.concurrency,
            self.per_host,
            self.host_rps,
            self.retry_after_max,
            self.allow_private,
            self.tls_verify,
            self.ca_file,
            self.user_agent,
            self.user_agent_token,
            self.max_buffered_bytes,
            self.dns_socket,
        )
