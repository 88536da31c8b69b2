"""Pack a shard: its tar, manifest and stats. Each file is written under a partial name and
renamed once complete (``ldawt.daemon.contract.write_atomically``), so a file with its final
name is always whole."""
