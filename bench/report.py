"""Result rows, the side-by-side table, ratios to img2dataset's best, and the issues' targets
(issue 2: the download profiles; issue 11: the transform profiles and what the new manifest
columns cost the download profiles; issue 12: the many-host profile; issue 14: the small-image
profile and ldawt's overhead over the bare client)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from transform_check import PROFILES

PROFILE_TITLES = {
    "plain": "profile 1: HTTP on 127.0.0.1",
    "small": "profile 1s: HTTP on 127.0.0.1, small images (iNaturalist medium, median ~40 KB)",
    "tls": "profile 2: HTTPS (self-signed) + 40 ms before first byte",
    "border256": "profile 3a, transform: resize mode border, 256 px (photo-like JPEGs of "
    "1024-2048 px, HTTP on 127.0.0.1)",
    "keep_ratio512": "profile 3b, transform: resize mode keep_ratio, 512 px (the same corpus)",
    "hosts": "profile 4, many hosts: 2,000 names behind unbound, Zipf rows, HTTPS (wildcard "
    "certificate) + 40 ms before first byte",
}
TRANSFORM_PROFILES = tuple(PROFILES)
TARGET_SPEEDUP = 2.2
TARGET_CPU_MS = 0.6
TARGET_RSS_MB = 250.0
# issue 11
TARGET_TRANSFORM_SPEEDUP = {"border256": 3.0, "keep_ratio512": 2.0}
TARGET_TRANSFORM_RSS_MB = 300.0
TARGET_PSNR_DROP_DB = 0.5
TARGET_NO_TRANSFORM_LOSS = 0.05
# issue 12
TARGET_HOSTS_SPEEDUP = 5.0
TARGET_QUERIES_PER_HOST = 2
# issue 14
TARGET_SPEEDUP_14 = 2.5  # the default engine, profiles plain and small
TARGET_CPU_X_BARE = 2.0  # CPU per image over the bare discarding client's, plain and small
TARGET_TLS_OF_BARE = 0.70  # the default engine's images/s over the bare client's, profile tls
BARE = "bare aiohttp, discard"


@dataclass
class Result:
    """One measured (or skipped) row."""

    profile: str
    client: str
    rows: int
    ok: int = 0
    accounted: int | None = None
    bytes: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss: int = 0
    peak_pss: int | None = None
    peak_proc_rss: int = 0  # the largest single process
    procs: int = 0  # most processes seen at once in the tree
    returncode: int | None = None
    skipped: str = ""  # why the row was not measured
    detail: str = ""
    is_img2dataset: bool = False
    is_ldawt: bool = False
    other_cpu: float | None = None  # share of the machine's CPU used by unrelated processes
    variant: str = ""  # ldawt: the row's extra arguments, e.g. "--workers 1"
    baseline: str = ""  # ldawt: the baseline revision this row measures ("" = under test)
    quality: dict | None = None  # transform profiles: sizes and PSNR (transform_check.compare)
    dns: dict | None = None  # many-host profile: queries unbound answered (many_hosts.dns_summary)
    dns_errors: int | None = None  # many-host profile: ldawt's dns_error rows on resolving names

    @property
    def rate(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    @property
    def mb_s(self) -> float:
        return self.bytes / 1e6 / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_ms_per_image(self) -> float | None:
        return self.cpu_s * 1000 / self.ok if self.ok else None

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(rate=self.rate, mb_s=self.mb_s, cpu_ms_per_image=self.cpu_ms_per_image)
        return d


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.0f}"


def img2dataset_best(results: list[Result], profile: str) -> Result | None:
    cands = [r for r in results if r.profile == profile and r.is_img2dataset and r.ok]
    return max(cands, key=lambda r: r.rate, default=None)


def bare_row(results: list[Result], profile: str) -> Result | None:
    """The profile's ceiling: the bare client that discards the bodies. The transform profiles
    share one such row, over their corpus without transforming (run in the first of them)."""
    same = TRANSFORM_PROFILES if profile in TRANSFORM_PROFILES else (profile,)
    rows = (r for r in results if r.profile in same and r.client.startswith(BARE) and r.ok)
    return next(rows, None)


def _x(value: float | None, ref: float | None) -> str:
    return f"{value / ref:.2f}x" if value is not None and ref else "-"


HEADER = [
    "client", "rows", "ok", "in manifest", "wall s", "images/s", "MB/s",
    "CPU s/1k img", "peak RSS MB", "peak PSS MB", "1-proc RSS MB", "procs",
    "x img2dataset best", "x bare images/s", "x bare CPU", "other CPU",
]  # fmt: skip


def table_rows(results: list[Result], profile: str) -> list[list[str]]:
    best = img2dataset_best(results, profile)
    bare = bare_row(results, profile)
    out = []
    for r in results:
        if r.profile != profile:
            continue
        if r.skipped:
            out.append([r.client, f"{r.rows:,}", "skipped: " + r.skipped] + [""] * 13)
            continue
        cpu = r.cpu_ms_per_image
        out.append(
            [
                r.client,
                f"{r.rows:,}",
                f"{r.ok:,}",
                "-" if r.accounted is None else f"{r.accounted:,}",
                f"{r.wall_s:.1f}",
                f"{r.rate:,.0f}",
                f"{r.mb_s:,.0f}",
                "-" if cpu is None else f"{cpu:.2f}",
                _mb(r.peak_rss),
                _mb(r.peak_pss),
                _mb(r.peak_proc_rss),
                str(r.procs),
                f"{r.rate / best.rate:.2f}x" if best else "-",
                _x(r.rate, bare.rate if bare else None),
                _x(cpu, bare.cpu_ms_per_image if bare else None),
                "-" if r.other_cpu is None else f"{r.other_cpu:.0%}",
            ]
        )
    return out


QUALITY_HEADER = [
    "client", "images", "size = img2dataset's", "of which EXIF-transposed", "size differs",
    "manifest size = stored", "PSNR sources", "mean PSNR dB", "vs img2dataset dB",
    "min PSNR dB", "stored KB/image",
]  # fmt: skip


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def quality_rows(results: list[Result], profile: str) -> list[list[str]]:
    """The transform profiles' second table: what each client stored, against img2dataset."""
    out = []
    for r in results:
        q = r.quality
        if r.profile != profile or not q:
            continue
        if "compared" in q:
            equal = f"{q['same'] + q['transposed']:,}/{q['compared']:,}"
            if q["missing"] or q["extra"]:
                equal += f" ({q['missing']:,} missing, {q['extra']:,} extra)"
            turned, differs = f"{q['transposed']:,}", f"{q['differs']:,}"
        else:
            equal = turned = differs = "-" if not r.is_img2dataset else "(reference)"
        if q["manifest_checked"]:
            ok = q["manifest_checked"] - q["manifest_differs"]
            manifest = f"{ok:,}/{q['manifest_checked']:,}"
        else:
            manifest = "no columns" if q["manifest_note"] else "-"
        sources = f"{q['psnr_sources']}"
        if q["psnr_unexpected_size"]:
            sources += f" (+{q['psnr_unexpected_size']} of another size)"
        out.append(
            [
                r.client,
                f"{q['images']:,}",
                equal,
                turned,
                differs,
                manifest,
                sources,
                _f(q["psnr_mean"], ".2f"),
                _f(q.get("psnr_vs_base"), "+.2f"),
                _f(q["psnr_min"], ".2f"),
                _f(q["mean_kb"], ".1f"),
            ]
        )
    return out


