#!/usr/bin/env bash
# A cached Debian 13 ("trixie") root carrying real TaskVine (coop-computing-tools 7.14.5,
# ndcctools.taskvine for Python 3.13), used to run the tests marked `taskvine`.
#
#   bash tests/debian13/root.sh ensure        # build it if missing or stale (needs root)
#   bash tests/debian13/root.sh run CMD...    # run CMD inside it, repo at /src, cwd /src
#   bash tests/debian13/root.sh shell         # interactive shell inside it
#   bash tests/debian13/root.sh destroy       # delete it (unmounts and verifies first)
#   bash tests/debian13/root.sh path          # print where it lives
#
# The root lives outside the work tree, at ${LDAWT_CACHE:-$HOME/.cache/ldawt}/debian13-root.
# Every mount is made inside a private mount namespace (unshare), so a killed run or build
# cannot leave mounts behind on the host; a trap still unmounts and checks on exit.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SELF="$REPO/tests/debian13/root.sh"
CACHE="${LDAWT_CACHE:-$HOME/.cache/ldawt}"
ROOT="$CACHE/debian13-root"
SUITE=trixie
APT_PKGS="python3,python3-venv,python3-pip,ca-certificates,python3-workqueue,coop-computing-tools,python3-cloudpickle"
VENV=/opt/ldawt-venv
STAMP_FILE=etc/ldawt-root.stamp
# Bump when the way the root is built changes in a way the lists below do not show.
FORMAT=2
LOCK_WAIT_S=1800

die() {
    echo "root.sh: $*" >&2
    exit 1
}
log() { echo "root.sh: $*" >&2; }

# The pip requirements of the venv: the project's runtime deps and build requirements and its
# test extras (from pyproject.toml, so a new dependency rebuilds the root), plus what
# ndcctools.poncho imports at import time.
pip_requirements() {
    python3 - "$REPO/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    p = tomllib.load(f)
reqs = list(p["build-system"]["requires"]) + list(p["project"]["dependencies"])
reqs += [r for r in p["project"].get("optional-dependencies", {}).get("test", [])
         if not r.startswith("ruff")]
reqs += ["conda-pack", "threadpoolctl"]
print("\n".join(reqs))
EOF
}

stamp_text() {
    printf 'format=%s\nsuite=%s\napt=%s\npip:\n%s\n' "$FORMAT" "$SUITE" "$APT_PKGS" "$(pip_requirements)"
}

root_is_current() {
    [ -f "$ROOT/$STAMP_FILE" ] && [ "$(cat "$ROOT/$STAMP_FILE")" = "$(stamp_text)" ]
}

need_root_user() {
    [ "$(id -u)" = 0 ] || die "needs root (debootstrap, mount, chroot)"
}

# Mount points at or below $1 (as the kernel lists them), deepest first.
mounts_under() {
    local dir
    dir="$(realpath -m "$1")"
    awk -v d="$dir" '{ p = $5; gsub(/\\040/, " ", p); if (p == d || index(p, d "/") == 1) print p }' \
        /proc/self/mountinfo | sort -r
}

unmount_all_under() {
    local m
    for m in $(mounts_under "$1"); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
}

# rm -rf a root only once nothing is mounted below it: through a bind-mounted /dev it would
# delete the host's device nodes.
safe_remove() {
    local dir="$1"
    [ -e "$dir" ] || return 0
    unmount_all_under "$dir"
    local left
    left="$(mounts_under "$dir")"
    [ -z "$left" ] || die "refusing to delete $dir: still mounted: $left"
    for m in proc sys dev src tmp; do
        if [ -d "$dir/$m" ] && mountpoint -q "$dir/$m"; then
            die "refusing to delete $dir: $dir/$m is a mount point"
        fi
    done
    rm -rf --one-file-system "$dir"
}

# Mount what a chroot needs under root $1; the caller is inside a private mount namespace.
mount_basics() {
    local r="$1"
    mount -t proc proc "$r/proc"
    mount -t sysfs sysfs "$r/sys"
    mount --rbind /dev "$r/dev"
    mount --make-rslave "$r/dev"
}

