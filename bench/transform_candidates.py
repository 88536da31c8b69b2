"""Which imaging library for the transform stage: images/s on one core and PSNR, per candidate.

    python3 bench/transform_candidates.py                      # 48 images, both profiles (~3 min)
    python3 bench/transform_candidates.py --threads 2          # + thread-pool scaling (wall)
    python3 bench/transform_candidates.py --only "(chosen),floor" --profiles border256

A corpus of photo-like JPEGs (bench/photos.py, whose first images bench/run.py's transform
profiles serve too; 1024-2048 px on the long side, natural-image statistics: a 1/f
random field, more or less out of focus, with hard-edged textured objects, soft chroma and
sensor grain; quality 90; every eighth with an EXIF orientation) goes through each candidate,
bytes in to bytes out, in one thread pinned to one core, for two profiles: ``border`` 256
(img2dataset's default) and ``keep_ratio`` 512. Rounds interleave the candidates and the best
round counts; rates come from CPU time, so other load on the machine does not count. Per
candidate: images/s, the ratio to img2dataset 1.47, the mean PSNR of the stored images against
a reference (full-precision Pillow decode, area-average resize in float to the same size,
oriented as the candidate stores it; the white border excluded), whether every output size
equals img2dataset's formula and img2dataset's actual output.

Candidates: img2dataset 1.47 itself (its ``Resizer``, in bench/.work/venv-img2dataset, the venv
bench/run.py uses); OpenCV as img2dataset uses it (imdecode, INTER_AREA, imencode); ldawt's
stage (Pillow) with a full decode and with ``Image.draft`` at several gaps (``DRAFT_GAP``),
with and without ``reducing_gap`` and with the BOX filter; pyvips ``thumbnail_buffer``
(shrink-on-load); simplejpeg's scaled decode + Pillow's resize; and a floor that only decodes
at the smallest DCT scale covering the target (no resize, no output): what any libjpeg-turbo
based candidate must spend. Those that do not install are skipped. The script re-executes
itself in bench/.work/venv-transform (created on first use) and loads ldawt's stage from this
working tree. Results: printed, and saved as bench/.work/results/transform-<time>.md.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import time
import types
import venv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import photos
from photos import Target, content, psnr, reference

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / ".work"
VENV = WORK / "venv-transform"
I2D_VENV = WORK / "venv-img2dataset"
CORE_PACKAGES = ["pillow", "numpy", "pyarrow"]  # pyarrow: the stage imports the shard contract
OPTIONAL_PACKAGES = ["opencv-python-headless", "pyvips pyvips-binary", "simplejpeg"]
NOT_SELECTED = "not selected (--only)"
PROFILES = {"border256": ("border", 256), "keep_ratio512": ("keep_ratio", 512)}


def log(message: str) -> None:
    print(f"[transform {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- environment -----------------------------------------------------------------------------


def reexec_in_venv() -> None:
    """Run in bench/.work/venv-transform, creating it first (each optional package on its own:
    a candidate that does not install is skipped, not fatal)."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    stamp = VENV / "packages.stamp"
    want = "\n".join([*CORE_PACKAGES, *OPTIONAL_PACKAGES])
    if not stamp.exists() or stamp.read_text() != want:
        log(f"preparing {VENV}")
        if not (VENV / "bin" / "python").exists():
            venv.EnvBuilder(with_pip=True).create(VENV)
        pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        pip.append("--disable-pip-version-check")
        subprocess.run([*pip, *CORE_PACKAGES], check=True, timeout=1800)
        for packages in OPTIONAL_PACKAGES:
            done = subprocess.run([*pip, *packages.split()], timeout=1800, check=False)
            if done.returncode:
                log(f"{packages}: did not install; its candidate is skipped")
        stamp.write_text(want)
    python = str(VENV / "bin" / "python")
    os.execv(python, [python, str(Path(__file__).resolve()), *sys.argv[1:]])


