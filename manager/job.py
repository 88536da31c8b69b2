"""The job folder: where a job's description, shard inputs and ledger live, and who may use it.

``OUT/job/job.json`` describes the job for people (inputs with size and mtime, columns, options,
ldawt version, plan figures); the ledger keeps the same description's fingerprint, which a
resumed ``submit`` must match.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from ldawt.daemon.contract import FetchOptions, ShardFiles, ShardSpec, write_text_atomically

from .errors import InputError
from .inputs import ColumnMap, InputFile, carried_columns, list_input_files
from .ledger import RESERVE_SUFFIX, Ledger, ShardRecord
from .plan import PlanOptions

JOB_SUBDIR = "job"
LEDGER_NAME = "ledger.sqlite"
OUTPUT_NAME = "output.json"
# Set in the manager's environment, so worker processes it spawns can be told apart later.
JOB_ENV = "LDAWT_JOB"


def ldawt_version() -> str:
    try:
        return metadata.version("ldawt")
    except metadata.PackageNotFoundError:
        return "unknown"


def describe_inputs(files: list[InputFile]) -> list[dict[str, Any]]:
    """Each input's path (or URL), size and modification time (for a remote input: what its
    filesystem says, size with ETag and modification time when given); see
    ``InputFile.describe``."""
    return [
        (file if isinstance(file, InputFile) else list_input_files(file)[0]).describe()
        for file in files
    ]


@dataclass(frozen=True)
class JobIdentity:
    """What a job is: resuming requires the same inputs, columns and shaping options."""

    inputs: list[dict[str, Any]]
    columns: dict[str, Any]
    options: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "columns": self.columns, "options": self.options}

    @classmethod
    def of(cls, files: list[InputFile], columns: ColumnMap, options: PlanOptions) -> JobIdentity:
        return cls(describe_inputs(files), columns.to_dict(), options.shaping())

    def differences(self, recorded: dict[str, Any]) -> list[str]:
        """Human-readable differences from a recorded identity."""
        found = []
        before = {i["path"]: i for i in recorded["inputs"]}
        now = {i["path"]: i for i in self.inputs}
        for path in sorted(before.keys() - now.keys()):
            found.append(f"input {path} is no longer part of the job")
        for path in sorted(now.keys() - before.keys()):
            found.append(f"input {path} is new")
        for path in sorted(before.keys() & now.keys()):
            if before[path] != now[path]:
                found.append(f"input {path} changed (size or modification time)")
        for section in ("columns", "options"):
            current, kept = self.to_dict()[section], recorded[section]
            # keys of either side: a key recorded only when set (transform, verify_hash) may be
            # absent from this one
            for key in dict.fromkeys([*current, *kept]):
                old, value = kept.get(key), current.get(key)
                if old != value:
                    found.append(f"{section[:-1]} {key}: {old!r} -> {value!r}")
        return found


class Job:
    """A job's local folder ``out`` (``out/job/``: description, shard inputs, ledger; the
    index). Its shard files go into ``out`` too, or to ``output``, an fsspec URL
    (``submit --out s3://... --job-dir OUT``), which ``out/job/output.json`` records for the
    commands that take the folder alone (``status``, ``retry-failed``, ...)."""

    def __init__(
        self,
        out: Path,
        output: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.out = out.resolve()
        self.folder = self.out / JOB_SUBDIR
        self.shard_dir = self.folder / "shards"
        self.spill_dir = self.folder / "tmp"
        self.ledger_path = self.folder / LEDGER_NAME
        self.description_path = self.folder / "job.json"
        self.lock_path = self.folder / "manager.lock"
        self.index_path = self.out / "index.parquet"
        self.output_path = self.folder / OUTPUT_NAME
        if output is None and self.output_path.exists():
            recorded = json.loads(self.output_path.read_text())
            output, storage_options = recorded["url"], recorded.get("storage_options")
        self.output = output
        """The URL of the shard files, or None: they are in ``out``."""
        self.storage_options: dict[str, Any] = dict(storage_options or {})

    @property
    def shard_output(self) -> str:
        """Where shard files go: the output URL or the local folder."""
        return self.output or str(self.out)

    def record_output(self) -> None:
        """Keep the output URL (and its storage options, which may hold credentials: readable
        by the owner only) for the commands that take the job folder alone."""
        if self.output is None:
            self.output_path.unlink(missing_ok=True)
            return
        record = {"url": self.output, "storage_options": self.storage_options}
        write_text_atomically(self.output_path, json.dumps(record, indent=2) + "\n", mode=0o600)

    def exists(self) -> bool:
        return self.ledger_path.exists()

    @classmethod
    def existing(cls, out: Path) -> Job:
        """The job in ``out``; an error when there is none."""
        job = cls(out)
        if not job.exists():
            raise InputError(f"{out} holds no ldawt job (no {job.ledger_path})")
        return job

    def open_ledger(self) -> Ledger:
        self.folder.mkdir(parents=True, exist_ok=True)
        return Ledger(self.ledger_path)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive use of the job by this manager process."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                raise InputError(
                    f"another ldawt-manager (pid {handle.read().strip() or '?'}) is running the "
                    f"job in {self.out}"
                ) from None
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            previous = os.environ.get(JOB_ENV)
            os.environ[JOB_ENV] = str(self.out)
            try:
                yield
            finally:
                if previous is None:
                    del os.environ[JOB_ENV]
                else:
                    os.environ[JOB_ENV] = previous

    def manager_pid(self) -> int | None:
        """The pid of the ldawt-manager running the job now (the process holding ``lock``), or
        None when none is. A non-blocking probe: a shared lock taken and given back at once, so
        it never keeps a manager from starting for longer than the probe itself. 0 when a
        manager holds the lock but has not written its pid yet."""
        try:
            with open(self.lock_path) as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    text = handle.read().strip()
                    return int(text) if text.isdigit() else 0
                fcntl.flock(handle, fcntl.LOCK_UN)
                return None
        except FileNotFoundError:  # no manager ever ran the job here
            return None

    def write_description(self, identity: JobIdentity, extra: dict[str, Any]) -> None:
        description = {"ldawt_version": ldawt_version(), **identity.to_dict(), **extra}
        write_text_atomically(
            self.description_path, json.dumps(description, indent=2, sort_keys=True) + "\n"
        )


@dataclass(frozen=True)
class JobSettings:
    """How a job's shards run: the planning options (layout, compression) it was made with, the
    fetch options and deadline of the current run, and the columns carried into manifests."""

    options: PlanOptions
    passthrough: tuple[str, ...] = ()

    @classmethod
    def load(cls, ledger: Ledger) -> JobSettings:
        """The settings of a planned job, with the fetch options of its latest run."""
        identity, run = ledger.meta("identity"), ledger.meta("run")
        if identity is None or run is None:
            raise InputError(
                f"the job in {ledger.path.parent.parent} was never fully planned; "
                "rerun its submit command"
            )
        options = PlanOptions.from_shaping(
            identity["options"],
            deadline_s=run["deadline_s"],
            fetch=FetchOptions.from_dict(run["fetch"]),
        )
        return cls(options, carried_columns(identity["columns"]))

    def run_meta(self) -> dict[str, Any]:
        """What a run may change from the previous one, kept in the ledger for the next."""
        return {
            "run": {"fetch": self.options.fetch.to_dict(), "deadline_s": self.options.deadline_s}
        }


@dataclass(frozen=True)
class JobRun:
    """A job opened for work: its folder, its ledger and the settings this run uses. What every
    step of ``submit`` and ``retry-failed`` takes."""

    job: Job
    ledger: Ledger
    settings: JobSettings

    def files(self, shard_id: str) -> ShardFiles:
        job = self.job
        return ShardFiles.of(
            job.shard_output, shard_id, self.settings.options.compress, job.storage_options
        )

    def spec(self, shard: ShardRecord) -> ShardSpec:
        """The shard contract's spec for one ledger shard."""
        options = self.settings.options
        return ShardSpec(
            shard_id=shard.shard_id,
            input_path=str(self.job.out / shard.input_path),
            output_dir=self.job.shard_output,
            layout=options.layout,
            compress=options.compress,
            passthrough=self.settings.passthrough,
            fetch=options.fetch,
            transform=options.transform,
            deadline_s=options.deadline_s,
            storage_options=self.job.storage_options,
        )

    def discard(self) -> None:
        """Forget the job: its shard outputs, shard inputs and ledger (``--force-new``)."""
        job = self.job
        for shard in self.ledger.shards():
            self.files(shard.shard_id).remove()
        self.ledger.close()
        for suffix in ("", "-wal", "-shm", RESERVE_SUFFIX):
            Path(f"{job.ledger_path}{suffix}").unlink(missing_ok=True)
        shutil.rmtree(job.shard_dir, ignore_errors=True)
        shutil.rmtree(job.spill_dir, ignore_errors=True)
        job.description_path.unlink(missing_ok=True)
        job.index_path.unlink(missing_ok=True)
