"""A row's members in the shard's tar: its image under a safe unique name and, in the
webdataset layout, its ``.json`` and ``.cls`` beside it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .names import MemberNamer
from .tarwriter import TarWriter

SIZE_FIELDS = ("width", "height", "orig_width", "orig_height")
"""The image sizes a webdataset ``.json`` carries, as the manifest does."""


class MemberPacker:
    """Names a row's members and queues them for the tar writer thread."""

    def __init__(self, writer: TarWriter, layout: str) -> None:
        self._writer = writer
        self._namer = MemberNamer(layout)
        self._webdataset = layout == "webdataset"

    def add(
        self,
        row: dict[str, Any],
        image: bytes,
        extension: str,
        outcome: dict[str, Any],
        released: Callable[[], None],
    ) -> None:
        """Queue ``image`` for ``row``; the writer thread calls ``released()`` once it is done
        with the bytes, written or not. Sets ``outcome["member"]`` now."""
        stem = self._namer.stem(row["class"], row["key"])
        member = f"{stem}.{extension}"
        outcome["member"] = member
        self._writer.add(member, image, released)
        if self._webdataset:
            meta = {k: row[k] for k in ("key", "url", "class", "label")}
            meta.update({k: outcome.get(k) for k in SIZE_FIELDS})
            self._writer.add(f"{stem}.json", json.dumps(meta, ensure_ascii=False).encode())
            self._writer.add(f"{stem}.cls", str(row["label"]).encode())
