"""A real DNS server on the loopback for many-host runs (tests and bench/run.py's hosts profile).

* :class:`Unbound`: Debian's unbound as a child process (``-d``, generated config) answering
  for a :class:`Zone`: names -> 127.x.y.z addresses, some names NXDOMAIN, some names forwarded to
  a :class:`SlowResponder` that answers after a delay. Every other name is refused, so nothing
  leaves the loopback. ``log-queries`` logs every query received: :meth:`Unbound.queries`
  counts them per name.
* :func:`in_namespace`: a command run in a private mount namespace whose /etc/resolv.conf names
  that server; the machine's own resolver is untouched.

Stdlib only (the bench imports it from its own venv).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

TTL_S = 3600
QUERY_LINE = re.compile(r"info: \S+ (\S+?)\.? (A|AAAA) IN$")


@dataclass
class Zone:
    """What the server answers: ``names`` -> IPv4 address; ``nxdomain`` names do not exist;
    ``slow`` names (a subset of ``names``) come from the slow responder."""

    domain: str
    names: dict[str, str]
    nxdomain: set[str] = field(default_factory=set)
    slow: set[str] = field(default_factory=set)


def unbound_missing() -> str | None:
    """Why the real DNS server cannot run here, or None."""
    if shutil.which("unbound") is None:
        return "unbound is not installed (Debian package unbound)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    return None


class SlowResponder:
    """A tiny authoritative DNS server on UDP: A queries for known names answered after
    ``delay_s``, anything else NOERROR with no answer."""

    def __init__(self, names: dict[str, str], address: str, delay_s: float) -> None:
        self._names = {name.lower(): addr for name, addr in names.items()}
        self.delay_s = delay_s
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((address, 0))
        self._sock.settimeout(0.2)
        self.address = self._sock.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="slow-dns", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self._reply(query)
            if reply is not None:
                timer = threading.Timer(self.delay_s, self._send, (reply, peer))
                timer.daemon = True
                timer.start()

    def _send(self, reply: bytes, peer: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendto(reply, peer)

    def _reply(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        labels, pos = [], 12
        while pos < len(query) and query[pos]:
            length = query[pos]
            labels.append(query[pos + 1 : pos + 1 + length].decode("ascii", "replace"))
            pos += 1 + length
        end = pos + 5  # the zero label, QTYPE, QCLASS
        if end > len(query):
            return None
        qtype = struct.unpack("!H", query[pos + 1 : pos + 3])[0]
        address = self._names.get(".".join(labels).lower())
        answers = b""
        if qtype == 1 and address is not None:
            rdata = socket.inet_aton(address)
            answers = struct.pack("!HHHIH", 0xC00C, 1, 1, TTL_S, len(rdata)) + rdata
        rcode = 0 if address is not None else 3
        header = struct.pack("!HHHHHH", *struct.unpack("!H", query[:2]), 0x8400 | rcode, 1,
                             1 if answers else 0, 0, 0)  # fmt: skip
        return header + query[12:end] + answers

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


CONFIG = """\
server:
    interface: {address}
    port: 53
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{work}"
    pidfile: ""
    logfile: "{log}"
    use-syslog: no
    log-queries: yes
    verbosity: 0
    do-ip6: no
    num-threads: 1
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    local-zone: "." refuse
    local-zone: "{domain}." static
{local}
remote-control:
    control-enable: no
{forward}"""


class Unbound:
    """unbound serving ``zone`` on ``address``:53, its config and query log under ``work``."""

    def __init__(self, zone: Zone, work: Path, address: str, slow_delay_s: float = 0.3) -> None:
        self.zone, self.work, self.address = zone, work, address
        self.slow_delay_s = slow_delay_s
        self.log = work / "unbound-queries.log"
        self.resolv_conf = work / "resolv.conf"
        self.proc: subprocess.Popen | None = None
        self.slow: SlowResponder | None = None

    def _config(self) -> str:
        zone = self.zone
        local = [
            f'    local-data: "{name}. {TTL_S} IN A {addr}"'
            for name, addr in zone.names.items()
            if name not in zone.slow
        ]
        # a transparent zone with no data hands the name on to its forward-zone
        local += [f'    local-zone: "{name}." transparent' for name in sorted(zone.slow)]
        forward = ""
        if self.slow is not None:
            host, port = self.slow.address
            forward = "".join(
                f'forward-zone:\n    name: "{name}."\n    forward-addr: {host}@{port}\n'
                for name in sorted(zone.slow)
            )
        return CONFIG.format(
            address=self.address,
            work=self.work,
            log=self.log,
            domain=zone.domain,
            local="\n".join(local),
            forward=forward,
        )

    def start(self, timeout_s: float = 15.0) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        if self.zone.slow:
            slow_names = {n: self.zone.names[n] for n in self.zone.slow}
            self.slow = SlowResponder(slow_names, self.address, self.slow_delay_s)
        conf = self.work / "unbound.conf"
        conf.write_text(self._config())
        self.log.write_text("")
        self.resolv_conf.write_text(f"nameserver {self.address}\noptions timeout:2 attempts:2\n")
        stderr = open(self.work / "unbound.stderr", "wb")  # noqa: SIM115 (kept by the child)
        self.proc = subprocess.Popen(
            ["unbound", "-d", "-c", str(conf)],
            stdout=stderr,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        stderr.close()
        probe = next(iter(n for n in self.zone.names if n not in self.zone.slow), None)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if probe is None or self.ask(probe) is not None:
                self.log.write_text("")  # the probe is not the clients' query
                return
            time.sleep(0.1)
        tail = (self.work / "unbound.stderr").read_text(errors="replace")[-1500:]
        tail += self.log.read_text(errors="replace")[-1500:]
        self.stop()
        raise RuntimeError(f"unbound did not answer on {self.address}:53:\n{tail}")

    def ask(self, name: str) -> str | None:
        """The A record unbound gives for ``name`` (one UDP query), or None."""
        query = struct.pack("!HHHHHH", 0x1D5, 0x0100, 1, 0, 0, 0)
        query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
        query += struct.pack("!HH", 1, 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            try:
                s.sendto(query, (self.address, 53))
                reply = s.recv(4096)
            except OSError:
                return None
        answers = struct.unpack("!H", reply[6:8])[0]
        return socket.inet_ntoa(reply[-4:]) if answers else None

    def queries(self) -> Counter[str]:
        """A and AAAA queries received so far, per name (lower case, no trailing dot)."""
        counts: Counter[str] = Counter()
        for line in self.log.read_text(errors="replace").splitlines():
            match = QUERY_LINE.search(line)
            if match:
                counts[match.group(1).lower()] += 1
        return counts

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self.slow is not None:
            self.slow.close()
            self.slow = None

    def __enter__(self) -> Unbound:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def in_namespace(cmd: list[str], resolv_conf: Path) -> list[str]:
    """``cmd`` in a private mount namespace where /etc/resolv.conf is ``resolv_conf``."""
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    mount = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    return [*mount, str(resolv_conf), *cmd]
