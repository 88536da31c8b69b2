"""The loopback origin: one nginx (Debian package) with its servers on loopback addresses.

* profile 1, ``plain``: HTTP, files straight from the page cache with sendfile;
* more corpora over HTTP like profile 1, each on a port of its own (``extra``): the small-image
  profile's, and the transform profiles' larger photo-like JPEGs of ``bench/photos.py``;
* profile 2, ``tls``: HTTPS with a self-signed certificate (made with openssl) and a
  non-blocking 40 ms ``echo_sleep`` (libnginx-mod-http-echo) before ``echo_exec`` hands the
  request to the static file handler, so the delay comes before the first byte and the body,
  Content-Length and keep-alive are those of a plain static file;
* profile 4, ``hosts`` (only when ``hosts`` is given): profile 2's server on port 443 of many
  loopback addresses, with a wildcard certificate (``bench/many_hosts.py``).

nginx runs as a non-daemon child of the harness with its own prefix, pid and log files under
the work folder; :meth:`Origin.stop` (also called from ``__exit__``) ends it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"
PHOTO_RE = r"^/photos/\d*(\d{3})/[^/]+$"  # last three digits of the photo id -> by3/NNN.jpg

CONFIG = """\
load_module {echo_module};
worker_processes {workers};
worker_rlimit_nofile 16384;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    server_tokens off;
    types {{ }}
    default_type image/jpeg;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    open_file_cache max=4096 inactive=120s;
    client_body_temp_path {work}/tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;

    server {{
        listen 127.0.0.1:{http_port} backlog=4096;
        root {corpus};
        location ~ "{photo_re}" {{ alias {corpus}/by3/$1.jpg; }}
        location / {{ return 404; }}
    }}
{tls_server}{extra_servers}{hosts_server}}}
"""
EXTRA_SERVER = """
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {corpus};
        location ~ "{photo_re}" {{ alias {corpus}/by3/$1.jpg; }}
        location / {{ return 404; }}
    }}
"""
TLS_SERVER = """
    server {{
{listens}
        root {corpus};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:TLS:20m;
        location ~ "{photo_re}" {{
            echo_sleep {delay_s};
            echo_exec /by3/$1.jpg;
        }}
        location /by3/ {{ internal; }}
        location / {{ return 404; }}
    }}
"""
"""Profile 2's server; the many-host profile's too, on port 443 of each of its addresses."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (nginx cannot listen on port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificate(work: Path) -> tuple[Path, Path]:
    """A self-signed RSA-2048 certificate for 127.0.0.1 (IP SAN), reused when present."""
    cert, key = work / "test-cert.pem", work / "test-key.pem"
    if cert.exists() and key.exists():
        return cert, key
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
            "-days", "3650", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


