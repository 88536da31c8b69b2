"""Prometheus metrics of one daemon process (a library process on a worker, or the local engine).

Every metric lives in one registry per process (``REGISTRY``). Label values are bounded: result
statuses come from the closed set in ``contract.Status``, HTTP responses are grouped by class
(2xx, 3xx, ...), and the ``host`` label only names hosts from ``BoundedHostLabels``'s allow-list
or its first ``max_hosts`` hosts; every other host is reported as ``other``.

``start_metrics_server`` exposes the registry on ``/metrics`` (once per process, from the library
context); ``watch_workspace`` makes every scrape report the shard file system's free space.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import socket
import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import psutil
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)

from .contract import ALL_STATUSES

log = logging.getLogger(__name__)


def new_registry() -> CollectorRegistry:
    """A registry with the process collectors (process_cpu_seconds_total, RSS, open fds, ...)."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


REGISTRY = new_registry()

# Image downloads take from a few milliseconds (same rack) to tens of seconds (slow origins).
DOWNLOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SHARD_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600, 7200)

IMAGES = Counter(
    "ldawt_images",
    "Rows finished by the daemon, by result status (ok or a failure code).",
    ["status"],
    registry=REGISTRY,
)
DOWNLOAD_BYTES = Counter(
    "ldawt_download_bytes", "Body bytes received, all attempts included.", registry=REGISTRY
)
REQUEST_DURATION = Histogram(
    "ldawt_request_duration_seconds",
    "Duration of one HTTP attempt, from sending the request to the end of the body.",
    buckets=DOWNLOAD_BUCKETS,
    registry=REGISTRY,
)
TIME_TO_FIRST_BYTE = Histogram(
    "ldawt_time_to_first_byte_seconds",
    "Time from sending a request to receiving the response headers.",
    buckets=DOWNLOAD_BUCKETS,
    registry=REGISTRY,
)
IN_FLIGHT = Gauge("ldawt_requests_in_flight", "HTTP requests under way.", registry=REGISTRY)
RETRIES = Counter(
    "ldawt_retries",
    "Attempts that were retried, by the reason of the retry.",
    ["reason"],
    registry=REGISTRY,
)
HTTP_RESPONSES = Counter(
    "ldawt_http_responses",
    "HTTP responses received, by status class (1xx..5xx).",
    ["code_class"],
    registry=REGISTRY,
)
HOST_WAIT = Counter(
    "ldawt_host_wait_seconds",
    "Time spent waiting for a per-host politeness slot or token, by host (bounded set).",
    ["host"],
    registry=REGISTRY,
)
HOST_RESPONSES = Counter(
    "ldawt_host_responses",
    "HTTP responses by host (bounded set) and status class, to spot throttling origins.",
    ["host", "code_class"],
    registry=REGISTRY,
)
SHARDS_STARTED = Counter("ldawt_shards_started", "Shards started.", registry=REGISTRY)
SHARDS_FINISHED = Counter(
    "ldawt_shards_finished",
    "Shards finished, by outcome (done or failed).",
    ["outcome"],
    registry=REGISTRY,
)
SHARD_DURATION = Histogram(
    "ldawt_shard_duration_seconds",
    "Wall time of one shard.",
    buckets=SHARD_BUCKETS,
    registry=REGISTRY,
)
CONNECTIONS = Counter(
    "ldawt_connections",
    "Connections used for requests, by kind: new (a fresh TCP/TLS connection) or reused (warm).",
    ["kind"],
    registry=REGISTRY,
)
BUFFERED_BYTES = Gauge(
    "ldawt_buffered_bytes", "Image bytes held in memory waiting to be written.", registry=REGISTRY
)
WORKSPACE_FREE = Gauge(
    "ldawt_workspace_free_bytes", "Free disk space where shards are written.", registry=REGISTRY
)
WORKSPACE_SIZE = Gauge(
    "ldawt_workspace_size_bytes",
    "Total size of the file system where shards are written.",
    registry=REGISTRY,
)
ROBOTS_TXT = Counter(
    "ldawt_robots_txt_fetches",
    "robots.txt files loaded, by outcome: parsed, absent (4xx: all allowed) or unreachable "
    "(5xx, timeout, connection error: all disallowed for the run). Its HTTP responses are not "
    "in ldawt_http_responses, which counts image requests.",
    ["outcome"],
    registry=REGISTRY,
)
for _outcome in ("parsed", "absent", "unreachable"):
    ROBOTS_TXT.labels(_outcome)  # exported at zero from the start