umount_and_check() {
    local r="$1"
    unmount_all_under "$r"
    local m
    for m in tmp src dev sys proc; do
        if [ -d "$r/$m" ] && mountpoint -q "$r/$m"; then
            log "WARNING: $r/$m is still mounted"
        fi
    done
}

lock() { # lock MODE(-s|-x)
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.root.lock"
    flock "$1" -w "$LOCK_WAIT_S" 9 || die "timed out waiting for $CACHE/.root.lock"
}

# --- build -----------------------------------------------------------------------------------

# Runs inside a private mount namespace: debootstrap's own mounts and ours vanish with it.
build_in_namespace() {
    local tmp="$1"
    local t0=$SECONDS
    mkdir -p "$CACHE/debootstrap-cache" "$CACHE/pip-cache"
    trap 'unmount_all_under "$tmp"' EXIT
    log "debootstrap $SUITE into $tmp"
    debootstrap --variant=minbase --include="$APT_PKGS" \
        --cache-dir="$CACHE/debootstrap-cache" "$SUITE" "$tmp" >"$tmp.debootstrap.log" 2>&1 ||
        {
            tail -n 30 "$tmp.debootstrap.log" >&2
            die "debootstrap failed (full log: $tmp.debootstrap.log)"
        }
    log "debootstrap done in $((SECONDS - t0)) s"
    cp /etc/ssl/certs/ca-certificates.crt "$tmp/etc/ssl/certs/ca-certificates.crt"
    cp -L /etc/resolv.conf "$tmp/etc/resolv.conf"
    mount_basics "$tmp"
    mkdir -p "$tmp/var/cache/ldawt-pip"
    mount --bind "$CACHE/pip-cache" "$tmp/var/cache/ldawt-pip"
    local reqs=()
    mapfile -t reqs < <(pip_requirements)
    chroot "$tmp" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        python3 -m venv --system-site-packages "$VENV"
    # Where the shipped systemd units expect ldawt (ExecStart=/opt/ldawt/venv/bin/ldawt-worker),
    # so tests can run their ExecStart lines verbatim.
    mkdir -p "$tmp/opt/ldawt"
    ln -s "$VENV" "$tmp/opt/ldawt/venv"
    chroot "$tmp" /usr/bin/env -i PATH="$VENV/bin:/usr/sbin:/usr/bin:/sbin:/bin" HOME=/root \
        PIP_CACHE_DIR=/var/cache/ldawt-pip PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$VENV/bin/pip" install -q "${reqs[@]}"
    # What the tests rely on, checked once here rather than failing obscurely later.
    chroot "$tmp" /usr/bin/env -i PATH="$VENV/bin:/usr/sbin:/usr/bin:/sbin:/bin" HOME=/root \
        sh -c 'command -v vine_worker >/dev/null &&
               python3 -c "import ndcctools.taskvine, ndcctools.poncho, aiohttp, pyarrow, uvloop, pytest"' ||
        die "the built root lacks vine_worker or a Python package"
    umount "$tmp/var/cache/ldawt-pip"
    unmount_all_under "$tmp"
    trap - EXIT
    stamp_text >"$tmp/$STAMP_FILE"
    log "root built in $((SECONDS - t0)) s"
}

cmd_ensure() {
    need_root_user
    lock -s
    if root_is_current; then
        log "root is current: $ROOT"
        return 0
    fi
    flock -u 9
    lock -x
    root_is_current && return 0 # another process built it while we waited
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt install debootstrap)"
    local stale
    for stale in "$CACHE"/debian13-root.tmp.* "$CACHE"/debian13-root.old.*; do
        [ -d "$stale" ] && safe_remove "$stale"
    done
    rm -f "$CACHE"/debian13-root.tmp.*.debootstrap.log
    local tmp="$CACHE/debian13-root.tmp.$$"
    mkdir -p "$tmp"
    if ! unshare --mount --propagation private -- bash "$SELF" _build "$tmp"; then
        safe_remove "$tmp"
        die "building the root failed"
    fi
    rm -f "$tmp.debootstrap.log"
    if [ -e "$ROOT" ]; then
        mv "$ROOT" "$CACHE/debian13-root.old.$$"
    fi
    mv "$tmp" "$ROOT"
    safe_remove "$CACHE/debian13-root.old.$$"
    log "root ready: $ROOT ($(du -sh --one-file-system "$ROOT" | cut -f1))"
}

