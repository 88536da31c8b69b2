"""Config files (TOML or JSON) for the command line: their keys become option defaults, so flags
given on the command line still win.

Keys are option names with underscores or dashes (``shard_size``, ``shard-size``), plus the
seed's JSON keys. A key no command takes is an error naming the key.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import InputError

# The seed's keys: option name, and how its value converts.
SEED_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "parquets_directory": ("input", Path),
    "url_col": ("url_col", str),
    "class_col": ("class_col", str),
    "timeout_minutes": ("deadline", lambda minutes: float(minutes) * 60.0),
    "max_retries": ("shard_retries", int),
    "port_number": ("port", int),
}


def read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read config file {path}: {exc}") from exc
    try:
        values = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise InputError(f"config file {path} is not valid {kind}: {exc}") from exc
    if not isinstance(values, dict):
        raise InputError(f"config file {path} must hold a table of keys and values")
    return values


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}


def apply_config(path: Path, parser: argparse.ArgumentParser) -> None:
    """Make the config file's values the defaults of ``parser`` (one command's parser)."""
    options = _options(parser)
    defaults: dict[str, Any] = {}
    for key, value in read_config(path).items():
        dest, convert = SEED_KEYS.get(key, (key.replace("-", "_"), None))
        action = options.get(dest)
        if action is None and key in SEED_KEYS:
            raise InputError(
                f"config file {path}: key {key!r} sets --{dest.replace('_', '-')}, which this "
                f"command (or this ldawt's engines) does not take"
            )
        if action is None:
            raise InputError(
                f"config file {path}: unknown key {key!r}; this command takes: "
                f"{', '.join(sorted([*options, *SEED_KEYS]))}"
            )
        defaults[dest] = _convert(path, key, value, action, convert)
    parser.set_defaults(**defaults)


def _convert(
    path: Path,
    key: str,
    value: Any,
    action: argparse.Action,
    convert: Callable[[Any], Any] | None,
) -> Any:
    try:
        if convert is not None:
            value = convert(value)
        elif isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
        elif isinstance(value, list):
            value = tuple(value)
        elif action.type is not None and isinstance(value, str | int | float):
            value = action.type(str(value))
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise InputError(f"config file {path}: bad value {value!r} for {key!r}: {exc}") from exc
    if action.choices is not None and value not in action.choices:
        raise InputError(
            f"config file {path}: {key!r} must be one of {', '.join(map(str, action.choices))}"
        )
    return value
