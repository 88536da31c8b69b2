"""Engines run shard specs somewhere and yield their results as they finish.

Every engine has ``run(specs, progress) -> Iterator[result]``; ``progress`` receives the
in-shard count deltas when the engine can see them (the local engine can).
"""