@dataclass
class Origin:
    """A running (or not yet started) nginx origin."""

    work: Path
    corpus: Path
    delay_s: float = 0.040
    workers: int = 2
    extra: dict[str, Path] = field(default_factory=dict)
    """More corpora by name ("small", "transform"), each served over HTTP on its own port."""
    hosts: tuple[list[str], Path, Path] | None = None
    """The many-host profile: (addresses, wildcard certificate, key); HTTPS on port 443 of
    every address, with the TLS server's delay (None: no server)."""
    http_port: int = 0
    https_port: int = 0
    extra_ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https_base(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def base(self, name: str) -> str:
        """The base URL of the server of the extra corpus ``name``."""
        return f"http://127.0.0.1:{self.extra_ports[name]}"

    @property
    def cert(self) -> Path:
        return self.work / "test-cert.pem"

    def start(self, attempts: int = 5) -> None:
        cert, key = make_certificate(self.work)
        for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        last_err = ""
        for _ in range(attempts):  # a free port can be taken between probe and bind: retry
            self.http_port, self.https_port = free_port(), free_port()
            self.extra_ports = {name: free_port() for name in self.extra}
            extra_servers = "".join(
                EXTRA_SERVER.format(port=port, corpus=self.extra[name].resolve(), photo_re=PHOTO_RE)
                for name, port in self.extra_ports.items()
            )
            tls_server = self._tls_server(
                [f"127.0.0.1:{self.https_port} ssl backlog=4096"], cert, key
            )
            hosts_server = ""
            if self.hosts is not None:
                addresses, hosts_cert, hosts_key = self.hosts
                listens = [f"{address}:443 ssl" for address in addresses]
                hosts_server = self._tls_server(listens, hosts_cert, hosts_key)
            conf = self.work / "nginx.conf"
            conf.write_text(
                CONFIG.format(
                    echo_module=ECHO_MODULE,
                    workers=self.workers,
                    work=self.work,
                    corpus=self.corpus.resolve(),
                    http_port=self.http_port,
                    photo_re=PHOTO_RE,
                    tls_server=tls_server,
                    extra_servers=extra_servers,
                    hosts_server=hosts_server,
                )
            )
            log = open(self.work / "nginx.stderr", "wb")  # noqa: SIM115 (kept by the child)
            self.proc = subprocess.Popen(
                [
                    "nginx",
                    "-p",
                    str(self.work),
                    "-e",
                    str(self.work / "error.log"),
                    "-c",
                    str(conf),
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            log.close()
            if self._wait_listening(timeout_s=10):
                return
            last_err = (self.work / "error.log").read_text(errors="replace")[-2000:]
            self.stop()
        raise RuntimeError(f"nginx did not start; error.log tail:\n{last_err}")

    def _tls_server(self, listens: list[str], cert: Path, key: Path) -> str:
        return TLS_SERVER.format(
            listens="\n".join(f"        listen {listen};" for listen in listens),
            corpus=self.corpus.resolve(),
            cert=cert,
            key=key,
            delay_s=f"{self.delay_s:.3f}",
            photo_re=PHOTO_RE,
        )

    def _wait_listening(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                for port in (self.http_port, self.https_port, *self.extra_ports.values()):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                for address in self.hosts[0] if self.hosts else ():
                    socket.create_connection((address, 443), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop nginx (TERM = fast shutdown, then KILL of its process group if needed)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def cpu_seconds(self) -> float:
        """User + system CPU of nginx's master and workers so far."""
        import psutil

        if self.proc is None:
            return 0.0
        total = 0.0
        try:
            master = psutil.Process(self.proc.pid)
            for p in [master, *master.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
        except psutil.Error:
            pass
        return total

    def __enter__(self) -> Origin:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def verify(self, paths: list[str], corpus_file, extra_files: dict | None = None) -> dict:
        """Fetch ``paths`` from every server over one keep-alive connection each and check:
        status, Content-Type, Content-Length, body == the corpus file (SHA-256; ``corpus_file``,
        or ``extra_files[name]`` for an extra server), the connection was reused, and only
        the TLS server waits ``delay_s`` before the first byte of every response (reused
        connection included). Returns the first-byte times; raises otherwise."""
        ctx = ssl.create_default_context(cafile=str(self.cert))
        extra_files = extra_files or {}
        ttfb: dict[str, list[float]] = {"plain": [], "tls": []}
        ttfb.update({name: [] for name in extra_files})
        for name in ttfb:
            if name == "tls":
                conn = http.client.HTTPSConnection(
                    "127.0.0.1", self.https_port, timeout=10, context=ctx
                )
            else:
                port = self.extra_ports.get(name, self.http_port)
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            expected = extra_files.get(name, corpus_file)
            conn.connect()  # the TLS handshake is not part of the first-byte times
            sock = conn.sock
            try:
                for path in paths:
                    t0 = time.perf_counter()
                    conn.request("GET", path)
                    resp = conn.getresponse()  # returns once the status line and headers arrived
                    t1 = time.perf_counter()
                    body = resp.read()
                    if resp.status != 200 or resp.getheader("Content-Type") != "image/jpeg":
                        raise RuntimeError(f"{name} {path}: {resp.status} {resp.getheaders()}")
                    if int(resp.getheader("Content-Length", "-1")) != len(body):
                        raise RuntimeError(f"{name} {path}: Content-Length is not the body's")
                    want = hashlib.sha256(expected(path).read_bytes()).hexdigest()
                    if hashlib.sha256(body).hexdigest() != want or body[:3] != b"\xff\xd8\xff":
                        raise RuntimeError(f"{name} {path}: body is not the corpus JPEG")
                    if conn.sock is not sock:
                        raise RuntimeError(f"{name}: the connection was not kept alive")
                    ttfb[name].append(t1 - t0)
            finally:
                conn.close()
        if min(ttfb["tls"]) < self.delay_s * 0.95:
            raise RuntimeError(f"TLS first byte came before the delay: {ttfb['tls']}")
        for name in ttfb.keys() - {"tls"}:
            if max(ttfb[name]) > self.delay_s / 2:
                raise RuntimeError(f"{name} first byte is slow: {ttfb[name]}")
        return {k: sorted(v) for k, v in ttfb.items()}
