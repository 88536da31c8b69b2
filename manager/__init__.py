"""ldawt's job side: plan shards, run them on an engine, keep the ledger, report."""

import ldawt.daemon  # noqa: F401  (first: it sets Arrow's allocator before pyarrow loads)