def ensure_img2dataset() -> Path | None:
    python = I2D_VENV / "bin" / "python"
    if not (I2D_VENV / "bin" / "img2dataset").exists():
        log(f"creating {I2D_VENV} (img2dataset==1.47)")
        venv.EnvBuilder(with_pip=True).create(I2D_VENV)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        done = subprocess.run(
            [*pip, "img2dataset==1.47"],
            timeout=1800,
            check=False,
        )
        if done.returncode:
            log("img2dataset did not install; its row is skipped")
            return None
    return python


STAGE_KNOBS = ("DRAFT_GAP", "REDUCING_GAP", "DOWNSCALE_FILTER")
STAGE_DEFAULTS: dict[str, object] = {}
"""The stage's own settings, restored after the candidates that vary them."""


def restore_stage_defaults() -> None:
    module = sys.modules["ldawt.daemon.transform.stage"]
    for name, value in STAGE_DEFAULTS.items():
        setattr(module, name, value)


def load_stage() -> types.ModuleType:
    """ldawt.daemon.transform.stage from this working tree, without installing ldawt (its
    package imports nothing at its top; the stage module has ``transform`` and
    ``TransformOptions``)."""
    import importlib

    if "ldawt" not in sys.modules:  # this tree's daemon/, whatever ldawt is installed
        for name, path in (("ldawt", None), ("ldawt.daemon", REPO / "daemon")):
            module = types.ModuleType(name)
            module.__path__ = [str(path)] if path else []
            sys.modules[name] = module
    stage = importlib.import_module("ldawt.daemon.transform.stage")
    module = sys.modules["ldawt.daemon.transform.stage"]
    STAGE_DEFAULTS.update({name: getattr(module, name) for name in STAGE_KNOBS})
    return stage


def pin_one_core(cpu: int) -> str:
    os.environ.update(OMP_NUM_THREADS="1", VIPS_CONCURRENCY="1", OPENBLAS_NUM_THREADS="1")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity)"


# --- corpus ----------------------------------------------------------------------------------


def build_corpus(count: int, seed: int, grain: tuple[float, float]) -> list[Path]:
    """The corpus (bench/photos.py), under bench/.work/transform-corpus/ (shared with
    bench/run.py's transform profile)."""
    return photos.build_corpus(WORK / "transform-corpus", count, seed, grain, log)


# --- candidates ------------------------------------------------------------------------------


@dataclass
class Candidate:
    name: str
    run: Callable[[bytes, Target, int], bytes] | None
    """bytes, target (in the candidate's orientation), quality -> encoded output."""
    upright: bool
    """Applies EXIF orientation (its outputs are compared with upright references)."""
    note: str = ""


@dataclass
class Row:
    name: str
    seconds: list[float] = field(default_factory=list)
    """CPU seconds (the process's, all threads) of each round over the corpus."""
    wall: list[float] = field(default_factory=list)
    outputs: list[bytes] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    sizes_ok: int = 0
    sizes: list[tuple[int, int]] = field(default_factory=list)
    upright: bool = False
    note: str = ""
    error: str | None = None


