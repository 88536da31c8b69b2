"""Reading what the systemd side of ldawt writes, for the tests."""

from __future__ import annotations


def read_env_file(text: str) -> dict[str, str]:
    """Parse the subset of EnvironmentFile= syntax that ``install-service`` writes
    (``ldawt.daemon.worker.service.env_quote``) and hand-written ``KEY=value`` lines use:
    comments, blank lines, optional double or single quotes."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"not KEY=VALUE: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            out, i, inner = [], 0, value[1:-1]
            while i < len(inner):
                if inner[i] == "\\" and i + 1 < len(inner):
                    i += 1
                out.append(inner[i])
                i += 1
            value = "".join(out)
        elif len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        env[key.strip()] = value
    return env
