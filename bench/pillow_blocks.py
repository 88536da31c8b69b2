"""What the daemon's malloc setting costs the transform stage, and which Pillow setting gives it
back: CPU per image of ldawt's stage on one core, each setting in a fresh process.

    python3 bench/pillow_blocks.py                 # 48 images, border 256 and keep_ratio 512

The daemon pins glibc's mmap threshold at 256 KiB (``runtime.keep_tls_buffers_mapped``), so
every large buffer Pillow allocates is a fresh mapping whose pages fault in. Pillow can keep
freed image blocks for the next image (``Image.core.set_blocks_max``) or allocate images in
blocks smaller than the threshold, which the heap then reuses (``Image.core.set_block_size``).
Settings: no pin (the stage as a plain Python process runs it), the pin alone, the pin with 2
or 8 kept blocks, the pin with 64 KiB blocks (Pillow's default: 16 MiB), and the daemon's own
setting (``runtime.keep_images_on_the_heap``: 64 KiB blocks, 8 kept). The
stage runs in the project's own venv (.venv, which ``bash tests/run.sh`` makes) on the transform
corpus of bench/photos.py (the first images bench/run.py's transform profiles serve), made on
first use in the bench venv.
CPU from getrusage, best of three rounds, so other load on the machine does not count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KIB = 1024
DAEMON = -1
SETTINGS = [  # label, pin, blocks kept, block size (0: Pillow's default; DAEMON: the daemon's)
    ("no pin", False, 0, 0),
    ("pin", True, 0, 0),
    ("pin, 2 blocks kept", True, 2, 0),
    ("pin, 8 blocks kept", True, 8, 0),
    ("pin, 64 KiB blocks", True, 0, 64 * KIB),
    ("pin, the daemon's setting", True, 0, DAEMON),
]
PROFILES = {"border256": ("border", 256), "keep_ratio512": ("keep_ratio", 512)}


def measure(
    pin: bool, blocks: int, block_size: int, mode: str, size: int, paths: list[str]
) -> dict[str, float]:
    """CPU ms and minor page faults per image of the stage under one setting (this process)."""
    from PIL import Image

    from ldawt.daemon.runtime import keep_images_on_the_heap, keep_tls_buffers_mapped
    from ldawt.daemon.transform.options import TransformOptions
    from ldawt.daemon.transform.stage import transform

    if pin:
        keep_tls_buffers_mapped()
    if blocks:
        Image.core.set_blocks_max(blocks)
    if block_size == DAEMON:
        keep_images_on_the_heap()
    elif block_size:
        Image.core.set_block_size(block_size)
    bodies = [Path(p).read_bytes() for p in paths]
    options = TransformOptions.from_dict({"resize_mode": mode, "image_size": size})
    for body in bodies[:4]:
        transform(body, options)
    best: dict[str, float] = {}
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF)
        for body in bodies:
            transform(body, options)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        if not best or cpu * 1000 / len(bodies) < best["cpu_ms"]:
            best = {
                "cpu_ms": cpu * 1000 / len(bodies),
                "faults": (after.ru_minflt - before.ru_minflt) / len(bodies),
                "rss_mb": after.ru_maxrss / 1024,
            }
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--cpu", type=int, default=1, help="the core to pin each run to")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # a child run: its JSON arguments
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(**json.loads(args.measure))))
        return 0
    sys.path.insert(0, str(HERE))
    import benchenv

    benchenv.reexec_in_bench_venv(Path(__file__), HERE / ".work")  # photos.py needs numpy
    import photos

    paths = [str(p) for p in photos.build_corpus(HERE / ".work" / "transform-corpus", args.images)]
    python = HERE.parent / ".venv" / "bin" / "python"
    print(f"ldawt's transform stage, {args.images} images, one core, best of 3 rounds\n")
    print("| profile | setting | CPU ms/image | minor faults/image | peak RSS MB |")
    print("|---|---|---:|---:|---:|")
    for profile, (mode, size) in PROFILES.items():
        for label, pin, blocks, block_size in SETTINGS:
            job = {"pin": pin, "blocks": blocks, "block_size": block_size}
            job |= {"mode": mode, "size": size, "paths": paths}
            out = subprocess.run(
                [
                    "taskset",
                    "-c",
                    str(args.cpu),
                    str(python),
                    __file__,
                    "--measure",
                    json.dumps(job),
                ],
                check=True,
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONHASHSEED": "0"},
            ).stdout
            r = json.loads(out)
            figures = f"{r['cpu_ms']:.1f} | {r['faults']:.0f} | {r['rss_mb']:.0f}"
            print(f"| {profile} | {label} | {figures} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