def make_candidates(stage: types.ModuleType, profile: tuple[str, int]) -> list[Candidate]:
    from PIL import Image

    mode, size = profile
    options = stage.TransformOptions(resize_mode=mode, image_size=size)
    stage_module = sys.modules["ldawt.daemon.transform.stage"]
    Run = Callable[[bytes, Target, int], bytes]

    def ldawt(gap: float | None, reducing: float | None, filter_name: str = "HAMMING") -> Run:
        def run(body: bytes, target: Target, quality: int) -> bytes:
            stage_module.DRAFT_GAP = gap
            stage_module.REDUCING_GAP = reducing
            stage_module.DOWNSCALE_FILTER = getattr(Image.Resampling, filter_name)
            result = stage.transform(body, options)
            if result.status != "ok":
                raise RuntimeError(result.detail)
            return result.data

        return run

    def floor(body: bytes, target: Target, quality: int) -> bytes:
        with Image.open(io.BytesIO(body)) as image:
            image.draft(None, target.resized)
            image.load()
        return b""

    chosen = (STAGE_DEFAULTS["DRAFT_GAP"], STAGE_DEFAULTS["REDUCING_GAP"], "HAMMING")
    variants = [(None, None), (1.0, None), (1.5, None), (1.5, 1.5), (2.0, None), (2.0, 2.0)]
    variants += [(3.0, None)]
    candidates = [
        Candidate("floor: Pillow decode at the smallest DCT scale only, no output", floor, True)
    ]
    for gap, reducing, *rest in [*variants, (2.0, None, "BOX")]:
        filter_name = rest[0] if rest else "HAMMING"
        name = "ldawt stage: Pillow, " + (f"draft gap {gap:g}" if gap else "full decode")
        name += f", reducing_gap {reducing:g}" if reducing else ""
        name += f", {filter_name}" if rest else ""
        name += " (chosen)" if (gap, reducing, filter_name) == chosen else ""
        candidates.append(Candidate(name, ldawt(gap, reducing, filter_name), True))
    try:
        import cv2
        import numpy as np

        cv2.setNumThreads(1)

        def opencv(body: bytes, target: Target, quality: int) -> bytes:
            img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
            img = cv2.resize(img, target.resized, interpolation=cv2.INTER_AREA)
            if target.crop:
                left, top, right, bottom = target.crop
                img = img[top:bottom, left:right]
            if target.pad:
                (left, top), (w, h) = target.pad, target.output
                right, bottom = w - img.shape[1] - left, h - img.shape[0] - top
                img = cv2.copyMakeBorder(
                    img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=[255, 255, 255]
                )
            return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()

        candidates.append(Candidate("OpenCV (imdecode, INTER_AREA, imencode)", opencv, False))
    except ImportError:
        candidates.append(Candidate("OpenCV", None, False, "not installed"))
    try:
        import pyvips

        pyvips.cache_set_max(0)
        pyvips.concurrency_set(1)

        def vips(body: bytes, target: Target, quality: int) -> bytes:
            w, h = target.resized
            img = pyvips.Image.thumbnail_buffer(body, w, height=h, size="force")
            if target.crop:
                left, top, right, bottom = target.crop
                img = img.crop(left, top, right - left, bottom - top)
            if target.pad:
                (left, top), (ow, oh) = target.pad, target.output
                img = img.embed(left, top, ow, oh, extend="background", background=[255] * 3)
            return img.jpegsave_buffer(Q=quality, keep="none")

        version = ".".join(str(pyvips.version(i)) for i in range(3))
        candidates.append(Candidate(f"pyvips thumbnail_buffer (libvips {version})", vips, True))
    except (ImportError, OSError) as exc:
        candidates.append(Candidate("pyvips", None, True, f"not installed ({exc})"))
    try:
        import numpy as np
        import simplejpeg

        def sjpeg(body: bytes, target: Target, quality: int) -> bytes:
            w, h = target.resized
            width, height = simplejpeg.decode_jpeg_header(body)[1::-1]
            arr = simplejpeg.decode_jpeg(body, "RGB", min_width=2 * w, min_height=2 * h)
            # libjpeg-turbo's M/8 scale that gave this size (ceil(width * M / 8))
            scale = next(m / 8 for m in range(1, 17) if math.ceil(width * m / 8) == arr.shape[1])
            img = Image.fromarray(arr).resize(
                (w, h), Image.Resampling.HAMMING, box=(0, 0, width * scale, height * scale)
            )
            if target.crop:
                img = img.crop(target.crop)
            if target.pad:
                canvas = Image.new("RGB", target.output, (255, 255, 255))
                canvas.paste(img, target.pad)
                img = canvas
            return simplejpeg.encode_jpeg(np.asarray(img), quality, "RGB", "420")

        candidates.append(
            Candidate("simplejpeg scaled decode (gap 2) + Pillow HAMMING", sjpeg, False)
        )
    except ImportError:
        candidates.append(Candidate("simplejpeg", None, False, "not installed"))
    return candidates