DNS_HEADER = [
    "client", "DNS queries", "distinct hosts", "queries/host", "max/host", "hosts > 2",
    "dns_error on resolving names",
]  # fmt: skip


def dns_rows(results: list[Result], profile: str) -> list[list[str]]:
    """The many-host profile's second table: what the DNS server answered during each row."""
    out = []
    for r in results:
        d = r.dns
        if r.profile != profile or not d:
            continue
        errors = "-" if r.dns_errors is None else f"{r.dns_errors:,}"
        out.append(
            [
                r.client,
                f"{d['queries']:,}",
                f"{d['hosts']:,}",
                f"{d['per_host']:.2f}",
                str(d["max_per_host"]),
                f"{d['hosts_over_2']:,}",
                errors,
            ]
        )
    return out


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    return [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]


def render_text(results: list[Result]) -> str:
    lines = []
    for profile, title in PROFILE_TITLES.items():
        rows = table_rows(results, profile)
        if not rows:
            continue
        widths = [
            max(len(h), *(len(r[i]) for r in rows if len(r) > i)) for i, h in enumerate(HEADER)
        ]
        widths[2] = len(HEADER[2])  # "skipped: ..." text overflows the ok column on purpose
        lines += ["", f"== {title}"]
        lines.append(
            "  ".join(
                h.rjust(w) if i else h.ljust(w)
                for i, (h, w) in enumerate(zip(HEADER, widths, strict=True))
            )
        )
        for row in rows:
            if row[2].startswith("skipped"):
                lines.append(f"{row[0].ljust(widths[0])}  {row[1].rjust(widths[1])}  {row[2]}")
                continue
            lines.append(
                "  ".join(
                    c.rjust(w) if i else c.ljust(w)
                    for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
            )
        for r in results:
            if r.profile == profile and (r.detail or (r.returncode not in (0, None))):
                code = "" if r.returncode in (0, None) else f"exit {r.returncode} "
                lines.append(f"  note {r.client}: {code}{r.detail}".rstrip())
        if quality := quality_rows(results, profile):
            lines += ["", f"-- {profile}: stored images", *_text_table(QUALITY_HEADER, quality)]
        if dns := dns_rows(results, profile):
            lines += ["", f"-- {profile}: DNS", *_text_table(DNS_HEADER, dns)]
    return "\n".join(lines)


def render_markdown(results: list[Result]) -> str:
    out = []
    for profile, title in PROFILE_TITLES.items():
        rows = table_rows(results, profile)
        if not rows:
            continue
        out += [f"**{title}**", "", "| " + " | ".join(HEADER) + " |"]
        out.append("|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 1)) + "|")
        for row in rows:
            out.append("| " + " | ".join(row) + " |")
        out.append("")
        if quality := quality_rows(results, profile):
            out += [f"*{profile}: stored images*", "", "| " + " | ".join(QUALITY_HEADER) + " |"]
            out.append("|" + "|".join(["---"] + ["---:"] * (len(QUALITY_HEADER) - 1)) + "|")
            out += ["| " + " | ".join(row) + " |" for row in quality]
            out.append("")
        if dns := dns_rows(results, profile):
            out += [f"*{profile}: DNS*", "", "| " + " | ".join(DNS_HEADER) + " |"]
            out.append("|" + "|".join(["---"] + ["---:"] * (len(DNS_HEADER) - 1)) + "|")
            out += ["| " + " | ".join(row) + " |" for row in dns]
            out.append("")
    return "\n".join(out)


def targets(results: list[Result]) -> list[str]:
    """The issues' targets for each ldawt row under test, as PASS / FAIL lines."""
    lines = []
    for r in results:
        if not r.is_ldawt or r.baseline:
            continue
        label = f"{r.client} [{r.profile}]"
        if r.skipped:
            lines.append(f"{label}: not measured ({r.skipped})")
            continue
        if r.profile in TRANSFORM_PROFILES:
            checks = _transform_checks(results, r)
        elif r.profile == "hosts":
            checks = _hosts_checks(results, r)
        else:
            checks = _download_checks(results, r)
        for text, ok in checks:
            lines.append(f"{label}: {'PASS' if ok else 'FAIL'}  {text}")
    return lines


def _download_checks(results: list[Result], r: Result) -> list[tuple[str, bool]]:
    """Issue 2's targets; issue 11's: no more than 5% images/s lost against the baseline
    revision's row with the same arguments (when measured); issue 14's: the default engine's
    images/s against img2dataset's (plain, small) and the bare client's (tls), and every row's
    CPU per image against the bare client's (plain, small)."""
    best = img2dataset_best(results, r.profile)
    bare = bare_row(results, r.profile)
    checks = []
    want = TARGET_SPEEDUP_14 if r.profile != "tls" and not r.variant else TARGET_SPEEDUP
    if best:
        x = r.rate / best.rate
        checks.append((f"images/s {x:.2f}x img2dataset best (>= {want}x)", x >= want))
    cpu = r.cpu_ms_per_image
    cpu_text = "-" if cpu is None else f"{cpu:.2f}"
    if r.profile == "plain":
        ok = cpu is not None and cpu <= TARGET_CPU_MS
        checks.append((f"CPU {cpu_text} ms/image (<= {TARGET_CPU_MS}; issue 2)", ok))
    if bare is not None and r.profile != "tls":
        x = (cpu or 0) / (bare.cpu_ms_per_image or 1)
        text = (
            f"CPU {cpu_text} ms/image = {x:.2f}x the bare client's "
            f"{bare.cpu_ms_per_image:.2f} (<= {TARGET_CPU_X_BARE}x)"
        )
        checks.append((text, cpu is not None and x <= TARGET_CPU_X_BARE))
    if bare is not None and r.profile == "tls" and not r.variant:
        x = r.rate / bare.rate
        text = (
            f"images/s {r.rate:,.0f} = {x:.0%} of the bare client's {bare.rate:,.0f} "
            f"(>= {TARGET_TLS_OF_BARE:.0%})"
        )
        checks.append((text, x >= TARGET_TLS_OF_BARE))
    rss_mb = r.peak_rss / 1e6
    tree = f"process tree of {r.procs}" if r.procs > 1 else "one process"
    text = f"peak RSS {rss_mb:.0f} MB, {tree} (<= {TARGET_RSS_MB:.0f})"
    checks.append((text, rss_mb <= TARGET_RSS_MB))
    if r.procs > 1:
        one_mb = r.peak_proc_rss / 1e6
        text = f"largest single process {one_mb:.0f} MB (<= {TARGET_RSS_MB:.0f}; for information)"
        checks.append((text, one_mb <= TARGET_RSS_MB))
    checks.append((f"rows in manifests {r.accounted}/{r.rows}", r.accounted == r.rows))
    base = next(
        (
            b
            for b in results
            if b.baseline and b.profile == r.profile and b.variant == r.variant and b.ok
        ),
        None,
    )
    if base is not None:
        change = r.rate / base.rate - 1
        text = (
            f"images/s {r.rate:,.0f} vs {base.rate:,.0f} at {base.baseline} ({change:+.1%}; "
            f"issue 11: loss <= {TARGET_NO_TRANSFORM_LOSS:.0%})"
        )
        checks.append((text, change >= -TARGET_NO_TRANSFORM_LOSS))
    return checks


def _hosts_checks(results: list[Result], r: Result) -> list[tuple[str, bool]]:
    """Issue 12's targets for one ldawt row of the many-host profile."""
    checks = []
    if best := img2dataset_best(results, r.profile):
        x = r.rate / best.rate
        text = f"images/s {x:.2f}x img2dataset best (>= {TARGET_HOSTS_SPEEDUP:.0f}x)"
        checks.append((text, x >= TARGET_HOSTS_SPEEDUP))
    most = r.dns["max_per_host"] if r.dns else None
    text = f"DNS queries per distinct host: at most {most} (<= {TARGET_QUERIES_PER_HOST})"
    checks.append((text, most is not None and most <= TARGET_QUERIES_PER_HOST))
    text = f"dns_error rows on names that resolve: {r.dns_errors} (0)"
    checks.append((text, r.dns_errors == 0))
    checks.append((f"rows in manifests {r.accounted}/{r.rows}", r.accounted == r.rows))
    return checks


def _transform_checks(results: list[Result], r: Result) -> list[tuple[str, bool]]:
    """Issue 11's targets for one ldawt row of a transform profile."""
    checks = []
    best = img2dataset_best(results, r.profile)
    want = TARGET_TRANSFORM_SPEEDUP[r.profile]
    if best:
        x = r.rate / best.rate
        text = f"images/s {x:.2f}x img2dataset ({r.rate:,.0f} vs {best.rate:,.0f}; >= {want:g}x)"
        mine, theirs = r.cpu_ms_per_image, best.cpu_ms_per_image
        if mine and theirs:  # less sensitive to other load on the machine than images/s
            text += (
                f"; for information, CPU per image {mine:.1f} vs {theirs:.1f} ms = "
                f"{theirs / mine:.2f}x"
            )
        checks.append((text, x >= want))
    q = r.quality or {}
    if "compared" in q:
        equal = q["same"] + q["transposed"]
        text = (
            f"output size = img2dataset's for {equal:,}/{q['compared']:,} images "
            f"({q['transposed']:,} from EXIF-rotated originals, compared transposed; "
            f"{q['missing']:,} of img2dataset's missing, {q['extra']:,} extra)"
        )
        checks.append((text, q["differs"] == 0 and q["missing"] == 0 and q["compared"] > 0))
    if q.get("psnr_vs_base") is not None:
        base_db = q["psnr_mean"] - q["psnr_vs_base"]
        text = (
            f"mean PSNR {q['psnr_mean']:.2f} dB vs img2dataset {base_db:.2f} dB "
            f"({q['psnr_vs_base']:+.2f}; >= -{TARGET_PSNR_DROP_DB}) over {q['psnr_sources']} "
            "distinct originals"
        )
        checks.append((text, q["psnr_vs_base"] >= -TARGET_PSNR_DROP_DB))
    if q.get("manifest_checked"):
        text = (
            f"manifest width/height = stored image for "
            f"{q['manifest_checked'] - q['manifest_differs']:,}/{q['manifest_checked']:,}"
        )
        checks.append((text, q["manifest_differs"] == 0))
    elif q:
        checks.append((f"manifest width/height: {q['manifest_note']}", False))
    rss_mb = r.peak_rss / 1e6
    if r.procs == 1:
        text = f"peak RSS {rss_mb:.0f} MB, one process (<= {TARGET_TRANSFORM_RSS_MB:.0f})"
        checks.append((text, rss_mb <= TARGET_TRANSFORM_RSS_MB))
    else:
        one_mb = r.peak_proc_rss / 1e6
        text = (
            f"largest single process {one_mb:.0f} MB (<= {TARGET_TRANSFORM_RSS_MB:.0f}; for "
            f"information: the tree of {r.procs} holds {rss_mb:.0f} MB)"
        )
        checks.append((text, one_mb <= TARGET_TRANSFORM_RSS_MB))
    checks.append((f"rows in manifests {r.accounted}/{r.rows}", r.accounted == r.rows))
    return checks
