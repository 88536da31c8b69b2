"""What the manager shows a person: log lines and, while shards run, a progress display.

Every message goes through ``logging`` (``configure_logging`` once per command, ``--quiet`` and
``--verbose`` set the level) and reads ``ldawt: ...``, ``ldawt: warning: ...`` or ``ldawt: error:
...`` on stderr. On a terminal the progress display is one line that the log lines
pass above; elsewhere (CI logs, nohup, systemd) it is a log line every ``LOG_INTERVAL_S``.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TextIO

from ldawt.daemon.contract import SUCCESSES, ProgressDelta, ShardResult, Status

TTY_INTERVAL_S = 0.5
LOG_INTERVAL_S = 15.0
BAR_WIDTH = 20
CLEAR_LINE = "\r\x1b[2K"
LOGGER = "ldawt"
"""The logger above every ldawt module's (``-v`` shows its debugging messages)."""


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


PREFIX = "ldawt: "


def level_tag(levelno: int) -> str:
    """What follows the prefix: nothing for INFO, the level's name otherwise."""
    if levelno >= logging.ERROR:
        return "error: "
    if levelno >= logging.WARNING:
        return "warning: "
    return "" if levelno >= logging.INFO else "debug: "


class ConsoleFormatter(logging.Formatter):
    """``ldawt: message``, ``ldawt: warning: message``, ``ldawt: error: message``. The further
    lines of a message (a list of differences; a traceback under ``-v``) keep the ``ldawt: ``
    prefix, so every line says where it comes from, among a worker's or a shell's output."""

    def format(self, record: logging.LogRecord) -> str:
        first, *rest = super().format(record).split("\n")
        return "\n".join(
            [f"{PREFIX}{level_tag(record.levelno)}{first}"] + [PREFIX + r for r in rest]
        )


class ConsoleHandler(logging.StreamHandler):
    """Log lines on stderr (``ConsoleFormatter``) that keep a live progress line below them."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.setFormatter(ConsoleFormatter())
        self.display: ProgressDisplay | None = None

    def emit(self, record: logging.LogRecord) -> None:
        display = self.display
        if display is not None and display.live:
            self.stream.write(CLEAR_LINE)
        super().emit(record)
        if display is not None and display.live:
            display.render(force=True)


_handler: ConsoleHandler | None = None


# Libraries that log routine steps at INFO: shown from -vv only.
CHATTY_LIBRARIES = ("botocore", "aiobotocore", "s3fs", "fsspec")


def configure_logging(verbosity: int = 0, stream: TextIO | None = None) -> None:
    """Route log records to ``stream`` (stderr) through one ``ConsoleHandler``: warnings and
    errors only with ``verbosity`` < 0 (``--quiet``, which also hides the progress display),
    also progress and summaries at 0, also ldawt's debugging messages at 1 (``-v``) and every
    library's at 2 (``-vv``)."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = ConsoleHandler(stream or sys.stderr)
    root.addHandler(_handler)
    root.setLevel(
        logging.WARNING if verbosity < 0 else logging.INFO if verbosity < 2 else logging.DEBUG
    )
    logging.getLogger(LOGGER).setLevel(logging.DEBUG if verbosity >= 1 else logging.NOTSET)
    for name in CHATTY_LIBRARIES:  # e.g. botocore's "Found credentials in ..." at INFO
        logging.getLogger(name).setLevel(logging.WARNING if verbosity < 2 else logging.NOTSET)


@contextmanager
def command_logging() -> Iterator[None]:
    """Logging configured for one command (``configure_logging``; call it again to change the
    verbosity), and as it was before once the command ends: ``cli.main`` may run in a process
    that logs otherwise (tests, a program embedding it)."""
    global _handler
    root, ours = logging.getLogger(), logging.getLogger(LOGGER)
    levels = root.level, ours.level
    configure_logging()
    try:
        yield
    finally:
        if _handler is not None:
            root.removeHandler(_handler)
            _handler = None
        root.setLevel(levels[0])
        ours.setLevel(levels[1])


def progress_shown() -> bool:
    """Whether a progress display should be shown (not under ``--quiet``)."""
    return logging.getLogger().isEnabledFor(logging.INFO)


