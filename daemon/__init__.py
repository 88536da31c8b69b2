"""ldawt's worker side: fetch images, pack them into a shard's tar, report metrics."""

import os

# Arrow chooses its allocator once, when pyarrow is first imported. Its default in current
# wheels, mimalloc, keeps freed segments and backs them with transparent huge pages; measured
# with jemalloc instead (bench/RESULTS.md), a download process peaks about 50 MB lower and
# planning 10 million rows 80-150 MB lower, at the same speed. A user's own setting wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
