"""``python -m ldawt.daemon.worker``: ``ldawt-worker`` without its console script (the TaskVine
engine starts its local workers this way, with its own interpreter)."""

import sys

from .cli import main

sys.exit(main())