I2D_WORKER = r"""
import io, json, os, sys, time
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
args = json.loads(sys.argv[1])
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {args["cpu"]})
from img2dataset.resizer import Resizer
bodies = [open(p, "rb").read() for p in args["paths"]]
resizer = Resizer(image_size=args["size"], resize_mode=args["mode"], resize_only_if_bigger=False)
seconds, wall, outputs = [], [], None
for _ in range(args["rounds"]):
    start, cpu = time.perf_counter(), time.process_time()
    results = [resizer(io.BytesIO(body)) for body in bodies]
    seconds.append(time.process_time() - cpu)
    wall.append(time.perf_counter() - start)
    outputs = outputs or results
for i, (data, w, h, ow, oh, err) in enumerate(outputs):
    if err:
        raise SystemExit(f"image {i}: {err}")
    with open(os.path.join(args["out"], f"{i:04d}.jpg"), "wb") as handle:
        handle.write(data)
print(json.dumps({"seconds": seconds, "wall": wall}))
"""


def img2dataset_round(
    python: Path, paths: list[Path], profile: tuple[str, int], cpu: int, row: Row
) -> None:
    """One round of img2dataset's Resizer over the corpus, in its own venv (a fresh process per
    round, so rounds interleave with the other candidates); keeps the first round's outputs."""
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        args = {
            "paths": [str(p) for p in paths],
            "mode": profile[0],
            "size": profile[1],
            "rounds": 1,
            "cpu": cpu,
            "out": out,
        }
        done = subprocess.run(
            [str(python), "-c", I2D_WORKER, json.dumps(args)],
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
        if done.returncode:
            row.error = done.stderr.strip()[-300:]
            return
        times = json.loads(done.stdout.strip().splitlines()[-1])
        row.seconds += times["seconds"]
        row.wall += times["wall"]
        if not row.outputs:
            row.outputs = [(Path(out) / f"{i:04d}.jpg").read_bytes() for i in range(len(paths))]


# --- measuring -------------------------------------------------------------------------------


def targets_for(stage: types.ModuleType, body: bytes, profile: tuple[str, int]):
    """(upright target, raw target) of one image, from ldawt's img2dataset geometry."""
    from ldawt.daemon.transform.geometry import plan
    from ldawt.daemon.transform.header import read_header

    header = read_header(body)
    options = stage.TransformOptions(resize_mode=profile[0], image_size=profile[1])
    out = []
    for width, height in (header.upright, (header.width, header.height)):
        p = plan(width, height, options)
        out.append(Target(p.resized or (width, height), p.crop, p.pad, p.output))
    return out[0], out[1], header.orientation


def measure_profile(
    stage: types.ModuleType,
    paths: list[Path],
    profile_name: str,
    args: argparse.Namespace,
    i2d_python: Path | None,
) -> list[Row]:
    profile = PROFILES[profile_name]
    bodies = [p.read_bytes() for p in paths]
    targets = [targets_for(stage, body, profile) for body in bodies]
    rows: list[Row] = []
    i2d_row = None
    if i2d_python is not None:
        i2d_row = Row("img2dataset 1.47 (its Resizer: OpenCV + albumentations)")
        rows.append(i2d_row)
    runs: list[tuple[Row, Candidate]] = []
    for candidate in make_candidates(stage, profile):
        row = Row(candidate.name, upright=candidate.upright, note=candidate.note)
        rows.append(row)
        if candidate.run is None:
            row.error = candidate.note
        elif args.only and not any(word in candidate.name for word in args.only.split(",")):
            row.error = NOT_SELECTED
        else:
            runs.append((row, candidate))
    for number in range(args.rounds):  # rounds interleave: load on the machine hits all alike
        log(f"{profile_name}: round {number + 1} of {args.rounds}")
        if i2d_row is not None and i2d_row.error is None:
            img2dataset_round(i2d_python, paths, profile, args.cpu, i2d_row)
        for row, candidate in runs:
            if row.error is not None:
                continue
            chosen = [t[0] if candidate.upright else t[1] for t in targets]
            try:
                start, cpu = time.perf_counter(), time.process_time()
                outputs = [
                    candidate.run(body, target, 95)
                    for body, target in zip(bodies, chosen, strict=True)
                ]
                row.seconds.append(time.process_time() - cpu)
                row.wall.append(time.perf_counter() - start)
            except Exception as exc:
                row.error = f"{type(exc).__name__}: {exc}"[:300]
                continue
            if not row.outputs and all(outputs):
                row.outputs = outputs
    from PIL import Image

    for row in rows:
        if not row.outputs:
            continue
        for body, (upright_t, raw_t, _), data in zip(bodies, targets, row.outputs, strict=True):
            target = upright_t if row.upright else raw_t
            got = content(data, target)
            want = reference(body, target, row.upright)
            with Image.open(io.BytesIO(data)) as image:
                row.sizes_ok += image.size == target.output
                row.sizes.append(image.size)
            if got.shape == want.shape:
                row.psnr.append(psnr(got, want))
    return rows


def same_sizes(row: Row, base: Row | None) -> str:
    """How many outputs have img2dataset's size, and how many its size transposed (ldawt
    stores EXIF-rotated images upright; img2dataset ignores the orientation)."""
    if base is None or not base.sizes or not row.sizes:
        return "-"
    same = sum(a == b for a, b in zip(row.sizes, base.sizes, strict=True))
    turned = sum(a != b and a == b[::-1] for a, b in zip(row.sizes, base.sizes, strict=True))
    return f"{same}" + (f" (+{turned} transposed)" if turned else "")


def table(rows: list[Row], count: int) -> str:
    base = next((r for r in rows if r.name.startswith("img2dataset") and r.seconds), None)
    base_rate = count / min(base.seconds) if base else None
    base_psnr = sum(base.psnr) / len(base.psnr) if base and base.psnr else None
    lines = [
        "| candidate | images/s per core | CPU ms/image | x img2dataset | mean PSNR dB | "
        "vs img2dataset dB | min PSNR dB | sizes = formula | sizes = img2dataset's | "
        "mean output KB | wall ms/image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row.error == NOT_SELECTED:
            continue
        if not row.seconds:
            lines.append(f"| {row.name} | - | - | - | - | - | - | - | - | - | {row.error or ''} |")
            continue
        rate = count / min(row.seconds)
        if not row.outputs:
            lines.append(
                f"| {row.name} | {rate:,.1f} | {1000 / rate:.2f} | "
                f"{f'{rate / base_rate:.2f}x' if base_rate else '-'} | - | - | - | - | - | - "
                f"| {1000 * min(row.wall) / count:.2f} |"
            )
            continue
        mean = sum(row.psnr) / len(row.psnr) if row.psnr else float("nan")
        ratio = f"{rate / base_rate:.2f}x" if base_rate else "-"
        delta = f"{mean - base_psnr:+.2f}" if base_psnr is not None else "-"
        kb = sum(len(o) for o in row.outputs) / len(row.outputs) / 1e3
        lines.append(
            f"| {row.name} | {rate:,.1f} | {1000 / rate:.2f} | {ratio} | {mean:.2f} | {delta} "
            f"| {min(row.psnr, default=float('nan')):.2f} | {row.sizes_ok}/{count} "
            f"| {same_sizes(row, base)} | {kb:.1f} "
            f"| {1000 * min(row.wall) / count:.2f} |"
        )
    return "\n".join(lines)


def thread_scaling(stage: types.ModuleType, paths: list[Path], args: argparse.Namespace) -> str:
    """The chosen stage over the corpus from a pool of 1..N threads, on every core: Pillow
    releases the GIL while it decodes, resizes and encodes, so threads should scale."""
    from concurrent.futures import ThreadPoolExecutor

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    bodies = [p.read_bytes() for p in paths]
    options = stage.TransformOptions(resize_mode="border", image_size=256)
    lines = [
        "",
        f"**border256, ldawt stage in a thread pool (wall, best of {args.rounds})**",
        "",
        "| threads | images/s | x 1 thread |",
        "|---:|---:|---:|",
    ]
    base = None
    for threads in range(1, args.threads + 1):
        best = math.inf
        with ThreadPoolExecutor(threads) as pool:
            for _ in range(args.rounds):
                start = time.perf_counter()
                results = list(pool.map(lambda body: stage.transform(body, options), bodies))
                best = min(best, time.perf_counter() - start)
        assert all(r.status == "ok" for r in results)
        rate = len(bodies) / best
        base = base or rate
        lines.append(f"| {threads} | {rate:,.1f} | {rate / base:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=48, help="corpus images (default 48)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per candidate (best)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument(
        "--grain",
        default="1.5,4.5",
        help="sensor grain sigma range (0-255 scale); it sets the corpus' bits per pixel",
    )
    ap.add_argument("--cpu", type=int, default=0, help="the core to pin to")
    ap.add_argument("--profiles", default=",".join(PROFILES), help="border256,keep_ratio512")
    ap.add_argument("--only", default="", help="comma-separated words of candidate names")
    ap.add_argument("--no-img2dataset", action="store_true", help="skip the img2dataset row")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="also time the chosen stage in a thread pool of 1..N threads, unpinned (wall)",
    )
    args = ap.parse_args(argv)
    reexec_in_venv()
    pinned = pin_one_core(args.cpu)
    stage = load_stage()
    import PIL
    import PIL.Image

    low, high = (float(v) for v in args.grain.split(","))
    paths = build_corpus(args.images, args.seed, (low, high))
    sizes = [p.stat().st_size for p in paths]
    pixels = 0
    for path in paths:
        with PIL.Image.open(path) as image:
            pixels += image.width * image.height
    i2d_python = None if args.no_img2dataset else ensure_img2dataset()
    header = [
        "## Transform candidates: "
        + time.strftime("%Y-%m-%d")
        + f", Pillow {PIL.__version__}, Python {sys.version.split()[0]}",
        "",
        "```bash",
        "python3 bench/transform_candidates.py " + " ".join(sys.argv[1:]),
        "```",
        "",
        f"- {os.cpu_count()} CPUs ({pinned}); one thread; best of {args.rounds} rounds; rates "
        "from CPU time (process_time: all threads of the process), so that other load on the "
        "machine does not count; wall time in the last column",
        f"- corpus: {len(paths)} photo-like JPEGs, 1024-2048 px long side, quality 90, "
        f"{sum(sizes) / len(sizes) / 1e3:.0f} KB mean, {8 * sum(sizes) / pixels:.2f} bits/pixel "
        f"(grain sigma {low:g}-{high:g}), every eighth with EXIF orientation",
        "- PSNR: stored image vs full-precision decode + float area-average resize to the same "
        "size (border excluded), oriented as the candidate stores it",
    ]
    blocks = ["\n".join(header)]
    print(blocks[0], flush=True)
    for name in args.profiles.split(","):
        rows = measure_profile(stage, paths, name, args, i2d_python)
        restore_stage_defaults()
        block = f"\n**{name}**\n\n" + table(rows, len(paths))
        print(block, flush=True)
        blocks.append(block)
    if args.threads:
        block = thread_scaling(stage, paths, args)
        print(block, flush=True)
        blocks.append(block)
    results = WORK / "results"
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"transform-{time.strftime('%Y%m%d-%H%M%S')}.md"
    out.write_text("\n".join(blocks) + "\n")
    log(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
