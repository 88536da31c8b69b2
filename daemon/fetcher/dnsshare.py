"""One DNS cache for all of the local engine's worker processes (issue 12).

Each worker process has its own ``CachingResolver``: with two of them a host cost two lookups
(four queries: getaddrinfo asks A and AAAA). With more than one worker process, one more
process (``serve_until_closed``) serves one ``CachingResolver`` on a Unix socket
(:class:`SharedDnsCache`), and each worker's cache asks it through :class:`SocketResolver`
instead of calling getaddrinfo itself; caching and coalescing are the same code on both sides.

One request per connection: a JSON line ``{"host", "port", "family"}``, answered by a JSON line
``{"answer": [ResolveResult, ...]}`` or ``{"error": [kind, errno, message]}``. An error is raised
again in the worker as the same type (``socket.gaierror`` or ``OSError``) with the same errno,
so the worker's cache keeps it as long and its rows get the same status. A worker that cannot
reach the server (gone, refused, no readable answer) warns once and then resolves by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
from multiprocessing.connection import Connection
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from .dns import CachingResolver

log = logging.getLogger(__name__)

REPLY_TIMEOUT_S = 60.0
"""Longer than getaddrinfo's own worst case under resolv.conf's limits (5 s x 2 attempts x 3
servers): the server is slow only when the lookup is."""
GAIERROR = "gaierror"
SERVER_ERRORS = (OSError, ValueError, KeyError, TypeError)
"""Talking to the server failed, or its reply was not one this module writes."""


class SharedDnsCache:
    """A ``CachingResolver`` served on a Unix socket by a thread running its own event loop.

    The socket lives in a private temporary folder (mode 0700, a short path: ``sun_path`` holds
    108 bytes, and a job folder may be deep or on a network filesystem). As a context manager it
    gives the socket's path, and stops the server and removes the folder on leaving.
    """

    def __init__(self) -> None:
        self._folder = tempfile.mkdtemp(prefix="ldawt-dns-")
        self.path = os.path.join(self._folder, "dns.sock")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ldawt-dns-cache", daemon=True
        )
        self._resolver: CachingResolver | None = None
        self._server: asyncio.AbstractServer | None = None

    def __enter__(self) -> str:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        except BaseException:
            self.__exit__()
            raise
        return self.path

    def __exit__(self, *exc: object) -> None:
        try:
            if self._loop.is_running():
                asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            if not self._thread.is_alive():
                self._loop.close()
            shutil.rmtree(self._folder, ignore_errors=True)

    async def _start(self) -> None:
        self._resolver = CachingResolver(ThreadedResolver())
        self._server = await asyncio.start_unix_server(self._answer, path=self.path)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._resolver is not None:
            await self._resolver.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._resolver is not None
        try:
            request = json.loads(await reader.readline())
            try:
                family = socket.AddressFamily(int(request["family"]))
                answer = await self._resolver.resolve(request["host"], int(request["port"]), family)
                reply: dict[str, Any] = {"answer": answer}
            except OSError as exc:
                reply = {"error": _encode_error(exc)}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except SERVER_ERRORS:
            pass  # the client went away or sent no request: it resolves by itself
        finally:
            writer.close()


def serve_until_closed(connection: Connection) -> None:
    """Serve a ``SharedDnsCache`` until ``connection``'s other end is closed (a process's
    body). Sends ``("serving", path)`` first, or ``("failed", reason)`` when it cannot start."""
    # Ctrl-C reaches the whole process group: the manager stops this process by closing the pipe
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with SharedDnsCache() as path:
            connection.send(("serving", path))
            with contextlib.suppress(EOFError, OSError):
                connection.recv()
    except (OSError, TimeoutError) as exc:
        with contextlib.suppress(OSError):
            connection.send(("failed", str(exc)))


class SocketResolver(AbstractResolver):
    """Asks the :class:`SharedDnsCache` at ``path``; resolves with ``fallback`` (getaddrinfo in
    threads by default) once the server could not be reached, warning once."""

    def __init__(self, path: str, fallback: AbstractResolver | None = None) -> None:
        self._path = path
        self._fallback = fallback or ThreadedResolver()
        self._reachable = True

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._reachable:
            try:
                reply = await asyncio.wait_for(self._ask(host, port, family), REPLY_TIMEOUT_S)
            except SERVER_ERRORS as exc:  # TimeoutError is an OSError
                self._unreachable(exc)
            else:
                if isinstance(reply, OSError):
                    raise reply
                return reply
        return await self._fallback.resolve(host, port, family)

    async def _ask(
        self, host: str, port: int, family: socket.AddressFamily
    ) -> list[ResolveResult] | OSError:
        reader, writer = await asyncio.open_unix_connection(self._path)
        try:
            request = {"host": host, "port": port, "family": int(family)}
            writer.write(json.dumps(request).encode() + b"\n")
            line = await reader.readline()
        finally:
            writer.close()
        return _decode_reply(json.loads(line))

    def _unreachable(self, exc: Exception) -> None:
        if self._reachable:
            self._reachable = False
            log.warning(
                f"the shared DNS cache at {self._path} did not answer "
                f"({type(exc).__name__}: {exc}); this process now resolves names itself"
            )

    async def close(self) -> None:
        await self._fallback.close()


def _encode_error(exc: OSError) -> list[Any]:
    kind = GAIERROR if isinstance(exc, socket.gaierror) else "OSError"
    return [kind, exc.errno, exc.strerror or str(exc)]


def _decode_reply(reply: dict[str, Any]) -> list[ResolveResult] | OSError:
    if "error" in reply:
        kind, errno, message = reply["error"]
        error_type = socket.gaierror if kind == GAIERROR else OSError
        return error_type(message) if errno is None else error_type(int(errno), str(message))
    return [
        ResolveResult(
            hostname=str(entry["hostname"]),
            host=str(entry["host"]),
            port=int(entry["port"]),
            family=int(entry["family"]),
            proto=int(entry["proto"]),
            flags=int(entry["flags"]),
        )
        for entry in reply["answer"]
    ]
