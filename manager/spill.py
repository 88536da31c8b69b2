"""Spill files: tables too large for memory written out by bucket, read back one bucket at a
time (the planner's partitions and blocks, the host counts)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc


class Spill:
    """Arrow IPC files under one folder, one per integer bucket, opened on first write."""

    def __init__(self, folder: Path, schema: pa.Schema) -> None:
        self.folder = folder
        self.schema = schema
        self._writers: dict[int, ipc.RecordBatchFileWriter] = {}
        folder.mkdir(parents=True)

    def write(self, table: pa.Table, buckets: pa.Array) -> None:
        """Append the rows of ``table`` to the files named by ``buckets`` (one per row)."""
        if table.num_rows == 0:
            return
        order = pc.sort_indices(buckets)
        table, buckets = table.take(order), buckets.take(order)
        values = pc.value_counts(buckets)
        start = 0
        for item in sorted(values.to_pylist(), key=lambda v: v["values"]):
            bucket, count = item["values"], item["counts"]
            self._writer(bucket).write_table(table.slice(start, count))
            start += count

    def _writer(self, bucket: int) -> ipc.RecordBatchFileWriter:
        if bucket not in self._writers:
            self._writers[bucket] = ipc.new_file(self.folder / f"{bucket:06d}.arrow", self.schema)
        return self._writers[bucket]

    def close(self) -> list[int]:
        for writer in self._writers.values():
            writer.close()
        return sorted(self._writers)

    def read(self, bucket: int) -> pa.Table:
        with pa.memory_map(str(self.folder / f"{bucket:06d}.arrow")) as source:
            return ipc.open_file(source).read_all()
