"""Frozen settings records that travel as JSON (fetch and transform options, shard specs)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def known_fields(record: type, values: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``values`` as keyword arguments for the dataclass ``record``: a key it does not have is
    an error naming it (a typo in a config or a spec from another ldawt version)."""
    known = {f.name for f in dataclasses.fields(record)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; known: {sorted(known)}")
    return dict(values)
