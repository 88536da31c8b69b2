"""Micro-benchmark: the CPU a tar member costs on its way to disk, by write path.

* ``writev`` - one ``os.writev`` of header, body and padding per member into an ordinary
  (buffered) file, then fsync: ldawt's tar writer before commit eb1ee67;
* ``direct`` - ldawt's ``DirectFile`` (``daemon/packer/directfile.py``): members copied into
  a staging buffer (4 MiB; ``--staging-kib``) written with O_DIRECT, then fsync.

Each run writes ``--images`` images of a bench corpus (``--corpus``, cycled) as one tar in a
fresh child process (its rusage is the figure: user + system CPU per member, fsync included),
and deletes it. The paths take turns, ``--repeat`` rounds; the median and the range are
printed. The file lands in ``--work``/writer, on the disk the bench writes its outputs to.

    .venv/bin/python bench/write_path.py [--images 20000] [--repeat 3]   # needs ldawt importable
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from ldawt.daemon.packer import directfile

BENCH_DIR = Path(__file__).resolve().parent
PATHS = ("writev", "direct")


def _members(images: list[bytes], count: int) -> list[tuple[bytes, bytes, bytes]]:
    mtime = int(time.time())
    members = []
    for index in range(count):
        data = images[index % len(images)]
        info = tarfile.TarInfo(f"class/{index:08d}.jpg")
        info.size, info.mtime, info.mode = len(data), mtime, 0o644
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        members.append((header, data, bytes(-len(data) % tarfile.BLOCKSIZE)))
    return members


def _write(path_kind: str, target: Path, members: list[tuple[bytes, bytes, bytes]]) -> None:
    if path_kind == "writev":
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for parts in members:
                os.writev(fd, [part for part in parts if part])
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    with contextlib.closing(directfile.DirectFile(target)) as file:
        for parts in members:
            file.writev(list(parts))
        file.sync()


def _child(path_kind: str, target: Path, corpus: Path, count: int, staging_kib: int) -> None:
    directfile.STAGING_BYTES = staging_kib << 10  # read by DirectFile at each call
    images = [p.read_bytes() for p in sorted(corpus.glob("*.jpg"))]
    members = _members(images, count)
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    _write(path_kind, target, members)
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
    total = sum(len(p) for parts in members for p in parts)
    os.unlink(target)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    print(json.dumps({"user": user, "system": system, "wall": wall, "bytes": total}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=BENCH_DIR / ".work")
    ap.add_argument(
        "--corpus", default="corpus", help="corpus folder under --work (corpus-small: ~40 KB)"
    )
    ap.add_argument(
        "--staging-kib",
        type=int,
        default=directfile.STAGING_BYTES >> 10,
        help="the direct path's staging buffer, KiB (a multiple of 4)",
    )
    ap.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    corpus, target = args.work / args.corpus / "img", args.work / "writer" / "members.tar"
    if args.child:
        _child(args.child, target, corpus, args.images, args.staging_kib)
        return 0
    if not any(corpus.glob("*.jpg")):
        print(f"no corpus in {corpus}: run bench/run.py once first", file=sys.stderr)
        return 2
    target.parent.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {kind: [] for kind in PATHS}
    for _ in range(args.repeat):
        for kind in PATHS:
            command = [sys.executable, __file__, "--child", kind, "--images", str(args.images)]
            command += ["--work", str(args.work), "--corpus", args.corpus]
            command += ["--staging-kib", str(args.staging_kib)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                print(f"{kind}: {done.stderr.strip()[-400:]}", file=sys.stderr)
                return 1
            runs[kind].append(json.loads(done.stdout))
    mb = runs[PATHS[0]][0]["bytes"] / args.images / 1e3
    print(
        f"{args.images:,} members of {mb:.0f} KB on average, {args.repeat} rounds, fsync included"
    )
    print("| path | CPU us/member (median, range) | of which system | wall s (median) |")
    print("|---|---:|---:|---:|")
    for kind, results in runs.items():
        cpu = [(r["user"] + r["system"]) / args.images * 1e6 for r in results]
        system = statistics.median(r["system"] / args.images * 1e6 for r in results)
        wall = statistics.median(r["wall"] for r in results)
        print(
            f"| {kind} | {statistics.median(cpu):.1f} ({min(cpu):.1f}-{max(cpu):.1f}) "
            f"| {system:.1f} | {wall:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
