"""Tar member names that are always relative, printable, bounded in length and unique."""

from __future__ import annotations

import hashlib
import unicodedata

from ..contract import LAYOUTS

# Most filesystems allow 255 bytes per path component; leave room for "_NN" and the extension.
MAX_COMPONENT_BYTES = 200
_REPLACED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def safe_component(text: object, *, keep_dots: bool = True) -> str:
    """One path component made from arbitrary text: NFC-normalised, with separators, control
    and unassigned characters replaced, never empty, ``.`` or ``..``, at most
    ``MAX_COMPONENT_BYTES`` UTF-8 bytes (a long name keeps a hash of the whole as its tail)."""
    value = "" if text is None else str(text)
    if _plain_ascii(value):  # most names: nothing to normalise or replace
        cleaned = (value if keep_dots else value.replace(".", "_")).strip(" .")
        return cleaned or "_"
    return _cleaned(value, keep_dots)


def _plain_ascii(text: str) -> bool:
    """Printable ASCII without separators, short enough: ``_cleaned`` would only strip it."""
    return (
        text.isascii()
        and text.isprintable()
        and "/" not in text
        and "\\" not in text
        and len(text) <= MAX_COMPONENT_BYTES
    )


def _cleaned(text: str, keep_dots: bool) -> str:
    original = unicodedata.normalize("NFC", text)
    replace_dots = not keep_dots
    cleaned = "".join(
        "_" if _is_unsafe(ch) or (replace_dots and ch == ".") else ch for ch in original
    ).strip(" .")
    if not cleaned:
        cleaned = "_"
    encoded = cleaned.encode("utf-8")
    if len(encoded) > MAX_COMPONENT_BYTES:
        digest = hashlib.sha1(original.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        head = encoded[: MAX_COMPONENT_BYTES - 11].decode("utf-8", "ignore").rstrip(" .")
        cleaned = f"{head}~{digest}"
    return cleaned


def _is_unsafe(ch: str) -> bool:
    return ch in "/\\" or unicodedata.category(ch) in _REPLACED_CATEGORIES


class MemberNamer:
    """Gives every image a unique member stem (the name without extension).

    Layout ``class``: ``<class>/<key>``; layout ``webdataset``: ``<key>`` with dots replaced,
    because webdataset splits a member name at its first dot. Uniqueness is checked without
    regard to case, so the tar also extracts cleanly on case-insensitive filesystems.
    """

    def __init__(self, layout: str) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}: use 'class' or 'webdataset'")
        self.layout = layout
        self._taken: set[str] = set()

    def stem(self, class_name: object, key: object) -> str:
        if self.layout == "class":
            base = f"{safe_component(class_name)}/{safe_component(key)}"
        else:
            base = safe_component(key, keep_dots=False)
        candidate, suffix = base, 0
        while candidate.casefold() in self._taken:
            suffix += 1
            candidate = f"{base}_{suffix}"
        self._taken.add(candidate.casefold())
        return candidate
