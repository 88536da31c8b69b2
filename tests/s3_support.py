"""A real S3-protocol server for the tests: moto's server (``pip install 'moto[server]'``) on
127.0.0.1, in a thread of the test process or, for the credential checks, as a subprocess (moto
checks credentials only when told so at start-up, for the whole process)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

KEY, SECRET, REGION = "testing-key", "testing-secret", "us-east-1"
PART_BYTES = 5 * 1024 * 1024  # S3's smallest multipart part


@dataclass
class S3Server:
    endpoint: str
    slow_parts_s: float = 0.0
    """While set, each multipart part waits this long before moto takes it (a window in which
    an upload is known to be in progress)."""
    parts_seen: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a process using the server through the standard variables."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ACCESS_KEY_ID=KEY,
            AWS_SECRET_ACCESS_KEY=SECRET,
            AWS_DEFAULT_REGION=REGION,
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_EC2_METADATA_DISABLED="true",
        )
        env.update(extra)
        return env

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            region_name=REGION,
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> dict[str, dict[str, Any]]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {o["Key"]: o for page in pages for o in page.get("Contents", [])}

    def uploads_in_progress(self, bucket: str) -> list[str]:
        answer = self.client().list_multipart_uploads(Bucket=bucket)
        return [u["Key"] for u in answer.get("Uploads", [])]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_s3() -> Iterator[S3Server]:
    """moto's S3 in a thread, with a hook that can slow multipart parts down."""
    pytest.importorskip("moto.server", reason="needs moto[server] (the test extras)")
    pytest.importorskip("s3fs", reason="needs s3fs (the s3 extra)")
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    app = DomainDispatcherApplication(create_backend_app)
    server_state: list[S3Server] = []

    def middleware(environ: dict[str, Any], start_response: Any) -> Any:
        state = server_state[0]
        if "partNumber=" in environ.get("QUERY_STRING", ""):
            with state._lock:
                state.parts_seen += 1
            if state.slow_parts_s:
                time.sleep(state.slow_parts_s)
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, middleware, threaded=True, request_handler=QuietHandler)
    state = S3Server(f"http://127.0.0.1:{server.server_port}")
    server_state.append(state)
    thread = threading.Thread(target=server.serve_forever, name="moto-s3", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        thread.join()


@contextmanager
def running_s3_checking_credentials() -> Iterator[S3Server]:
    """moto's server as a subprocess that authenticates every request: it knows no access key,
    so any credentials are wrong."""
    pytest.importorskip("moto.server", reason="needs moto[server] (the test extras)")
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("moto server did not start")
                time.sleep(0.05)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        process.kill()
        process.wait()
