"""`ldawt-manager demo`: a whole job offline. A loopback origin serves generated JPEGs (with a
few deterministic failures) for a URL list whose hosts are rewritten to it."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from aiohttp import web

from .errors import InputError
from .images import make_jpeg
from .inputs import (
    ColumnMap,
    InputFile,
    InputSource,
    check_files,
    iter_batches,
    list_input_files,
    read_schema,
    resolve_columns,
)
from .job import Job

LISTING_NAME = "demo_input.parquet"

DEMO_CLASSES = (
    "Danaus plexippus",
    "Apis mellifera",
    "Quercus robur",
    "Turdus merula",
    "Amanita muscaria",
)


def _fate(path: str) -> int:
    """A stable number in [0, 100) per path, choosing what the origin does with it."""
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "big") % 100


async def _serve(request: web.Request) -> web.StreamResponse:
    path = request.path
    fate = _fate(path)
    if fate < 3:
        raise web.HTTPNotFound()
    if fate < 4:
        return web.Response(
            text="<html><body>Sign in to view this photo</body></html>", content_type="text/html"
        )
    size = 20_000 + fate * 1_000
    return web.Response(body=make_jpeg(path, size), content_type="image/jpeg")


def demo_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _serve)
    return app


@contextmanager
def serve_in_background(app: web.Application) -> Iterator[int]:
    """Serve ``app`` on 127.0.0.1 (a free port) from a background thread; yields the port."""
    loop = asyncio.new_event_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    # A short shutdown timeout: stalled test handlers must not hold up the origin's exit.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, listener).start())
    thread = threading.Thread(target=loop.run_forever, name="http-origin", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.run_until_complete(_cancel_leftover_tasks())
        loop.close()


async def _cancel_leftover_tasks() -> None:
    """Cancel the handlers still stalled past the runner's shutdown timeout."""
    leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)


def check_folder(out: Path, listing: Path) -> None:
    """Refuse ``out`` when it holds a job the demo did not make: the demo starts its job afresh
    each time (its origin's port, hence every URL, is new), which would discard that job. The
    demo's own jobs are planned from its ``listing``; a job whose planning did not finish is
    the demo's when that listing is there."""
    job = Job(out)
    if not job.exists():
        return
    with job.open_ledger() as ledger:
        identity = ledger.meta("identity")
    if identity is None:
        if listing.exists():
            return
        raise InputError(
            f"{out} holds an ldawt job whose planning did not finish, not one the demo made; "
            "the demo would discard it. Give the demo another --out, or pass --force-new to "
            "discard that job"
        )
    inputs = [i["path"] for i in identity.get("inputs", [])]
    if inputs != [str(listing.resolve())]:
        raise InputError(
            f"{out} holds a job planned from {', '.join(inputs) or 'unknown inputs'}, not one "
            "the demo made there; the demo starts afresh each time, so it would discard that job. "
            "Give the demo another --out, or pass --force-new to discard that job"
        )


def check_input(source: InputSource | Path, url_col: str) -> list[InputFile]:
    """The table files of a real URL list (a table file or a folder of them, local or at a
    URL, in any format ``inputs`` reads), each with a text ``url_col``; an ``InputError`` says
    what is wrong otherwise."""
    files = list_input_files(source)
    schema = read_schema(files[0])
    resolve_columns(schema, url_col, None, None)
    check_files(files, ColumnMap(url_col, None, None, tuple(schema.names)))
    return files


def _first_rows(source: InputSource | Path, rows: int, url_col: str) -> pa.Table:
    files = check_input(source, url_col)
    names = read_schema(files[0]).names
    tables: list[pa.Table] = []
    taken = 0
    for path in files:
        for batch in iter_batches(path, names):
            tables.append(pa.Table.from_batches([batch.slice(0, rows - taken)]))
            taken += tables[-1].num_rows
            if taken == rows:
                break
        if taken == rows:
            break
    if not taken:
        raise InputError(f"{source} holds no rows")
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"the files of {source} do not hold the same column types: {exc}") from exc


def rewrite_hosts(
    source: InputSource | Path | None, rows: int, port: int, url_col: str, destination: Path
) -> Path:
    """Copy the first ``rows`` rows of ``source`` with URL hosts pointed at the demo origin, or
    synthesise a list when there is no source."""
    if source is None:
        table = pa.table(
            {
                url_col: [f"http://127.0.0.1:{port}/photos/{i}/medium.jpg" for i in range(rows)],
                "taxon_name": [DEMO_CLASSES[i % len(DEMO_CLASSES)] for i in range(rows)],
                "photo_id": list(range(rows)),
            }
        )
    else:
        table = _first_rows(source, rows, url_col)
        urls = [
            None if u is None else f"http://127.0.0.1:{port}{urlsplit(u).path}"
            for u in table.column(url_col).to_pylist()
        ]
        table = table.set_column(
            table.schema.get_field_index(url_col), url_col, pa.array(urls, pa.string())
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, destination)
    return destination
