"""ldawt's benchmark: ldawt vs img2dataset 1.47 vs a bare aiohttp client, side by side,
against a loopback nginx origin, in three download profiles (plain HTTP; plain HTTP with small
images; HTTPS + 40 ms first byte) and, on request, two transform profiles (resize to border
256 / keep_ratio 512 from 1024-2048 px photo-like JPEGs) and the many-host profile (2,000 names
behind a real DNS server).

    python3 bench/run.py                 # 20,000 rows, profiles plain, small and tls
    python3 bench/run.py --rows 5000 --only bare,ldawt --profiles plain
    python3 bench/run.py --profiles plain,transform --ldawt-rev worktree --ldawt-baseline-rev HEAD
    python3 bench/run.py --profiles hosts --ldawt-extra-row ""

Run by hand (not part of CI). Creates its venvs under bench/.work/ on first use. See
bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

import benchenv
import transform_check  # stdlib only at import

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_WORK = BENCH_DIR / ".work"
DEFAULT_SOURCE = REPO / ".." / "shared" / "data" / "inat_subset_45k.parquet"
CLIENTS = ("bare", "img2dataset", "ldawt")
DOWNLOAD_PROFILES = ("plain", "small", "tls", "hosts")
TRANSFORM_PROFILES = transform_check.PROFILES
"""Transform profile -> (resize mode, image size), for img2dataset and ldawt alike."""
PROFILE_GROUPS = {"transform": tuple(TRANSFORM_PROFILES)}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- venvs


def _pip_install(venv_dir: Path, *args: str) -> None:
    pip = [str(venv_dir / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--disable-pip-version-check", *args], check=True, timeout=1800)


def ensure_img2dataset(work: Path) -> Path:
    venv_dir = work / "venv-img2dataset"
    exe = venv_dir / "bin" / "img2dataset"
    if not exe.exists():
        log(f"creating {venv_dir} (img2dataset==1.47)")
        venv.EnvBuilder(with_pip=True).create(venv_dir)
        _pip_install(venv_dir, "img2dataset==1.47")
    return exe


# ---------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="ldawt vs img2dataset vs a bare aiohttp client")
    ap.add_argument("--rows", type=int, default=20_000, help="rows of the URL list per run")
    ap.add_argument(
        "--ca-bundle-rows",
        type=int,
        default=2_000,
        help="rows for img2dataset with the system CA bundle (about 55/s; 0 skips the row)",
    )
    ap.add_argument(
        "--profiles",
        default="plain,small,tls",
        help="comma-separated: plain, small, tls, hosts (2,000 names behind unbound), "
        "border256, keep_ratio512, or transform (= both transform profiles); default "
        "plain,small,tls",
    )
    ap.add_argument("--only", default=",".join(CLIENTS), help="clients: bare,img2dataset,ldawt")
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the real URL list")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="venvs, corpus, outputs")
    ap.add_argument("--out-root", type=Path, help="where clients write (default WORK/out)")
    ap.add_argument("--keep-output", action="store_true", help="keep each client's output")
    ap.add_argument("--distinct", type=int, default=300, help="distinct JPEGs in the corpus")
    ap.add_argument(
        "--transform-rows",
        type=int,
        default=3_000,
        help="rows of the URL list per row of the transform profiles (default 3,000)",
    )
    ap.add_argument(
        "--transform-distinct",
        type=int,
        default=128,
        help="distinct photo-like 1024-2048 px JPEGs in the transform profiles' corpus",
    )
    ap.add_argument("--delay-ms", type=float, default=40.0, help="profile 2 first-byte delay")
    ap.add_argument("--nginx-workers", type=int, default=2)
    ap.add_argument(
        "--i2d-shard-size",
        type=int,
        default=0,
        help="img2dataset --number_sample_per_shard (default: rows/8, at most 10,000)",
    )
    ap.add_argument(
        "--ldawt-rev",
        default="HEAD",
        help="git revision of ldawt to measure (installed from git archive), or 'worktree'",
    )
    ap.add_argument("--ldawt-bin", help="an ldawt-manager executable (overrides --ldawt-rev)")
    ap.add_argument(
        "--ldawt-baseline-rev",
        help="also measure this ldawt revision in the download profiles (its rows follow the "
        "measured revision's), and check the measured one loses <= 5%% images/s against it",
    )
    ap.add_argument("--ldawt-engine", default="local", choices=["local", "taskvine"])
    ap.add_argument("--local-workers", type=int, default=2, help="taskvine engine only")
    ap.add_argument("--ldawt-args", default="", help="extra arguments for ldawt-manager submit")
    ap.add_argument(
        "--ldawt-extra-row",
        default="--workers 1",
        help="arguments of a second ldawt row per profile ('' = none; default: one process, "
        "i.e. exactly 256 in flight)",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="rounds over all rows; each row keeps its best"
    )
    ap.add_argument("--writer-bench", action="store_true", help="also run writer_strategies.py")
    args = ap.parse_args(argv)
    if unknown := set(args.only.split(",")) - set(CLIENTS):
        ap.error(f"--only: unknown client(s) {sorted(unknown)}; choose from {list(CLIENTS)}")
    known = (*DOWNLOAD_PROFILES, *TRANSFORM_PROFILES, *PROFILE_GROUPS)
    asked = [p.strip() for p in args.profiles.split(",") if p.strip()]
    if unknown := set(asked) - set(known):
        ap.error(f"--profiles: unknown profile(s) {sorted(unknown)}; choose from {list(known)}")
    expanded = [q for p in asked for q in PROFILE_GROUPS.get(p, (p,))]
    args.profile_list = list(dict.fromkeys(expanded))  # in order, once each
    if args.rows < 1 or args.repeat < 1 or args.ca_bundle_rows < 0:
        ap.error("--rows and --repeat must be >= 1, --ca-bundle-rows >= 0")
    if args.transform_rows < 1 or args.transform_distinct < 1:
        ap.error("--transform-rows and --transform-distinct must be >= 1")
    return args


# ---------------------------------------------------------------- the run


def build_jobs(
    args: argparse.Namespace, origin, lists: dict, out_root: Path, meta: dict, source_of
) -> list:
    """Every row of the benchmark, in run order; a skipped row is a (name, profile, rows, why).
    ``source_of`` maps a URL of the transform profiles to its corpus file (for their checks)."""
    import clients
    import ldawt_install
    import many_hosts

    only = set(args.only.split(","))
    jobs: list = []
    i2d_bin = ensure_img2dataset(args.work) if "img2dataset" in only else None
    ldawt_bin = baseline_bin = None
    transform_why = ""
    if "ldawt" in only:
        ldawt_bin, meta["ldawt"] = ldawt_install.find(
            args.ldawt_bin, args.ldawt_rev, args.work, log
        )
        if ldawt_bin and not ldawt_install.supports(ldawt_bin, "--resize-mode"):
            transform_why = f"`ldawt-manager submit` has no --resize-mode at {meta['ldawt']}"
        wants_download = any(p in DOWNLOAD_PROFILES for p in args.profile_list)
        if args.ldawt_baseline_rev and wants_download:
            baseline_bin, meta["ldawt_baseline"] = ldawt_install.find(
                None, args.ldawt_baseline_rev, args.work, log, slot="-baseline"
            )
    first_transform = next((p for p in args.profile_list if p in TRANSFORM_PROFILES), None)
    for profile in args.profile_list:
        resize = TRANSFORM_PROFILES.get(profile)
        rows = args.transform_rows if resize else args.rows
        urls = lists["transform"] if resize else lists[profile]
        urls_txt = lists["transform_txt"] if resize else lists[f"{profile}_txt"]
        cert = {"tls": origin.cert, "hosts": args.hosts_ca}.get(profile)
        base = out_root / profile
        shard_size = args.i2d_shard_size or max(100, min(10_000, rows // 8))
        if "bare" in only and (not resize or profile == first_transform):
            # in the transform profiles: one reference row, no transform (the same for both)
            for tar in (False, True) if not resize else (False,):
                name = "bare aiohttp, tarfile" if tar else "bare aiohttp, discard"
                if resize:
                    name += " (no transform)"
                out = base / ("bare-tar" if tar else "bare-discard")
                jobs.append(
                    clients.bare_job(name, profile, urls_txt, out, rows, tar=tar, cafile=cert)
                )
        if i2d_bin:
            name = "img2dataset 1.47" + (" (SSL_CERT_FILE=test cert)" if cert else "")
            job = clients.img2dataset_job(
                name,
                profile,
                i2d_bin,
                urls,
                base / "img2dataset",
                rows,
                cert_file=cert,
                shard_size=shard_size,
                resize=resize,
            )
            if resize:
                job.inspect = lambda out: transform_check.inspect_img2dataset(out, source_of)
            jobs.append(job)
            if profile == "tls" and args.ca_bundle_rows:
                bundle = clients.cert_bundle_with_system_cas(cert, args.work)
                capped = lists["tls_capped"]
                jobs.append(
                    clients.img2dataset_job(
                        "img2dataset 1.47 (test cert + system CAs)",
                        profile,
                        i2d_bin,
                        capped,
                        base / "img2dataset-cas",
                        args.ca_bundle_rows,
                        cert_file=bundle,
                        shard_size=max(1, args.ca_bundle_rows // 4),
                    )
                )
        if "ldawt" in only:
            resizing = []
            if resize:
                resizing = ["--resize-mode", resize[0], "--image-size", str(resize[1])]
                # one shard per core, so that the default engine runs one worker per core as in
                # a long job (the default 5,000 rows per shard would make this list one shard)
                resizing += ["--shard-size", str(-(-rows // (os.cpu_count() or 1)))]
            variants = [""]
            if args.ldawt_extra_row.strip():
                variants.append(args.ldawt_extra_row.strip())
            revisions = [("", ldawt_bin, meta["ldawt"])]
            if args.ldawt_baseline_rev and not resize:
                revisions.append(
                    (args.ldawt_baseline_rev, baseline_bin, meta.get("ldawt_baseline", ""))
                )
            for i, variant in enumerate(variants):
                extra = resizing + f"{args.ldawt_args} {variant}".split()  # the user's win
                for rev, exe, desc in revisions:
                    suffix = f", {variant}" if variant else ""
                    label = f"ldawt {rev}" if rev else "ldawt"
                    name = f"{label} ({args.ldawt_engine} engine{suffix})"
                    if exe is None or (resize and transform_why):
                        jobs.append((name, profile, rows, desc if exe is None else transform_why))
                        continue
                    job = clients.ldawt_job(
                        name,
                        profile,
                        exe,
                        urls,
                        base / (f"ldawt-{i}" + ("-baseline" if rev else "")),
                        rows,
                        cert_file=cert,
                        engine=args.ldawt_engine,
                        local_workers=args.local_workers,
                        extra=extra,
                    )
                    job.variant, job.baseline = variant, rev
                    if resize:
                        job.inspect = lambda out: transform_check.inspect_ldawt(out, source_of)
                    if profile == "hosts":
                        job.dns_check = many_hosts.dns_errors_on_resolving_names
                    jobs.append(job)
    return jobs


def _best(runs: list):
    """The run with the most images/s; the others' rates go into its detail."""
    best = max(runs, key=lambda r: r.rate)
    if len(runs) > 1:
        rates = ", ".join(f"{r.rate:,.0f}" for r in runs)
        failed = [f"exit {r.returncode}: {r.detail}" for r in runs if r.returncode]
        also = f"; other rounds failed: {failed}" if failed and best.returncode == 0 else ""
        best.detail = f"best of {len(runs)} runs (images/s: {rates}{also}) {best.detail}".strip()
    return best


