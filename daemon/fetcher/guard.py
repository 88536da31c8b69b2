"""Which addresses a download may reach, checked on every resolution and every redirect hop."""

from __future__ import annotations

import functools
import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult

from .dns import CachingResolver
from .errors import BlockedAddressError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_refusal(address: IPAddress, allow_private: bool) -> str | None:
    """Why ``address`` may not be fetched from, or None when it may.

    Link-local addresses (169.254.0.0/16 holds the cloud metadata services, fe80::/10) are always
    refused; loopback and private ranges only unless ``allow_private``.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_link_local:
        return f"{address} is link-local (cloud metadata range)"
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return f"{address} is not a unicast host address"
    if not allow_private and (address.is_loopback or address.is_private):
        return f"{address} is loopback or private (allow with --allow-private)"
    return None


def literal_address(host: str) -> IPAddress | None:
    """The address when ``host`` is an IP literal (aiohttp does not resolve those)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def host_refusal(host: str, allow_private: bool) -> str | None:
    """Why a URL's ``host`` may not be fetched from when it is a forbidden IP literal; None
    for host names (the resolver checks those) and allowed addresses. Cached per host: parsing
    raises for every host name, and the range checks of an address take microseconds."""
    address = literal_address(host)
    return None if address is None else address_refusal(address, allow_private)


class GuardedResolver(AbstractResolver):
    """Resolves names, then drops forbidden addresses; fails when none is left."""

    def __init__(self, allow_private: bool, inner: AbstractResolver | None = None) -> None:
        self._allow_private = allow_private
        self._inner = inner or CachingResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed: list[ResolveResult] = []
        refusals: list[str] = []
        for result in results:
            refusal = address_refusal(ipaddress.ip_address(result["host"]), self._allow_private)
            if refusal is None:
                allowed.append(result)
            else:
                refusals.append(refusal)
        if not allowed:
            raise BlockedAddressError(f"{host} resolves only to refused addresses: {refusals}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
