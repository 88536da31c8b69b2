"""The Python ceiling: a bare aiohttp + uvloop downloader with N requests in flight over
keep-alive connections. It either discards the bodies or appends them to one tar with
``tarfile`` (synchronously, on the event loop: the naive way). Prints one JSON line.

    python bench/bare_client.py --input urls.txt [--tar out.tar] [--cafile cert.pem]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import ssl
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Iterator

import aiohttp


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True, help="URLs: a .txt (one per line) or .parquet")
    ap.add_argument("--url-col", default="photo_url")
    ap.add_argument("--concurrency", type=int, default=256, help="requests in flight")
    ap.add_argument("--tar", help="write the bodies into this tar (default: discard)")
    ap.add_argument("--cafile", help="trust only this certificate file for https")
    ap.add_argument("--timeout", type=float, default=30.0, help="total seconds per request")
    return ap.parse_args(argv)


async def _download(args: argparse.Namespace, urls: list[str]) -> dict:
    ssl_ctx: ssl.SSLContext | bool = True
    if args.cafile:
        ssl_ctx = ssl.create_default_context(cafile=args.cafile)
    connector = aiohttp.TCPConnector(
        limit=args.concurrency, limit_per_host=0, ssl=ssl_ctx, ttl_dns_cache=300
    )
    timeout = aiohttp.ClientTimeout(total=args.timeout, sock_connect=10, sock_read=10)
    tar = tarfile.open(args.tar, "w") if args.tar else None  # noqa: SIM115 (closed below)
    counts: Counter[str] = Counter()
    nbytes = 0
    todo: Iterator[tuple[int, str]] = iter(enumerate(urls))

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal nbytes
        for i, url in todo:  # the shared iterator hands each row to exactly one worker
            try:
                async with session.get(url) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        counts[f"http_{resp.status}"] += 1
                        continue
            except (aiohttp.ClientError, TimeoutError) as e:
                counts[type(e).__name__] += 1
                continue
            counts["ok"] += 1
            nbytes += len(body)
            if tar is not None:
                info = tarfile.TarInfo(f"{i:08d}.jpg")
                info.size = len(body)
                info.mtime = int(time.time())
                tar.addfile(info, io.BytesIO(body))

    t0 = time.perf_counter()
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
    finally:
        if tar is not None:
            tar.close()
    elapsed = time.perf_counter() - t0
    return {
        "rows": len(urls),
        "ok": counts.pop("ok", 0),
        "failed": dict(counts),
        "bytes": nbytes,
        "elapsed_s": round(elapsed, 3),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.input.endswith(".parquet"):
        import pyarrow.parquet as pq  # about 60 MB of RSS: the harness passes a .txt

        urls = pq.read_table(args.input, columns=[args.url_col]).column(0).to_pylist()
    else:
        with open(args.input) as f:
            urls = [line.strip() for line in f if line.strip()]
    try:
        import uvloop

        result = uvloop.run(_download(args, urls))
    except ImportError:
        result = asyncio.run(_download(args, urls))
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] == result["rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