class ProgressDisplay:
    """Rows and shards of one run, counted as engines report them (in-shard deltas, or only the
    final result when an engine cannot see inside a shard); rows of a shard that fails are
    taken back, since the shard runs again.

    ``total_rows`` is the job's rows and ``counts`` the rows that already have an outcome, by
    status (the ledger's latest outcomes, less the rows about to run again): the display then
    agrees with the summary and ``report`` at every moment, whatever earlier runs did.
    """

    def __init__(
        self,
        total_rows: int,
        total_shards: int,
        counts: Mapping[str, int] | None = None,
        done_shards: int = 0,
        stream: TextIO | None = None,
    ) -> None:
        self.total_rows = total_rows
        self.total_shards = total_shards
        self.ok = sum(n for status, n in (counts or {}).items() if status in SUCCESSES)
        self.failed = sum(n for status, n in (counts or {}).items() if status not in SUCCESSES)
        self.rows = self.ok + self.failed
        self.shards = done_shards
        self.bytes = 0
        self.images = 0
        """Images downloaded in this run (status ok): what img/s counts."""
        self.note = ""
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._shown = progress_shown()
        self.live = False
        """A progress line is on the terminal now (log lines must pass above it)."""
        self._started = time.monotonic()
        self._session_rows = 0
        self._last_render = 0.0
        self._seen: dict[str, Counter[str]] = {}
        self._seen_bytes: Counter[str] = Counter()

    def __enter__(self) -> ProgressDisplay:
        if _handler is not None and _handler.stream is self._stream:
            _handler.display = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        if _handler is not None and _handler.display is self:
            _handler.display = None

    def add(self, delta: ProgressDelta) -> None:
        """Count a progress delta (``counts`` status -> rows, ``bytes``) from a running shard.
        A delta without a shard (``shard_id`` None) sets the engine's ``note`` instead."""
        shard_id = delta.get("shard_id")
        if shard_id is None:
            note = delta.get("note", "")
            if note and note != self.note:
                logging.getLogger(__name__).info(note)
            self.note = note
            self.render(force=True)
            return
        counts = delta.get("counts", {})
        self._seen.setdefault(shard_id, Counter()).update(counts)
        self._seen_bytes[shard_id] += delta.get("bytes", 0)
        self._count(counts, delta.get("bytes", 0))
        self.render()

    def _count(self, counts: Mapping[str, int], nbytes: int) -> None:
        for status, n in counts.items():
            self.rows += n
            self._session_rows += n
            if status in SUCCESSES:
                self.ok += n
                if status == Status.OK:
                    self.images += n
            else:
                self.failed += n
        self.bytes += nbytes

    def shard_finished(self, result: ShardResult, committed: bool) -> None:
        shard_id = result["shard_id"] or ""
        seen = self._seen.pop(shard_id, Counter())
        seen_bytes = self._seen_bytes.pop(shard_id, 0)
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
        """Seconds left at this run's rate; None before anything was counted."""
        rate = self._session_rows / max(1e-6, time.monotonic() - self._started)
        remaining = max(0, self.total_rows - self.rows)
        return remaining / rate if rate > 0 else None

    def fields(self) -> list[tuple[int, str]]:
        """The line's fields in display order, each with its rank: the lowest ranks go first
        when the terminal is too narrow."""
        elapsed = max(1e-6, time.monotonic() - self._started)
        eta_s = self.eta_seconds()
        share = min(1.0, self.rows / self.total_rows) if self.total_rows else 1.0
        fail = 100.0 * self.failed / self.rows if self.rows else 0.0
        bar = "#" * int(share * BAR_WIDTH)
        fields = [
            (9, f"[{bar:<{BAR_WIDTH}}] {self.rows:,}/{self.total_rows:,} rows"),
            (3, f"{self.shards}/{self.total_shards} shards"),
            (5, f"{self.images / elapsed:,.0f} img/s"),
            (2, f"{self.bytes / elapsed / 1e6:,.1f} MB/s"),
            (7, f"failed {fail:.1f}%"),
            (8, f"ETA {format_duration(eta_s) if eta_s else '-'}"),
        ]
        if self.note:
            fields.append((1, self.note))
        return fields

    def line(self, width: int | None = None) -> str:
        """The progress line, at most ``width`` characters when given."""
        fields = self.fields()
        text = "  ".join(value for _, value in fields)
        if width is None:
            return text
        for rank in sorted({rank for rank, _ in fields}):
            if len(text) <= width:
                break
            fields = [(r, value) for r, value in fields if r != rank]
            text = "  ".join(value for _, value in fields)
        return text[:width]

    def render(self, force: bool = False) -> None:
        if not self._shown:
            return
        now = time.monotonic()
        interval = TTY_INTERVAL_S if self._tty else LOG_INTERVAL_S
        if not force and now - self._last_render < interval:
            return
        self._last_render = now
        if self._tty:
            # one column short: a full line would wrap on some terminals
            width = shutil.get_terminal_size().columns - 1
            self._stream.write(CLEAR_LINE + self.line(width))
            self.live = True
        else:
            self._stream.write(self.line() + "\n")
        self._stream.flush()

    def close(self) -> None:
        self.render(force=True)
        if self._tty and self.live:
            self._stream.write("\n")
            self._stream.flush()
        self.live = False
