"""The measured clients: how each one is launched and how its output is counted.

Each row of the benchmark is a :class:`Job` (a command line, its environment and a counter of
its output). To change how ldawt is called, edit :func:`ldawt_command` only.
"""

from __future__ import annotations

import json
import os
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".tif", ".tiff", ".heic", ".avif")
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass
class Counted:
    """What a client produced: images written (or received), their bytes, rows accounted."""

    ok: int
    bytes: int
    accounted: int | None = None  # rows present in the client's own per-row records
    detail: str = ""


@dataclass
class Job:
    """One benchmark row."""

    name: str
    profile: str  # "plain", "tls", "hosts" or a transform profile
    cmd: list[str]
    env: dict[str, str]
    out_dir: Path
    rows: int
    count: Callable[[Job], Counted]
    timeout_s: float
    is_img2dataset: bool = False
    is_ldawt: bool = False
    notes: list[str] = field(default_factory=list)
    inspect: Callable[[Path], object] | None = None
    """Transform profiles: reads what the row stored (transform_check.Stored) from out_dir."""
    variant: str = ""
    """ldawt: the row's extra arguments ("--workers 1"), to pair it with the baseline's."""
    baseline: str = ""
    """ldawt: the baseline revision this row measures ("" = the revision under test)."""
    dns_check: Callable[[Path], int | None] | None = None
    """Many-host profile: the row's dns_error count for names that resolve (from out_dir)."""

    @property
    def log_dir(self) -> Path:
        """stdout.txt / stderr.txt of the run (outside out_dir: img2dataset owns that one)."""
        return self.out_dir.parent / "logs" / self.out_dir.name