def _cpu_snapshot(origin) -> tuple[float, float, float]:
    """(machine busy CPU s, nginx CPU s, this harness's CPU s), to tell foreign load apart."""
    import psutil

    t = psutil.cpu_times()
    # irq/softirq time is left out: loopback networking lands there and is the rows' own work.
    busy = t.user + t.nice + t.system + getattr(t, "steal", 0)
    own = os.times()
    return busy, origin.cpu_seconds(), own.user + own.system


def _other_cpu(before: tuple, after: tuple, client_cpu: float, wall: float) -> float:
    """Share of all cores used by processes that are neither the client, nginx nor the harness
    during a row (other sessions' tests, builds...): a noise indicator for the row."""
    used = (after[0] - before[0]) - client_cpu - (after[1] - before[1]) - (after[2] - before[2])
    return max(0.0, used) / (wall * (os.cpu_count() or 1)) if wall else 0.0


def run_job(job, keep_output: bool, origin):
    """Run one row from a clean output folder, measure it, count its output, then delete it."""
    import proctree
    from report import Result

    shutil.rmtree(job.out_dir, ignore_errors=True)
    shutil.rmtree(job.log_dir, ignore_errors=True)
    os.sync()  # the previous row's dirty pages must not be written back during this one
    job.log_dir.mkdir(parents=True)
    if not job.is_img2dataset:  # img2dataset wants to create its output folder itself
        job.out_dir.mkdir(parents=True)
    log(f"[{job.profile}] {job.name}: {job.rows:,} rows ...")
    before = _cpu_snapshot(origin)
    stats = proctree.run_measured(
        job.cmd,
        env=job.env,
        log_path=job.log_dir / "stderr.txt",
        stdout_path=job.log_dir / "stdout.txt",
        timeout_s=job.timeout_s,
    )
    res = Result(job.profile, job.name, job.rows, is_img2dataset=job.is_img2dataset)
    res.is_ldawt = job.is_ldawt
    res.other_cpu = _other_cpu(before, _cpu_snapshot(origin), stats.cpu_s, stats.wall_s)
    res.wall_s, res.cpu_s, res.returncode = stats.wall_s, stats.cpu_s, stats.returncode
    res.peak_rss, res.peak_pss = stats.peak_rss, stats.peak_pss
    res.peak_proc_rss, res.procs = stats.peak_proc_rss, stats.max_procs
    res.variant, res.baseline = job.variant, job.baseline
    try:
        counted = job.count(job)
        res.ok, res.bytes, res.accounted = counted.ok, counted.bytes, counted.accounted
        res.detail = counted.detail
    except Exception as e:  # a client that wrote nothing readable still gets its row
        res.detail = f"could not count the output: {e!r}"
    if job.dns_check is not None:
        try:
            res.dns_errors = job.dns_check(job.out_dir)
        except Exception as e:
            res.detail = f"{res.detail} could not read the manifests' DNS errors: {e!r}".strip()
    if job.inspect is not None:  # the transform profiles: read what was stored, then delete it
        try:
            res.stored = job.inspect(job.out_dir)
        except Exception as e:
            res.detail = f"{res.detail} could not read the stored images: {e!r}".strip()
    if stats.timed_out:
        res.detail = f"TIMED OUT after {job.timeout_s:.0f}s; {res.detail}"
    res.detail = " ".join([res.detail, *stats.notes]).strip()
    if stats.returncode != 0:
        tail = (job.log_dir / "stderr.txt").read_text(errors="replace").strip()[-300:]
        res.detail = f"{res.detail} stderr tail: {tail!r}".strip()
    log(
        f"[{job.profile}] {job.name}: {res.ok:,}/{job.rows:,} ok in {res.wall_s:.1f}s = "
        f"{res.rate:,.0f} images/s, {res.cpu_s:.1f} CPU s, peak RSS {res.peak_rss / 1e6:.0f} MB"
    )
    if not keep_output:
        shutil.rmtree(job.out_dir, ignore_errors=True)
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    benchenv.reexec_in_bench_venv(Path(__file__), args.work)  # re-execs once, if needed

    import corpus
    import many_hosts
    import origin as origin_mod
    import report

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    t_start = time.monotonic()
    info = corpus.build_corpus(args.work / "corpus", distinct=args.distinct)
    meta = {"machine": _machine(), "corpus": info.summary(), "load_start": _load()}
    log(f"machine: {meta['machine']}; load average {meta['load_start']}")
    log(f"corpus: {meta['corpus']}")
    extra: dict[str, Path] = {}  # the origin's other HTTP servers: name -> corpus root
    if "small" in args.profile_list:
        small = corpus.build_corpus(args.work / "corpus-small", args.distinct, spec=corpus.SMALL)
        meta["small_corpus"] = small.summary()
        log(f"small-image corpus: {meta['small_corpus']}")
        extra["small"] = small.root
    transform_info = source_of = None
    if any(p in TRANSFORM_PROFILES for p in args.profile_list):
        transform_info = corpus.build_transform_corpus(
            args.work / "corpus-transform",
            args.work / "transform-corpus",
            args.transform_distinct,
            log,
        )
        meta["transform_corpus"] = transform_info.summary()
        log(f"transform corpus: {meta['transform_corpus']}")
        source_of = transform_check.source_finder(transform_info.root)
        extra["transform"] = transform_info.root
    out_root = (args.out_root or args.work / "out").resolve()
    args.hosts_ca = hosts = dns = None
    if "hosts" in args.profile_list:
        args.hosts_ca, *leaf = many_hosts.make_wildcard_certificate(args.work / "nginx")
        hosts = (many_hosts.ADDRESSES, *leaf)
        dns = many_hosts.server(args.work)
    runs: dict[int, list] = {}  # job index -> its measured rounds
    origin = origin_mod.Origin(
        args.work / "nginx",
        info.root,
        args.delay_ms / 1000,
        args.nginx_workers,
        extra=extra,
        hosts=hosts,
    )
    code = 0
    try:
        origin.start()
        if dns is not None:
            dns.start()
            log(
                f"unbound on {dns.address}:53: {many_hosts.HOSTS:,} names over "
                f"{len(many_hosts.ADDRESSES)} addresses (nginx HTTPS on :443 of each), "
                f"{len(dns.zone.nxdomain)} NXDOMAIN, {len(dns.zone.slow)} answered after "
                f"{dns.slow_delay_s * 1e3:.0f} ms"
            )
        log(f"nginx: {origin.http_base} (plain), {origin.https_base} (TLS, {args.delay_ms} ms)")
        for name in extra:
            log(f"nginx: {origin.base(name)} ({name} corpus, plain)")
        bases = {"plain": origin.http_base, "tls": origin.https_base}
        if "small" in extra:
            bases["small"] = origin.base("small")
        lists = corpus.write_url_lists(args.source, args.rows, args.work / "lists", bases)
        if args.ca_bundle_rows:
            lists["tls_capped"] = corpus.write_url_lists(
                args.source, args.ca_bundle_rows, args.work / "lists",
                {"tls_capped": origin.https_base},
            )["tls_capped"]  # fmt: skip
        if dns is not None:
            lists.update(many_hosts.write_url_list(args.source, args.rows, args.work / "lists"))
            hosts_in_rows = {u.split("/")[2] for u in lists["hosts_txt"].read_text().split()}
        if transform_info:
            lists.update(
                corpus.write_url_lists(
                    args.source, args.transform_rows, args.work / "lists",
                    {"transform": origin.base("transform")},
                )
            )  # fmt: skip
        meta["origin"] = _verify_origin(origin, lists["plain_txt"], info.root, extra)
        log(f"origin verified: {meta['origin']}")
        jobs = build_jobs(args, origin, lists, out_root, meta, source_of)
        for job in jobs:
            if not isinstance(job, tuple) and job.profile == "hosts":
                many_hosts.wrap(job, dns, args.hosts_ca)
        runs.update({i: [] for i in range(len(jobs))})
        for round_no in range(1, args.repeat + 1):  # rounds interleave the clients
            if args.repeat > 1:
                log(f"round {round_no} of {args.repeat}")
            for i, job in enumerate(jobs):
                if isinstance(job, tuple):
                    if round_no == 1:
                        name, profile, rows, why = job
                        log(f"[{profile}] {name}: SKIPPED - {why}")
                        runs[i].append(
                            report.Result(profile, name, rows, skipped=why, is_ldawt=True)
                        )
                    continue
                if job.profile == "hosts":  # a fresh unbound: empty cache, log of this row only
                    dns.stop()
                    dns.start()
                runs[i].append(run_job(job, args.keep_output, origin))
                if job.profile == "hosts":
                    runs[i][-1].dns = many_hosts.dns_summary(dns.queries(), hosts_in_rows)
    except KeyboardInterrupt as e:
        log(f"interrupted ({str(e) or 'Ctrl-C'}); stopping nginx and children")
        meta["interrupted"] = True
        code = 130
    finally:
        origin.stop()
        if dns is not None:
            dns.stop()
        meta["load_end"] = _load()
        results = [_best(r) for r in runs.values() if r]
        stored = {id(r): r.stored for r in results if getattr(r, "stored", None) is not None}
        if stored:
            log("transform profiles: comparing stored sizes and PSNR ...")
            try:
                transform_check.compare(results, stored, source_of)
            except Exception as e:  # the figures are still printed
                log(f"transform checks failed: {e!r}")
                meta["transform_check_error"] = repr(e)
        if results:
            _print_and_save(args, results, meta, time.monotonic() - t_start)
    if args.writer_bench and code == 0:
        subprocess.run(
            [sys.executable, str(BENCH_DIR / "writer_strategies.py"), "--work", str(args.work)],
            check=False,
            timeout=1200,
        )
    return code


