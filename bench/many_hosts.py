"""The many-host profile (``hosts``, issue 12): 2,000 host names behind a real DNS server.

* names ``h0001.img.test`` .. ``h2000.img.test`` over 250 loopback addresses 127.70.0.1-250,
  every 100th rank from 10 answering NXDOMAIN and every 100th from 20 answered by a slow
  authoritative responder (300 ms) behind unbound (``tests/dns_server.py``);
* the URL list's rows spread over those names Zipf-like (weight 1/rank: a few heavy hosts, a
  long tail), paths kept, so nginx serves the same corpus as the other profiles;
* HTTPS with one wildcard certificate ``*.img.test`` signed by a CA made here, which the
  clients trust (and only it), and 40 ms before the first byte, as profile 2.

Every client runs in a private mount namespace whose /etc/resolv.conf names that unbound.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dns_server import Unbound, Zone, in_namespace

DOMAIN = "img.test"
HOSTS = 2_000
ADDRESSES = [f"127.70.0.{i}" for i in range(1, 251)]
NXDOMAIN_RANKS = range(10, HOSTS + 1, 100)
SLOW_RANKS = range(20, HOSTS + 1, 100)
SLOW_DELAY_S = 0.3
DNS_ADDRESS = "127.53.0.1"
SEED = 12


def host_name(rank: int) -> str:
    return f"h{rank:04d}.{DOMAIN}"


def zone() -> Zone:
    nxdomain = {host_name(r) for r in NXDOMAIN_RANKS}
    names = [host_name(r) for r in range(1, HOSTS + 1) if host_name(r) not in nxdomain]
    return Zone(
        DOMAIN,
        {name: ADDRESSES[i % len(ADDRESSES)] for i, name in enumerate(names)},
        nxdomain,
        {host_name(r) for r in SLOW_RANKS},
    )


def server(work: Path) -> Unbound:
    return Unbound(zone(), work / "dns", DNS_ADDRESS, SLOW_DELAY_S)


def zipf_hosts(rows: int) -> list[str]:
    weights = [1 / rank for rank in range(1, HOSTS + 1)]
    ranks = random.Random(SEED).choices(range(1, HOSTS + 1), weights=weights, k=rows)
    return [host_name(r) for r in ranks]


def write_url_list(source: Path, rows: int, out_dir: Path) -> dict[str, Path]:
    """``urls_hosts_<rows>.parquet`` (and ``.txt``): the first ``rows`` rows of ``source`` with
    photo_url's scheme and host replaced by ``https://<Zipf-drawn name>``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(source).slice(0, rows)
    if table.num_rows < rows:
        raise SystemExit(f"{source} has only {table.num_rows} rows, {rows} asked")
    urls = [
        f"https://{host}{urlsplit(url).path}"
        for host, url in zip(zipf_hosts(rows), table.column("photo_url").to_pylist(), strict=True)
    ]
    idx = table.schema.get_field_index("photo_url")
    table = table.set_column(idx, pa.field("photo_url", pa.string()), pa.array(urls))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"urls_hosts_{rows}.parquet"
    pq.write_table(table, path)
    txt = path.with_suffix(".txt")
    txt.write_text("\n".join(urls) + "\n")
    return {"hosts": path, "hosts_txt": txt}


def make_wildcard_certificate(work: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, leaf certificate for ``*.img.test``, leaf key), reused when present."""
    ca, ca_key = work / "hosts-ca.pem", work / "hosts-ca-key.pem"
    cert, key = work / "hosts-cert.pem", work / "hosts-key.pem"
    if all(p.exists() for p in (ca, cert, key)):
        return ca, cert, key
    work.mkdir(parents=True, exist_ok=True)
    csr, ext = work / "hosts.csr", work / "hosts-ext.cnf"
    ext.write_text(f"subjectAltName=DNS:*.{DOMAIN}\nbasicConstraints=CA:FALSE\n")
    for cmd in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
         "-subj", "/CN=ldawt bench CA", "-keyout", ca_key, "-out", ca],
        ["req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
         "-subj", f"/CN=*.{DOMAIN}", "-keyout", key, "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-days", "3650", "-sha256", "-extfile", ext, "-out", cert],
    ):  # fmt: skip
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True, timeout=60)
    return ca, cert, key


def wrap(job, dns: Unbound, ca: Path) -> None:
    """Run ``job`` in the namespace that resolves through ``dns``, trusting ``ca``."""
    job.cmd = in_namespace(job.cmd, dns.resolv_conf)
    job.env.update(SSL_CERT_FILE=str(ca), REQUESTS_CA_BUNDLE=str(ca))


def dns_summary(queries: Counter[str], hosts_in_rows: set[str]) -> dict:
    """What the server answered during one row, per distinct host of the URL list."""
    per_host = [queries.get(h, 0) for h in hosts_in_rows]
    return {
        "queries": sum(queries.values()),
        "hosts": len(hosts_in_rows),
        "max_per_host": max(per_host, default=0),
        "hosts_over_2": sum(n > 2 for n in per_host),
        "per_host": sum(per_host) / len(per_host) if per_host else 0.0,
    }


def dns_errors_on_resolving_names(out_dir: Path) -> int | None:
    """ldawt rows with status dns_error whose name does resolve (from its manifests)."""
    import pyarrow.parquet as pq

    manifests = sorted(out_dir.rglob("*.manifest.parquet"))
    if not manifests:
        return None
    dead = zone().nxdomain
    count = 0
    for path in manifests:
        t = pq.read_table(path, columns=["url", "status"])
        for url, status in zip(t["url"].to_pylist(), t["status"].to_pylist(), strict=True):
            count += status == "dns_error" and urlsplit(url).hostname not in dead
    return count
