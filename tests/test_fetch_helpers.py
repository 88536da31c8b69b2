"""Pure helpers of the fetcher: Retry-After, backoff, sniffing, the address guard."""

from __future__ import annotations

import email.utils
import ipaddress

import pytest

from ldawt.daemon.contract import ALL_STATUSES, status_for_http
from ldawt.daemon.fetcher.guard import address_refusal, host_refusal
from ldawt.daemon.fetcher.retry import backoff_delay, parse_retry_after
from ldawt.daemon.fetcher.sniff import image_extension


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_backoff_is_full_jitter_and_capped() -> None:
    delays = [backoff_delay(10, base=0.5, cap=4.0) for _ in range(500)]
    assert all(0.0 <= d <= 4.0 for d in delays)
    assert min(delays) < 1.0 < max(delays)
    assert all(0.0 <= backoff_delay(0, 0.5, 30.0) <= 0.5 for _ in range(100))


@pytest.mark.parametrize(
    ("head", "ext"),
    [
        (b"\xff\xd8\xff\xe0", "jpg"),
        (b"\x89PNG\r\n\x1a\n", "png"),
        (b"GIF89a", "gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
        (b"II*\x00", "tif"),
        (b"MM\x00*", "tif"),
        (b"\x00\x00\x00\x1cftypavif", "avif"),
        (b"\x00\x00\x00\x18ftypheic", "heic"),
        (b"BM" + b"\x00" * 20, "bmp"),
        (b"<!doctype html>", None),
        (b"\x00\x00\x00\x18ftypisom", None),
        (b"", None),
    ],
)
def test_sniffing(head: bytes, ext: str | None) -> None:
    assert image_extension(head) == ext


@pytest.mark.parametrize(
    ("address", "allow_private", "refused"),
    [
        ("169.254.169.254", True, True),
        ("fe80::1", True, True),
        ("::ffff:169.254.169.254", True, True),
        ("127.0.0.1", False, True),
        ("127.0.0.1", True, False),
        ("10.1.2.3", False, True),
        ("192.168.0.1", True, False),
        ("0.0.0.0", True, True),
        ("224.0.0.1", True, True),
        ("93.184.216.34", False, False),
        ("2606:4700::1111", False, False),
    ],
)
def test_address_guard(address: str, allow_private: bool, refused: bool) -> None:
    assert (address_refusal(ipaddress.ip_address(address), allow_private) is not None) == refused


@pytest.mark.parametrize(
    ("host", "allow_private", "refused"),
    [
        ("169.254.169.254", True, True),
        ("[fe80::1]", True, True),
        ("[::1]", False, True),
        ("127.0.0.1", False, True),
        ("127.0.0.1", True, False),
        ("images.example.org", False, False),
        ("10.0.0.1.example.org", False, False),
    ],
)
def test_url_hosts_are_refused_as_their_literal_address(
    host: str, allow_private: bool, refused: bool
) -> None:
    """The cached check of a URL's host: IP literals by their range, host names left to the
    resolver's guard; the same answer when asked again (from the cache)."""
    for _ in range(2):
        assert (host_refusal(host, allow_private) is not None) == refused


def test_http_codes_stay_in_the_closed_taxonomy() -> None:
    for status in range(300, 600):
        assert status_for_http(status) in ALL_STATUSES
