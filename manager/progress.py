"""A progress display for long jobs: a one-line bar on a terminal, periodic log lines
otherwise (CI logs, nohup, systemd)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any, TextIO

from ldawt.daemon.fetcher import errors

TTY_INTERVAL_S = 0.5
LOG_INTERVAL_S = 15.0


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Rows and shards of one run. Rows are counted as engines report them (in-shard deltas,
    or only the final result when an engine cannot see inside a shard); rows of a shard that
    fails are taken back, since the shard runs again."""

    def __init__(
        self,
        total_rows: int,
        total_shards: int,
        stream: TextIO = sys.stderr,
        done_rows: int = 0,
        done_shards: int = 0,
    ) -> None:
        self.total_rows = total_rows
        self.total_shards = total_shards
        self.rows = done_rows
        self.shards = done_shards
        self.ok = 0
        self.failed = 0
        self.bytes = 0
        self.note = ""
        self._stream = stream
        self._tty = stream.isatty()
        self._started = time.monotonic()
        self._session_rows = 0
        self._last_render = 0.0
        self._seen: dict[str, Counter[str]] = {}
        self._seen_bytes: Counter[str] = Counter()

    def add(self, delta: dict[str, Any]) -> None:
        """Count a progress delta (``counts`` status -> rows, ``bytes``) from a running shard.
        A delta without a shard (``shard_id`` None) sets the engine's ``note`` instead."""
        if delta["shard_id"] is None:
            self.note = delta.get("note", "")
            self.render(force=True)
            return
        counts = delta.get("counts", {})
        self._seen.setdefault(delta["shard_id"], Counter()).update(counts)
        self._seen_bytes[delta["shard_id"]] += delta.get("bytes", 0)
        self._count(counts, delta.get("bytes", 0))
        self.render()

    def _count(self, counts: dict[str, int], nbytes: int) -> None:
        for status, n in counts.items():
            self.rows += n
            self._session_rows += n
            if status in errors.SUCCESSES:
                self.ok += n
            else:
                self.failed += n
        self.bytes += nbytes

    def shard_finished(self, result: dict[str, Any], committed: bool) -> None:
        seen = self._seen.pop(result["shard_id"], Counter())
        seen_bytes = self._seen_bytes.pop(result["shard_id"], 0)
        if committed:
            rest = Counter(result.get("counts", {}))
            rest.subtract(seen)
            # downloaded bytes stay counted either way: they measure the transfer rate
            self._count(dict(+rest), max(0, result.get("bytes", 0) - seen_bytes))
            self.shards += 1
        else:
            self._count({status: -n for status, n in seen.items()}, 0)
        self.render()

    def eta_seconds(self) -> float | None:
        """Seconds left at this session's rate; None before anything was counted."""
        rate = self._session_rows / max(1e-6, time.monotonic() - self._started)
        remaining = max(0, self.total_rows - self.rows)
        return remaining / rate if rate > 0 else None

    def line(self) -> str:
        elapsed = max(1e-6, time.monotonic() - self._started)
        rate = self._session_rows / elapsed
        eta_s = self.eta_seconds()
        eta = format_duration(eta_s) if eta_s else "-"
        fail = 100.0 * self.failed / self.rows if self.rows else 0.0
        share = self.rows / self.total_rows if self.total_rows else 1.0
        bar = "#" * int(share * 20)
        mb_per_s = self.bytes / elapsed / 1e6
        text = (
            f"[{bar:<20}] {self.rows:,}/{self.total_rows:,} rows  "
            f"{self.shards}/{self.total_shards} shards  {rate:,.0f} img/s  {mb_per_s:,.1f} MB/s  "
            f"failed {fail:.1f}%  ETA {eta}"
        )
        return f"{text}  {self.note}" if self.note else text

    def render(self, force: bool = False) -> None:
        now = time.monotonic()
        interval = TTY_INTERVAL_S if self._tty else LOG_INTERVAL_S
        if not force and now - self._last_render < interval:
            return
        self._last_render = now
        if self._tty:
            self._stream.write("\r\x1b[2K" + self.line())
        else:
            self._stream.write(self.line() + "\n")
        self._stream.flush()

    def close(self) -> None:
        self.render(force=True)
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()
