#!/bin/bash
# Prepare this checkout for development, tests and the demo. Idempotent:
# a second run installs nothing and takes a second or two.
#
#   1. the Debian packages bindep.txt lists (for the profiles in
#      ACCEL_BINDEP_PROFILES, default "compile test"), with one
#      `apt-get update` first, only when something is missing;
#   2. the virtualenv .venv, built from Debian's /usr/bin/python3 (the
#      daemon's service user cannot read a Python under /root);
#   3. requirements.txt, test-requirements.txt, doc/requirements.txt (the
#      docs build is a test) and accel-daemon itself (editable) in that
#      venv. A stamp of the dependency files skips this
#      step when nothing changed.
#
# Usage: bash tools/setup.sh            (as root, or with sudo available)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${ACCEL_VENV:-$ROOT/.venv}
PYTHON=/usr/bin/python3
PROFILES=${ACCEL_BINDEP_PROFILES:-compile test}
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { echo "setup: $*" >&2; }

# shellcheck source=tools/bindep.sh
source "$ROOT/tools/bindep.sh"
# shellcheck source=tools/tool-user.sh
source "$ROOT/tools/tool-user.sh"

venv_ok() {
    [ -x "$VENV/bin/python" ] &&
        grep -qx 'home = /usr/bin' "$VENV/pyvenv.cfg" 2>/dev/null &&
        "$VENV/bin/python" -c 'import sys' 2>/dev/null
}

deps_stamp() {
    cat "$ROOT/requirements.txt" "$ROOT/test-requirements.txt" \
        "$ROOT/doc/requirements.txt" "$ROOT/setup.cfg" "$ROOT/setup.py" \
        "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1
}

make_venv() {
    if ! venv_ok; then
        log "creating $VENV from $PYTHON"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    local stamp_file=$VENV/.accel-setup-stamp stamp
    stamp=$(deps_stamp)
    if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] &&
        "$VENV/bin/python" -c 'import accel_daemon' 2>/dev/null; then
        log "venv up to date"
        return 0
    fi
    log "installing Python requirements into $VENV"
    "$VENV/bin/pip" install -q -r "$ROOT/requirements.txt" \
        -r "$ROOT/test-requirements.txt" -r "$ROOT/doc/requirements.txt"
    # pip builds the editable install through pyproject.toml (PEP 660) and
    # leaves the checkout alone; an accel_daemon.egg-info left there by an
    # older `setup.py develop` or a regular build of the checkout would
    # shadow the installed metadata (entry points) of every process started
    # in the checkout. It is generated, never tracked.
    rm -rf "$ROOT"/*.egg-info
    "$VENV/bin/pip" install -q -e "$ROOT"
    echo "$stamp" >"$stamp_file"
}

main() {
    # shellcheck disable=SC2046  # one package name per word
    install_debs $(bindep_packages "$PROFILES")
    make_venv
    # The daemons the functional tests start run their tools as this user.
    ensure_tool_user accel-tools
    log "ready: $VENV"
}

main "$@"
