#!/usr/bin/env bash
# The one command that runs every test, installing what the tests need first.
#   bash tests/run.sh            # everything (CI runs exactly this)
#   bash tests/run.sh -k fetch   # extra arguments go to the host pytest run
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages used by the tests: nginx (origin), unbound (a real DNS server), prometheus +
# promtool, systemd-analyze, debootstrap (builds the Debian 13 root that carries real TaskVine).
need_pkgs=()
command -v nginx >/dev/null || need_pkgs+=(nginx-light libnginx-mod-http-echo)
command -v unbound >/dev/null || need_pkgs+=(unbound)
command -v promtool >/dev/null || need_pkgs+=(prometheus)
command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
if ((${#need_pkgs[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need_pkgs[@]}"
fi

# The project in a virtual environment of its own, with its test extras.
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

.venv/bin/ruff check .
.venv/bin/ruff format --check .

# Exit status 5 means "no tests collected": fine when extra arguments filtered everything out.
# Three pytest processes: most host tests wait on servers and subprocesses, not on the 2 cores
# (85 s instead of 140 s here).
rc=0
.venv/bin/python -m pytest -q -n 3 -m "not taskvine" "$@" || rc=$?
if ((rc == 5 && $# > 0)); then
    echo "run.sh: no host tests matched the given arguments" >&2
elif ((rc != 0)); then
    exit "$rc"
fi

# Real TaskVine runs in a cached Debian 13 root (tests/debian13/root.sh). There a missing
# TaskVine fails the taskvine tests instead of skipping them, and collecting none fails too.
bash tests/debian13/root.sh ensure
LDAWT_REQUIRE_TASKVINE=1 bash tests/debian13/root.sh run python -m pytest -q -m taskvine
