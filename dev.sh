#!/usr/bin/env bash
# One entry point for a fresh Debian machine with Python 3.11+:
#   ./dev.sh start   set everything up and run the relay on embedded defaults
#   ./dev.sh test    set everything up and run the whole test suite
#   ./dev.sh bench   set up the benchmark peers (Redis, NATS) and run benchmarks/
#   ./dev.sh setup   only set up (.venv with the package and its test tools)
# pip runs only when pyproject.toml, the venv's Python or the extras changed since
# the last install (a stamp in the venv); remove .venv/.dev-sh-installed to force it.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${CCC_VENV:-.venv}"
# Debian packages the tests use: bubblewrap (sandboxes), nftables (firewall
# checks), iproute2, util-linux (unshare/setpriv), python3-venv (the venv),
# graphviz (policy graphs), apparmor (apparmor_parser checks the profile),
# podman + runc (the isolation proof runs in podman too), libseccomp2 (the
# relay and `ccc run` compile their seccomp filters with it, through ctypes),
# nats-server (the federation tests start their own NATS servers and clusters).
DEBIAN_PACKAGES=(python3-venv bubblewrap nftables iproute2 util-linux graphviz apparmor podman runc libseccomp2 nats-server)

need_root() { [ "$(id -u)" -eq 0 ] && echo "" || echo "sudo"; }

install_debian_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        echo "dev.sh: please install: ${missing[*]}" >&2
        return 0
    fi
    local sudo; sudo="$(need_root)"
    if [ -n "$sudo" ] && ! command -v sudo >/dev/null; then
        echo "dev.sh: not root and no sudo; please install: ${missing[*]}" >&2
        return 0
    fi
    echo "dev.sh: installing Debian packages: ${missing[*]}" >&2
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
}

python_bin() {
    for candidate in python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "$candidate"; return
        fi
    done
    echo "dev.sh: Python 3.11 or newer is required" >&2
    exit 1
}

# The peers the benchmark compares against, started by it on loopback only.
BENCH_PACKAGES=(redis-server nats-server)

# What the venv was installed from: pyproject.toml (dependencies, entry points), the
# venv's Python and the extras. The package is installed editable, so a source change
# needs no reinstall; when this stamp matches, setup skips pip altogether.
STAMP="$VENV/.dev-sh-installed"

install_stamp() {
    { cat pyproject.toml; "$VENV/bin/python" -VV; echo "extras: $1"; } | sha256sum | cut -d' ' -f1
}

setup() {
    local with_test_packages="${1:-no}" extras="${2:-test}"
    if [ "$with_test_packages" = yes ]; then
        install_debian_packages "${DEBIAN_PACKAGES[@]}"
    fi
    # The relay refuses to start without the library its seccomp filter is compiled with.
    install_debian_packages libseccomp2
    if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] \
        && [ "$(cat "$STAMP")" = "$(install_stamp "$extras")" ] \
        && "$VENV/bin/python" -c 'import ccc_relay' 2>/dev/null; then
        return 0
    fi
    local py; py="$(python_bin)"
    if ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
        install_debian_packages python3-venv
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        "$py" -m venv "$VENV"
    fi
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    "$VENV/bin/python" -m pip install -q -e ".[$extras]" >&2
    install_stamp "$extras" > "$STAMP"
}

case "${1:-}" in
    start)
        shift
        setup no
        if [ "$(id -u)" -eq 0 ]; then
            # A development convenience: production runs as daemon.user (docs/deploy.md).
            echo "dev.sh: running as root; the relay runs with --allow-root" >&2
            set -- --allow-root "$@"
        fi
        exec "$VENV/bin/ccc-statusd" start "$@"
        ;;
    test)
        shift
        setup yes
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    bench)
        shift
        install_debian_packages "${BENCH_PACKAGES[@]}"
        setup no "test,bench"
        exec "$VENV/bin/python" -m benchmarks.run "$@"
        ;;
    setup)
        setup yes
        ;;
    *)
        sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
