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
#      venv, pinned by upper-constraints.txt and local-constraints.txt
#      (tools/constraints.py), then checked: every package installed must
#      be pinned, at the pinned version. A stamp of the dependency and
#      constraints files skips this step when nothing changed; when they
#      changed, the venv is built again from scratch, so that it holds
#      exactly what a fresh machine gets.
#
# Usage: bash tools/setup.sh            (as root, or with sudo available)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${ACCEL_VENV:-$ROOT/.venv}
PYTHON=/usr/bin/python3
PROFILES=${ACCEL_BINDEP_PROFILES:-compile test}
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Every pip below, and the isolated build environment pip makes for
# accel-daemon's own PEP 517 build, installs the pinned versions.
export PIP_CONSTRAINT="$ROOT/upper-constraints.txt $ROOT/local-constraints.txt"

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
        "$ROOT/pyproject.toml" "$ROOT/upper-constraints.txt" \
        "$ROOT/local-constraints.txt" | sha256sum | cut -d' ' -f1
}

make_venv() {
    local stamp_file=$VENV/.accel-setup-stamp stamp
    stamp=$(deps_stamp)
    if venv_ok && [ -f "$stamp_file" ] &&
        [ "$(cat "$stamp_file")" = "$stamp" ] &&
        "$VENV/bin/python" -c 'import accel_daemon' 2>/dev/null; then
        log "venv up to date"
        return 0
    fi
    # From scratch: a venv upgraded in place keeps what the new pins no
    # longer bring.
    log "creating $VENV from $PYTHON"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    log "installing the pinned Python requirements into $VENV"
    "$VENV/bin/pip" install -q -r "$ROOT/requirements.txt" \
        -r "$ROOT/test-requirements.txt" -r "$ROOT/doc/requirements.txt"
    # pip builds the editable install through pyproject.toml (PEP 660) and
    # leaves the checkout alone; an accel_daemon.egg-info left there by an
    # older `setup.py develop` or a regular build of the checkout would
    # shadow the installed metadata (entry points) of every process started
    # in the checkout. It is generated, never tracked.
    rm -rf "$ROOT"/*.egg-info
    "$VENV/bin/pip" install -q -e "$ROOT"
    "$PYTHON" "$ROOT/tools/constraints.py" check "$VENV"
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
