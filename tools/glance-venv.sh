#!/bin/bash
# Build (or reuse) the virtualenv of the image service the benchmarks run
# against: a released glance from PyPI and gunicorn, the WSGI server that
# serves it (glance 33 has no standalone glance-api any more: the
# glance-api script only says so), started on loopback by
# benchmarks/glance_api.py so that cinder's real GlanceImageService and
# python-glanceclient move image data over HTTP.
#
#   ${ACCEL_GLANCE_VENV:-/var/cache/accel-daemon/glance-venv}
#
# outside the checkout, shared by every worktree on this machine; a lock
# file keeps runs apart. accel-daemon is not installed in it: glance only
# serves, the benchmark's own venv (a caller venv) is the client.
#
# Pins: as in tools/caller-venvs.sh, pip installs with this checkout's
# upper-constraints.txt and local-constraints.txt through PIP_CONSTRAINT
# (the glance release and its requirements that upper-constraints.txt
# lacks are pinned in local-constraints.txt), so the venv is the same on
# every machine; `pip check` and `tools/constraints.py check` run at the
# end of a build. A stamp of the pins, the Python version and this script
# is written last; a venv whose stamp differs (or that is half-built) is
# rebuilt from scratch.
#
# Usage: bash tools/glance-venv.sh
# Prints one line: the venv's path and "reused"/"built".
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${ACCEL_GLANCE_VENV:-/var/cache/accel-daemon/glance-venv}
LOCK=/var/cache/accel-daemon/glance-venv.lock
PYTHON=/usr/bin/python3
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_CONSTRAINT="$ROOT/upper-constraints.txt $ROOT/local-constraints.txt"

log() { echo "glance-venv: $*" >&2; }

# Keyed on what decides the venv's contents.
stamp() {
    { "$PYTHON" --version; cat "${BASH_SOURCE[0]}" \
        "$ROOT/upper-constraints.txt" "$ROOT/local-constraints.txt"; } |
        sha256sum | cut -d' ' -f1
}

build() {
    local start=$SECONDS
    log "building $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # --use-pep517: simplegeneric (WSME's) is an sdist; built as a wheel
    # in an isolated, pinned build environment instead of the deprecated
    # `setup.py install`.
    "$VENV/bin/pip" install -q --use-pep517 glance gunicorn
    "$VENV/bin/pip" check
    "$PYTHON" "$ROOT/tools/constraints.py" check "$VENV"
    "$VENV/bin/pip" freeze --all >"$VENV/glance-freeze.txt"
    log "built in $((SECONDS - start)) s, $(du -sm "$VENV" | cut -f1) MB:" \
        "$(grep -i '^glance==' "$VENV/glance-freeze.txt")"
}

main() {
    local want state=reused
    mkdir -p "$(dirname "$LOCK")" "$(dirname "$VENV")"
    exec 9>"$LOCK"
    flock -w 1800 9
    want=$(stamp)
    if [ ! -x "$VENV/bin/gunicorn" ] ||
        [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$want" ]; then
        build
        echo "$want" >"$VENV/.stamp"
        state=built
    fi
    echo "$VENV $state"
}

main "$@"