HOST_THROTTLED = Counter(
    "ldawt_host_throttled_responses",
    "HTTP 429 (Too Many Requests) responses by host (bounded set).",
    ["host"],
    registry=REGISTRY,
)
HOSTS_PAUSED = Gauge(
    "ldawt_hosts_paused",
    "Hosts paused now: a 429 or 503 with Retry-After stopped new requests to them until then.",
    registry=REGISTRY,
)
HOST_PAUSES = Counter(
    "ldawt_host_pauses",
    "Host-wide pauses started by a 429 or 503 with Retry-After, by host (bounded set).",
    ["host"],
    registry=REGISTRY,
)
HOST_HALVINGS = Counter(
    "ldawt_host_limit_halvings",
    "Halvings of a host's concurrency limit (429/503 without Retry-After, or a run of "
    "timeouts and resets), by host (bounded set).",
    ["host"],
    registry=REGISTRY,
)
HOST_LIMIT = Gauge(
    "ldawt_host_concurrency_limit",
    "A host's current limit on requests in flight (--per-host until it pushes back), for the "
    "hosts with a label of their own whose limit changed.",
    ["host"],
    registry=REGISTRY,
)
LIBRARY_START = Gauge(
    "ldawt_library_start_time_seconds",
    "Unix time at which this daemon (library process) started.",
    registry=REGISTRY,
)
LIBRARY_CALLS = Counter(
    "ldawt_library_calls", "Shard calls served by this daemon process.", registry=REGISTRY
)

OTHER_HOST = "other"

# Series exist (at 0) from the first scrape, so rate() and increase() see the first increments.
for _outcome in ("done", "failed"):
    SHARDS_FINISHED.labels(_outcome)
NEW_CONNECTIONS = CONNECTIONS.labels("new")
REUSED_CONNECTIONS = CONNECTIONS.labels("reused")
for _class in ("1xx", "2xx", "3xx", "4xx", "5xx"):
    HTTP_RESPONSES.labels(_class)


def _preinitialize_statuses() -> None:
    for status in ALL_STATUSES:
        image_series(status)


class BoundedHostLabels:
    """Maps host names to a bounded set of label values.

    Hosts in ``allow`` always get their own label; otherwise the first ``max_hosts`` hosts seen
    get one and all later hosts share ``other``, so the number of series stays bounded however
    many hosts a job touches.
    """

    def __init__(self, allow: frozenset[str] = frozenset(), max_hosts: int = 20) -> None:
        self._allow = allow
        self._max_hosts = max_hosts
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, host: str) -> str:
        if host in self._allow or host in self._seen:
            return host
        with self._lock:
            if len(self._seen) < self._max_hosts:
                self._seen.add(host)
                return host
        return OTHER_HOST


def code_class(status: int) -> str:
    """``404`` -> ``4xx``."""
    return f"{status // 100}xx"


def mark_library_start() -> None:
    LIBRARY_START.set(time.time())


def observe_response(host: str, status: int) -> None:
    """Count one HTTP response; ``host`` must already be a label from a ``BoundedHostLabels``."""
    for series in _response_series(host, status):
        series.inc()