# --- run -------------------------------------------------------------------------------------

# Runs inside a private mount namespace, holding the shared lock on fd 9.
run_in_namespace() {
    # Scratch dirs of runs killed with SIGKILL: a dir whose lock nobody holds is stale.
    local stale
    for stale in "$CACHE"/run-tmp.*.lock; do
        [ -e "$stale" ] || continue
        if flock -n "$stale" true; then
            rm -rf --one-file-system "${stale%.lock}" "$stale"
        fi
    done
    local run_tmp
    run_tmp="$(mktemp -d "$CACHE/run-tmp.XXXXXX")"
    chmod 1777 "$run_tmp"
    exec 7>"$run_tmp.lock"
    flock 7
    # shellcheck disable=SC2064
    trap "umount_and_check '$ROOT'; rm -rf --one-file-system '$run_tmp' '$run_tmp.lock'" EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    mount_basics "$ROOT"
    mkdir -p "$ROOT/src"
    mount --bind "$REPO" "$ROOT/src"
    # A private /tmp per run: concurrent runs share the root but not their scratch files.
    mount --bind "$run_tmp" "$ROOT/tmp"

    local base_env=(PATH="$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        HOME=/root LANG=C.UTF-8 VIRTUAL_ENV="$VENV" PIP_DISABLE_PIP_VERSION_CHECK=1)
    local pass
    for pass in $(compgen -e); do
        case "$pass" in LDAWT_* | PYTEST_* | TERM | CI) base_env+=("$pass=${!pass}") ;; esac
    done

    # Editable install of the repo, redone when pyproject.toml changes (scripts, packages).
    local want
    want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
    if [ "$(cat "$ROOT$VENV/.ldawt-editable" 2>/dev/null)" != "$want" ]; then
        (
            flock -x -w 600 8 || die "timed out waiting for the venv lock"
            if [ "$(cat "$ROOT$VENV/.ldawt-editable" 2>/dev/null)" != "$want" ]; then
                log "pip install -e /src (pyproject.toml changed)"
                chroot "$ROOT" /usr/bin/env -i -C /src "${base_env[@]}" \
                    pip install -q --no-deps --no-build-isolation -e /src >&2
                echo "$want" >"$ROOT$VENV/.ldawt-editable"
            fi
        ) 8>"$CACHE/.venv.lock"
    fi

    local rc=0
    chroot "$ROOT" /usr/bin/env -i -C /src "${base_env[@]}" "$@" 9>&- || rc=$?
    return "$rc"
}

cmd_run() {
    need_root_user
    (($#)) || die "usage: root.sh run CMD [ARGS...]"
    lock -s
    root_is_current || die "the root at $ROOT is missing or stale: run 'bash $SELF ensure' first"
    exec unshare --mount --propagation private -- bash "$SELF" _run "$@"
}

cmd_destroy() {
    need_root_user
    lock -x
    local d
    for d in "$ROOT" "$CACHE"/debian13-root.tmp.* "$CACHE"/debian13-root.old.*; do
        [ -e "$d" ] || continue
        safe_remove "$d"
        log "removed $d"
    done
}

case "${1:-}" in
ensure) cmd_ensure ;;
run)
    shift
    cmd_run "$@"
    ;;
shell) cmd_run bash ;;
destroy) cmd_destroy ;;
path) echo "$ROOT" ;;
stamp) stamp_text ;;
_build) build_in_namespace "$2" ;;
_run)
    shift
    run_in_namespace "$@"
    ;;
*) die "usage: root.sh ensure | run CMD... | shell | destroy | path | stamp" ;;
esac