def base_env() -> dict[str, str]:
    """The clients' environment: no proxies, no phoning home, loopback only."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        NO_ALBUMENTATIONS_UPDATE="1",  # albumentations (an img2dataset dep) checks for updates
        WANDB_MODE="disabled",
        WANDB_SILENT="true",
        PYTHONUNBUFFERED="1",
    )
    return env


def count_tars(out_dir: Path) -> Counted:
    """Image members and their bytes over every tar under ``out_dir``."""
    ok = nbytes = 0
    for path in sorted(out_dir.rglob("*.tar")):
        with tarfile.open(path) as tf:
            for m in tf:
                if m.isfile() and m.name.lower().endswith(IMAGE_EXTS):
                    ok += 1
                    nbytes += m.size
    return Counted(ok, nbytes)


# ---------------------------------------------------------------- bare aiohttp client


def bare_job(
    name: str, profile: str, urls: Path, out_dir: Path, rows: int, *, tar: bool, cafile: Path | None
) -> Job:
    cmd = [sys.executable, str(BENCH_DIR / "bare_client.py"), "--input", str(urls)]
    cmd += ["--concurrency", "256"]
    if tar:
        cmd += ["--tar", str(out_dir / "bare.tar")]
    if cafile:
        cmd += ["--cafile", str(cafile)]
    return Job(name, profile, cmd, base_env(), out_dir, rows, _count_bare, timeout_s=300)


def _count_bare(job: Job) -> Counted:
    import json

    lines = (job.log_dir / "stdout.txt").read_text().strip().splitlines()
    res = json.loads(lines[-1]) if lines else {"ok": 0, "bytes": 0, "failed": {"no output": 1}}
    detail = f"failed {res['failed']}" if res.get("failed") else ""
    if (job.out_dir / "bare.tar").exists():
        in_tar = count_tars(job.out_dir)
        if in_tar.ok != res["ok"]:
            detail += f" tar holds {in_tar.ok} images, client said {res['ok']}"
        return Counted(in_tar.ok, in_tar.bytes, None, detail.strip())
    return Counted(res["ok"], res["bytes"], None, detail)


# ---------------------------------------------------------------- img2dataset 1.47


def img2dataset_job(
    name: str,
    profile: str,
    img2dataset_bin: Path,
    urls: Path,
    out_dir: Path,
    rows: int,
    *,
    cert_file: Path | None,
    shard_size: int,
    resize: tuple[str, int] | None = None,
) -> Job:
    """img2dataset's row. Without ``resize``, the original bytes (``--resize_mode no
    --disable_all_reencoding True``); with (mode, size), ``--resize_mode MODE --image_size SIZE``
    and its defaults otherwise (re-encoded as JPEG quality 95)."""
    if resize:
        resizing = ["--resize_mode", resize[0], "--image_size", str(resize[1])]
    else:
        resizing = ["--resize_mode", "no", "--disable_all_reencoding", "True"]
    cmd = [
        str(img2dataset_bin),
        "--url_list", str(urls),
        "--input_format", "parquet",
        "--url_col", "photo_url",
        "--caption_col", "taxon_name",
        "--output_format", "webdataset",
        "--output_folder", str(out_dir),
        "--processes_count", "2",
        "--thread_count", "64",
        *resizing,
        "--number_sample_per_shard", str(shard_size),
        "--timeout", "30",
        "--retries", "0",
        "--enable_wandb", "False",
        "--distributor", "multiprocessing",
    ]  # fmt: skip
    env = base_env()
    if cert_file:
        env["SSL_CERT_FILE"] = str(cert_file)
    return Job(
        name, profile, cmd, env, out_dir, rows, _count_img2dataset, 1800, is_img2dataset=True
    )


def _count_img2dataset(job: Job) -> Counted:
    import json

    import pyarrow.parquet as pq

    counted = count_tars(job.out_dir)
    stats = [json.loads(p.read_text()) for p in job.out_dir.glob("*_stats.json")]
    successes = sum(s.get("successes", 0) for s in stats)
    errors: dict[str, int] = {}
    for s in stats:
        for k, v in (s.get("status_dict") or {}).items():
            if k != "success":
                errors[k] = errors.get(k, 0) + v
    accounted = sum(pq.ParquetFile(p).metadata.num_rows for p in job.out_dir.glob("*.parquet"))
    detail = "" if successes == counted.ok else f"stats say {successes} successes"
    if errors:
        detail = (detail + f" errors {errors}").strip()
    return Counted(counted.ok, counted.bytes, accounted, detail)


def cert_bundle_with_system_cas(cert: Path, work: Path) -> Path:
    """The test certificate followed by the system CA bundle (img2dataset's realistic case)."""
    out = work / "test-cert-plus-system-cas.pem"
    out.write_bytes(cert.read_bytes() + b"\n" + SYSTEM_CA_BUNDLE.read_bytes())
    return out


# ---------------------------------------------------------------- ldawt


PER_HOST = 256


def ldawt_command(
    ldawt_bin: Path,
    urls: Path,
    out_dir: Path,
    *,
    concurrency: int = 256,
    ca_file: Path | None = None,
    engine: str = "local",
    local_workers: int = 2,
    extra: list[str] | None = None,
) -> list[str]:
    """The ldawt-manager command line of one benchmark row (the one place to adapt)."""
    cmd = [
        str(ldawt_bin), "submit", str(urls),
        "--out", str(out_dir),
        "--allow-private",
        "--url-col", "photo_url",
        "--class-col", "taxon_name",
        "--key-col", "photo_id",
        "--concurrency", str(concurrency),
        # The origin is one host, and --per-host holds for the whole job: 256 keeps the default
        # row's two processes at 128 each, as when --per-host (128) was per process, and lets
        # the one-process row reach its 256 in flight. A --ldawt-baseline-rev from before
        # job-wide limits reads it per process (two processes: up to 512 in flight).
        "--per-host", str(PER_HOST),
    ]  # fmt: skip
    if ca_file:  # profile 2: trust only the test certificate (verification stays on)
        cmd += ["--ca-file", str(ca_file)]
    cmd += ["--engine", engine]  # explicit: "auto" would pick TaskVine where ndcctools imports
    if engine == "taskvine":
        cmd += ["--local-workers", str(local_workers)]
    return cmd + list(extra or [])


def ldawt_job(
    name: str,
    profile: str,
    ldawt_bin: Path,
    urls: Path,
    out_dir: Path,
    rows: int,
    *,
    cert_file: Path | None,
    engine: str,
    local_workers: int,
    extra: list[str],
) -> Job:
    cmd = ldawt_command(
        ldawt_bin,
        urls,
        out_dir,
        ca_file=cert_file,
        engine=engine,
        local_workers=local_workers,
        extra=extra,
    )
    return Job(name, profile, cmd, base_env(), out_dir, rows, _count_ldawt, 1800, is_ldawt=True)


def _ldawt_connections(out_dir: Path) -> str:
    """The connections ldawt opened and reused for its rows, from the shards' stats files."""
    stats = [json.loads(p.read_text()) for p in out_dir.rglob("*_stats.json")]
    new = sum(s.get("connections_new", 0) for s in stats)
    reused = sum(s.get("connections_reused", 0) for s in stats)
    return f"connections: {new:,} new, {reused:,} reused"


def _count_ldawt(job: Job) -> Counted:
    """Rows and successes from the manifests, images from the tars; they must agree."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    manifests = sorted(job.out_dir.rglob("*.manifest.parquet"))
    in_tars = count_tars(job.out_dir)
    if not manifests:
        return Counted(in_tars.ok, in_tars.bytes, 0, "no *.manifest.parquet found")
    accounted = ok = 0
    statuses: dict[str, int] = {}
    for path in manifests:
        t = pq.read_table(path, columns=["status"])
        accounted += t.num_rows
        for row in pc.value_counts(t.column("status")).to_pylist():
            statuses[row["values"]] = statuses.get(row["values"], 0) + row["counts"]
    ok = statuses.pop("ok", 0)
    detail = f"failed {statuses}" if statuses else ""
    detail = f"{detail} {_ldawt_connections(job.out_dir)}".strip()
    if ok != in_tars.ok:
        detail = f"{detail} manifests say {ok} ok, tars hold {in_tars.ok} images".strip()
    return Counted(in_tars.ok, in_tars.bytes, accounted, detail)
