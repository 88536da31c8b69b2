"""Result rows, the side-by-side table, ratios to img2dataset's best, and the issue's targets."""

from __future__ import annotations

from dataclasses import asdict, dataclass

PROFILE_TITLES = {
    "plain": "profile 1: HTTP on 127.0.0.1",
    "tls": "profile 2: HTTPS (self-signed) + 40 ms before first byte",
}
TARGET_SPEEDUP = 2.2
TARGET_CPU_MS = 0.6
TARGET_RSS_MB = 250.0


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


HEADER = [
    "client", "rows", "ok", "in manifest", "wall s", "images/s", "MB/s",
    "CPU s/1k img", "peak RSS MB", "peak PSS MB", "1-proc RSS MB", "procs",
    "x img2dataset best", "other CPU",
]  # fmt: skip


def table_rows(results: list[Result], profile: str) -> list[list[str]]:
    best = img2dataset_best(results, profile)
    out = []
    for r in results:
        if r.profile != profile:
            continue
        if r.skipped:
            out.append([r.client, f"{r.rows:,}", "skipped: " + r.skipped] + [""] * 11)
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
                "-" if r.other_cpu is None else f"{r.other_cpu:.0%}",
            ]
        )
    return out


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
    return "\n".join(out)


def targets(results: list[Result]) -> list[str]:
    """The issue's targets for each ldawt row, as PASS / FAIL lines."""
    lines = []
    for r in results:
        if not r.is_ldawt:
            continue
        label = f"{r.client} [{r.profile}]"
        if r.skipped:
            lines.append(f"{label}: not measured ({r.skipped})")
            continue
        best = img2dataset_best(results, r.profile)
        checks = []
        if best:
            x = r.rate / best.rate
            checks.append(
                (f"images/s {x:.2f}x img2dataset best (>= {TARGET_SPEEDUP}x)", x >= TARGET_SPEEDUP)
            )
        cpu = r.cpu_ms_per_image
        if r.profile == "plain":
            cpu_text = "-" if cpu is None else f"{cpu:.2f}"
            ok = cpu is not None and cpu <= TARGET_CPU_MS
            checks.append((f"CPU {cpu_text} ms/image (<= {TARGET_CPU_MS})", ok))
        rss_mb = r.peak_rss / 1e6
        tree = f"process tree of {r.procs}" if r.procs > 1 else "one process"
        text = f"peak RSS {rss_mb:.0f} MB, {tree} (<= {TARGET_RSS_MB:.0f})"
        checks.append((text, rss_mb <= TARGET_RSS_MB))
        if r.procs > 1:
            one_mb = r.peak_proc_rss / 1e6
            text = (
                f"largest single process {one_mb:.0f} MB (<= {TARGET_RSS_MB:.0f}; for information)"
            )
            checks.append((text, one_mb <= TARGET_RSS_MB))
        checks.append((f"rows in manifests {r.accounted}/{r.rows}", r.accounted == r.rows))
        for text, ok in checks:
            lines.append(f"{label}: {'PASS' if ok else 'FAIL'}  {text}")
    return lines
