"""Pack a shard: its tar, manifest and stats. Each file is written under a partial name and
renamed once complete, so a file with its final name is always whole."""

from pathlib import Path


def partial_path(final: Path) -> Path:
    """Where ``final`` is written until it is complete."""
    return final.with_name(final.name + ".partial")
