"""The job ledger: one SQLite database (WAL) per job, the single source of truth for progress.

Shard states: ``planned`` (not yet run, or to be run again), ``running`` (handed to an engine),
``done`` (committed and verified) and ``failed`` (the last attempt failed; run again by the next
``submit``). Every change is one transaction, so a manager killed at any moment leaves the ledger
consistent; a ``running`` shard then simply runs again.

Rows of retry rounds replace earlier outcomes of the same input rows: a retry shard records the
statuses its rows had before (``replaces``), which the totals subtract once the shard is done.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import JobStopped

PLANNED, RUNNING, DONE, FAILED = "planned", "running", "done", "failed"
STATES = (PLANNED, RUNNING, DONE, FAILED)
# The ledger shares its disk with the shard outputs. A reserve file, given up when the disk is
# full, leaves room to record what already happened; then the run stops (``reserve_used``).
RESERVE_SUFFIX = ".reserve"
RESERVE_BYTES = 256 * 1024
FULL_RETRIES = 5
FULL_RETRY_DELAY_S = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shards (
    shard_id TEXT PRIMARY KEY,
    input_path TEXT NOT NULL,
    round INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('planned', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    started_at REAL,
    finished_at REAL,
    elapsed_s REAL,
    bytes INTEGER,
    tar_bytes INTEGER,
    counts TEXT,
    replaces TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS shards_state ON shards (state);
"""


@dataclass(frozen=True)
class ShardRecord:
    shard_id: str
    input_path: str
    """Relative to the job's output folder."""
    round: int
    rows: int
    state: str
    attempts: int
    worker: str | None
    started_at: float | None
    finished_at: float | None
    elapsed_s: float | None
    bytes: int | None
    tar_bytes: int | None
    counts: dict[str, int] = field(default_factory=dict)
    replaces: dict[str, int] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Committed:
    """What the manager verified on disk for a shard the daemon reported committed."""

    counts: dict[str, int]
    bytes: int
    tar_bytes: int
    elapsed_s: float | None
    worker: str | None
    started_at: float | None


class LedgerFull(JobStopped, OSError):
    """The ledger's disk stayed full; the ledger is unchanged by the write that failed."""


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        # isolation_level=None: transactions are explicit (``_write``)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self.reserve_path = path.with_name(path.name + RESERVE_SUFFIX)
        self.reserve_used = False
        self._keep_reserve()

    def _keep_reserve(self) -> None:
        if self.reserve_path.exists():
            return
        try:
            self.reserve_path.write_bytes(bytes(RESERVE_BYTES))
        except OSError:  # no room for it now; a later run makes it
            self.reserve_path.unlink(missing_ok=True)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, work: Callable[[sqlite3.Connection], object]) -> None:
        """Run ``work`` in one transaction, retried a few times while the disk is full."""
        for attempt in range(FULL_RETRIES + 1):
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    work(self._db)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # a failed COMMIT may have rolled back already
                        self._db.execute("ROLLBACK")
                    raise
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                    raise
                if attempt == FULL_RETRIES:
                    raise LedgerFull(
                        f"cannot write the ledger {self.path}: {exc}; the ledger is consistent "
                        "and nothing committed is lost: free some space and rerun the same command"
                    ) from exc
            if self.reserve_path.exists():
                self.reserve_path.unlink()
                self.reserve_used = True
            else:
                time.sleep(FULL_RETRY_DELAY_S)

    # --- the job ---

    def meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row["value"])

    def set_meta(self, values: dict[str, Any]) -> None:
        self._write(lambda db: self._put_meta(db, values))

    @staticmethod
    def _put_meta(db: sqlite3.Connection, values: dict[str, Any]) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [(k, json.dumps(v, sort_keys=True)) for k, v in values.items()],
        )

    def add_shards(
        self,
        shards: Iterable[tuple[str, str, int]],
        round_: int,
        meta: dict[str, Any],
        replaces: dict[str, dict[str, int]] | None = None,
    ) -> None:
        """Record planned shards ``(shard_id, input_path, rows)`` and ``meta`` in one
        transaction, so a plan is either wholly recorded or not at all."""
        replaces = replaces or {}
        records = [
            (sid, path, round_, rows, json.dumps(replaces.get(sid, {})))
            for sid, path, rows in shards
        ]

        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO shards (shard_id, input_path, round, rows, state, replaces) "
                "VALUES (?, ?, ?, ?, 'planned', ?)",
                records,
            )
            self._put_meta(db, meta)

        self._write(work)

    # --- shard states: what an engine loop calls ---

    def mark_running(self, shard_ids: Iterable[str]) -> None:
        """The shards were handed to an engine (one more attempt each)."""
        now = time.time()
        records = [(now, sid) for sid in shard_ids]
        self._write(
            lambda db: db.executemany(
                "UPDATE shards SET state = 'running', attempts = attempts + 1, started_at = ?, "
                "error = NULL WHERE shard_id = ? AND state != 'done'",
                records,
            )
        )

    def mark_done(self, shard_id: str, committed: Committed) -> None:
        self._write(
            lambda db: db.execute(
                "UPDATE shards SET state = 'done', finished_at = ?, elapsed_s = ?, bytes = ?, "
                "tar_bytes = ?, counts = ?, worker = COALESCE(?, worker), "
                "started_at = COALESCE(?, started_at), error = NULL WHERE shard_id = ?",
                (
                    time.time(),
                    committed.elapsed_s,
                    committed.bytes,
                    committed.tar_bytes,
                    json.dumps(committed.counts, sort_keys=True),
                    committed.worker,
                    committed.started_at,
                    shard_id,
                ),
            )
        )

    def mark_failed(self, shard_id: str, error: str, worker: str | None = None) -> None:
        now = time.time()
        self._write(
            lambda db: db.execute(
                "UPDATE shards SET state = 'failed', finished_at = ?, error = ?, "
                "worker = COALESCE(?, worker) WHERE shard_id = ?",
                (now, error, worker, shard_id),
            )
        )

    def mark_planned(self, shard_ids: Iterable[str]) -> None:
        """Run these shards again (their outputs did not verify, or they never finished)."""
        records = [(sid,) for sid in shard_ids]
        self._write(
            lambda db: db.executemany(
                "UPDATE shards SET state = 'planned', counts = NULL, bytes = NULL, "
                "tar_bytes = NULL WHERE shard_id = ?",
                records,
            )
        )

    # --- reading ---

    def shards(self, states: Iterable[str] | None = None) -> list[ShardRecord]:
        query = "SELECT * FROM shards"
        args: tuple[str, ...] = ()
        if states is not None:
            args = tuple(states)
            query += f" WHERE state IN ({','.join('?' * len(args))})"
        rows = self._db.execute(query + " ORDER BY round, shard_id", args).fetchall()
        return [_record(row) for row in rows]

    def state_counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) AS n FROM shards GROUP BY state")
        counts = dict.fromkeys(STATES, 0)
        counts.update({row["state"]: row["n"] for row in rows})
        return counts

    def status_counts(self) -> Counter[str]:
        """Rows by their latest outcome, over committed shards."""
        totals: Counter[str] = Counter()
        for shard in self.shards([DONE]):
            totals.update(shard.counts)
            totals.subtract(shard.replaces)
        return +totals


def _record(row: sqlite3.Row) -> ShardRecord:
    values = dict(row)
    values["counts"] = json.loads(values["counts"] or "{}")
    values["replaces"] = json.loads(values["replaces"] or "{}")
    return ShardRecord(**values)