def _machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs ({model or 'unknown model'}), {mem:.0f} GiB RAM"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _verify_origin(origin, urls_txt: Path, corpus_root: Path, extra: dict[str, Path]) -> str:
    """Check a spread of paths on every server (see Origin.verify); a one-line summary."""
    import corpus

    urls = urls_txt.read_text().split()
    step = max(1, len(urls) // 12)
    paths = ["/" + u.split("/", 3)[3] for u in urls[::step][:12]]

    def file_in(root: Path):
        return lambda p: corpus.corpus_file_for_path(root, p)

    extra_files = {name: file_in(root) for name, root in extra.items()}
    ttfb = origin.verify(paths, file_in(corpus_root), extra_files)
    mid = len(paths) // 2
    others = "".join(f", {name} server median {ttfb[name][mid] * 1e3:.2f} ms" for name in extra)
    return (
        f"{len(paths)} paths on one keep-alive connection per server, bodies equal the corpus "
        f"JPEGs; first byte "
        f"plain median {ttfb['plain'][mid] * 1e3:.2f} ms, TLS {min(ttfb['tls']) * 1e3:.1f}-"
        f"{max(ttfb['tls']) * 1e3:.1f} ms (median {ttfb['tls'][mid] * 1e3:.1f} ms){others}"
    )


def _print_and_save(args: argparse.Namespace, results: list, meta: dict, elapsed: float) -> None:
    import report

    cmd = shlex.join(["python3", "bench/run.py", *sys.argv[1:]])
    lines = report.targets(results)
    header = [
        f"command: {cmd}",
        f"machine: {meta['machine']}",
        f"load average (1/5/15 min): start {meta['load_start']}, end {meta.get('load_end')}",
        f"corpus: {meta['corpus']}",
        *([f"small-image corpus: {meta['small_corpus']}"] if "small_corpus" in meta else []),
        *([f"transform corpus: {meta['transform_corpus']}"] if "transform_corpus" in meta else []),
        f"origin: nginx, {args.nginx_workers} workers; {meta.get('origin', 'not verified')}",
        f"ldawt: {meta.get('ldawt', 'not run')}",
        *([f"ldawt baseline: {meta['ldawt_baseline']}"] if "ldawt_baseline" in meta else []),
        *(
            [f"rows: {args.rows:,} (download profiles), {args.transform_rows:,} (transform)"]
            if "transform_corpus" in meta
            else []
        ),
        f"whole run: {elapsed:.0f} s"
        + (" (INTERRUPTED: rows missing)" if "interrupted" in meta else ""),
    ]
    print("\n" + "\n".join(header))
    print(report.render_text(results))
    title = (
        "targets (issue 2; issue 11 for the transform profiles and the baseline comparison; "
        "issue 12 for the many-host profile; issue 14 for the small-image profile and the bare "
        "client)"
    )
    if lines:
        print(f"\n== {title}\n" + "\n".join(lines))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.work / "results"
    out.mkdir(exist_ok=True)
    md = out / f"{stamp}.md"
    md.write_text(
        "\n".join(f"- {h}" for h in header)
        + "\n\n"
        + report.render_markdown(results)
        + (f"\n**{title}**\n\n" if lines else "")
        + "\n".join(f"- {line}" for line in lines)
        + "\n"
    )
    rows = [r.as_dict() for r in results]
    (out / f"{stamp}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\nsaved {md} (markdown) and {stamp}.json next to it")


if __name__ == "__main__":
    sys.exit(main())
