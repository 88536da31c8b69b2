"""Checking downloaded bytes against the hash an input column gives (``--verify-hash-col``)."""

from __future__ import annotations

import hashlib
import string

# Hex digest length -> hash: SHA-256 or MD5, the two that URL lists carry.
DIGESTS = {64: "sha256", 32: "md5"}


def hash_mismatch(body: bytes, expected: str) -> str | None:
    """Why ``body`` does not match ``expected`` (hex SHA-256 or MD5, any case), or None when it
    does."""
    wanted = expected.strip().lower()
    name = DIGESTS.get(len(wanted))
    if name is None or not set(wanted) <= set(string.hexdigits.lower()):
        return f"expected hash {expected!r} is neither a hex SHA-256 (64 digits) nor MD5 (32)"
    actual = hashlib.new(name, body).hexdigest()
    if actual != wanted:
        return f"{name} is {actual}, the input says {wanted}"
    return None