@functools.cache
def _response_series(host: str, status: int) -> tuple[Counter, ...]:
    """The series one response counts in. ``labels()`` costs microseconds, so they are looked up
    once per host label and status; both sets are bounded (``BoundedHostLabels``, HTTP codes)."""
    cls = code_class(status)
    series = [HTTP_RESPONSES.labels(cls), HOST_RESPONSES.labels(host, cls)]
    if status == 429:
        series.append(HOST_THROTTLED.labels(host))
    return tuple(series)


@functools.cache
def image_series(status: str) -> Counter:
    """``IMAGES``'s series of one row status (a closed set), looked up once."""
    return IMAGES.labels(status)


def watch_workspace(path: str | os.PathLike[str]) -> None:
    """Report the free and total bytes of the file system holding ``path``.

    Nothing is measured now: each scrape makes one ``statvfs`` call per gauge, so calling this
    at every shard start is free. A path that vanished reads as NaN rather than failing the scrape.
    """
    where = os.fspath(path)

    def free() -> float:
        try:
            return float(psutil.disk_usage(where).free)
        except OSError:
            return math.nan

    def size() -> float:
        try:
            return float(psutil.disk_usage(where).total)
        except OSError:
            return math.nan

    WORKSPACE_FREE.set_function(free)
    WORKSPACE_SIZE.set_function(size)


# --- HTTP exposition -------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _server_class(address: str, port: int) -> type[WSGIServer]:
    infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family = infos[0][0]

    class _Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = family

    return _Server


def serve_registry(
    registry: CollectorRegistry, address: str, port: int, port_range: int = 1
) -> WSGIServer:
    """Serve ``registry`` over HTTP (``/metrics``) from a daemon thread.

    Tries ``port``, ``port + 1``, ... ``port + port_range - 1`` and uses the first one that is not
    in use (port 0 asks the kernel for any free port). Returns the running server; its port is
    ``server.server_port``. Raises ``OSError`` when every port of the range is in use.
    """
    app = make_wsgi_app(registry)
    tries = 1 if port == 0 else max(1, port_range)
    for candidate in range(port, port + tries):
        try:
            httpd = make_server(
                address,
                candidate,
                app,
                server_class=_server_class(address, candidate),
                handler_class=_QuietHandler,
            )
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            log.warning("metrics port %s:%d is in use, trying the next one", address, candidate)
            continue
        thread = threading.Thread(
            target=httpd.serve_forever, args=(0.1,), name="ldawt-metrics", daemon=True
        )
        thread.start()
        return httpd
    raise OSError(
        errno.EADDRINUSE,
        f"no free metrics port on {address} in {port}..{port + tries - 1}",
    )


def stop_server(httpd: WSGIServer) -> None:
    httpd.shutdown()
    httpd.server_close()


class Endpoint:
    """This process's one ``/metrics`` server for a registry: ``start`` serves it (later calls
    return the port already serving), ``stop`` ends it."""

    def __init__(self, registry: CollectorRegistry, name: str) -> None:
        self._registry = registry
        self._name = name
        self._server: WSGIServer | None = None
        self._lock = threading.Lock()

    def start(self, address: str, port: int, port_range: int) -> int:
        with self._lock:
            if self._server is None:
                self._server = serve_registry(self._registry, address, port, port_range)
                log.info("%s metrics on %s:%d", self._name, address, self._server.server_port)
            return self._server.server_port

    def stop(self) -> None:
        with self._lock:
            if self._server is not None:
                stop_server(self._server)
                self._server = None


_ENDPOINT = Endpoint(REGISTRY, "daemon")


def start_metrics_server(address: str, port: int, port_range: int) -> int:
    """Expose this process's ``REGISTRY`` on ``http://address:port/metrics``; return the port.

    ``port_range`` is how many consecutive ports to try from ``port``. Meant to be called once
    per process (the library context); later calls return the port already serving.
    """
    _preinitialize_statuses()
    return _ENDPOINT.start(address, port, port_range)


def stop_metrics_server() -> None:
    """Stop the server started by ``start_metrics_server`` (tests, clean shutdown)."""
    _ENDPOINT.stop()
