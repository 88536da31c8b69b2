"""Valid JPEG files of any size, made without an imaging library, for the offline demo origin
and the tests' origin: a tiny real JPEG with comment (COM) segments of seeded random bytes
inserted after its start marker. Decoders skip COM segments, so every file is a real JPEG."""

from __future__ import annotations

import base64
import hashlib
import random

_BASE_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAoHBwgHBgoICAgLCgoLDhgQDg0NDh0VFhEYIx8lJCIfIiEmKzcvJik0KSEi"
    "MEExNDk7Pj4+JS5ESUM8SDc9Pjv/2wBDAQoLCw4NDhwQEBw7KCIoOzs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7"
    "Ozs7Ozs7Ozs7Ozs7Ozs7Ozs7Ozv/wAARCAAYACADASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcI"
    "CQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRol"
    "JicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ip"
    "qrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAA"
    "AAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLR"
    "ChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaX"
    "mJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEA"
    "PwDzuGw9q0IbD2rWhsPar8Nh7V69TFnNgsdtqZMNh7VfhsPateGw9qvw2HtXnVMWfZ4LHbaleGw9qvw2HtRRXmVKkj8e"
    "wVaehfhsPar8Nh7UUV51WpI+zwVaeh//2Q=="
)
_MAX_SEGMENT_PAYLOAD = 65533  # a segment's 2-byte length field counts itself


def make_jpeg(seed: str, size: int) -> bytes:
    """A valid JPEG of about ``size`` bytes (at least the base image), the same for the same
    seed and size."""
    rng = random.Random(hashlib.sha256(seed.encode()).digest())
    padding = max(0, size - len(_BASE_JPEG))
    segments = []
    while padding > 4:
        payload = min(_MAX_SEGMENT_PAYLOAD, padding - 4)
        segments.append(b"\xff\xfe" + (payload + 2).to_bytes(2, "big") + rng.randbytes(payload))
        padding -= payload + 4
    return _BASE_JPEG[:2] + b"".join(segments) + _BASE_JPEG[2:]
