"""The local engine's shared DNS cache (``daemon/fetcher/dnsshare.py``) seen from a worker process:
lookup failures cross the socket as the same exception with the same errno, and a worker whose
server is gone resolves by itself. The whole path, two worker processes against a real DNS
server, is ``test_many_hosts_dns.py``."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from dns_server import Unbound, Zone, in_namespace, unbound_missing

from ldawt.daemon.fetcher.dns import NO_SUCH_NAME
from ldawt.daemon.fetcher.dnsshare import SharedDnsCache, SocketResolver

SERVE = """\
import sys
from ldawt.daemon.fetcher.dnsshare import SharedDnsCache
with SharedDnsCache() as path:
    print(path, flush=True)
    sys.stdin.read()
"""
DOMAIN = "share.test"
ADDRESS = "127.62.0.1"
WAIT_S = 30


async def _resolve(path: str, host: str) -> list[str]:
    resolver = SocketResolver(path)
    try:
        return [answer["host"] for answer in await resolver.resolve(host, 80, socket.AF_UNSPEC)]
    finally:
        await resolver.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a private mount namespace)")
@pytest.mark.skipif(unbound_missing() is not None, reason=str(unbound_missing()))
def test_no_such_name_comes_back_through_the_socket_as_gaierror_with_its_errno(
    tmp_path: Path,
) -> None:
    ok, missing = f"ok.{DOMAIN}", f"missing.{DOMAIN}"
    zone = Zone(DOMAIN, {ok: ADDRESS}, {missing})
    address = f"127.53.{os.getpid() % 250 + 1}.251"
    with Unbound(zone, tmp_path / "dns", address) as dns:
        # the server resolves in a namespace whose resolv.conf names unbound; this test's process
        # (the "worker") only talks to its socket
        server = subprocess.Popen(
            in_namespace([sys.executable, "-c", SERVE], dns.resolv_conf),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "TMPDIR": str(tmp_path)},
        )
        try:
            assert server.stdout is not None
            path = server.stdout.readline().strip()
            assert path.startswith(str(tmp_path)), path
            assert asyncio.run(_resolve(path, ok)) == [ADDRESS]
            for _ in range(2):  # the second from the server's cache: unbound is not asked again
                with pytest.raises(socket.gaierror) as failure:
                    asyncio.run(_resolve(path, missing))
                assert failure.value.errno in NO_SUCH_NAME
                assert type(failure.value) is socket.gaierror
            queries = dns.queries()
        finally:
            server.communicate("", timeout=WAIT_S)
    assert server.returncode == 0
    assert queries[missing] <= 2 and queries[ok] <= 2, queries
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))


def test_a_worker_resolves_by_itself_once_the_server_is_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def lookups(path: str) -> list[list[str]]:
        resolver = SocketResolver(path)
        try:
            return [
                [answer["host"] for answer in await resolver.resolve("localhost", port)]
                for port in (80, 81, 82)
            ]
        finally:
            await resolver.close()

    with SharedDnsCache() as path:
        assert asyncio.run(lookups(path)) == [["127.0.0.1"]] * 3
    assert not caplog.records
    assert not os.path.exists(path)
    with caplog.at_level(logging.WARNING):
        assert asyncio.run(lookups(path)) == [["127.0.0.1"]] * 3  # /etc/hosts, in this process
    [warning] = [r.getMessage() for r in caplog.records]
    assert f"the shared DNS cache at {path} did not answer" in warning
    assert "resolves names itself" in warning
