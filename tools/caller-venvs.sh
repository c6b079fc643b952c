#!/bin/bash
# Build (or reuse) one virtualenv per real caller of accel-daemon -- the
# released cinder and nova -- for tools/run-caller-tests.sh:
#
#   $ACCEL_CALLER_VENVS/cinder    cinder==29.0.0 + its unit-test tools
#   $ACCEL_CALLER_VENVS/nova      nova==34.0.0   + its unit-test tools
#
# each plus accel-daemon from this checkout. Default cache:
# /var/cache/accel-daemon/caller-venvs (outside the checkout, shared by
# every worktree on this machine; a lock file keeps runs apart).
#
# How a venv is made, in three steps:
#   1. `pip install <caller>==<version> <test tools>` alone, so pip resolves
#      the caller's own dependencies as a deployment of it would; the
#      result is saved as caller-freeze.txt in the venv;
#   2. accel-daemon from this checkout, constrained by caller-freeze.txt:
#      pip may add what accel-daemon needs and the caller lacks (isal), but
#      may not move any version the caller chose. A requirement of
#      accel-daemon that the caller's libraries do not meet fails the build
#      here, loudly: that conflict is what these venvs are for;
#   3. `pip check`.
# A stamp of the pins below, requirements.txt and the Python version is
# written last; a venv whose stamp differs (or that is half-built) is
# rebuilt from scratch.
#
# accel-daemon is a regular (not editable) install: an editable install
# points into the checkout it was made from, and the cache outlives
# checkouts (CI's fresh clone in a temporary folder, other worktrees), so
# it would break or, worse, silently test another checkout's code. Instead,
# a second stamp of this checkout's package sources makes each run
# reinstall accel-daemon alone (--no-deps, ~4 s) when they differ from what
# the venv holds.
#
# Pins: every pip here installs with this checkout's upper-constraints.txt
# (OpenStack's upper constraints) and local-constraints.txt (our own pins,
# the caller releases included), through PIP_CONSTRAINT so that sdists
# built on the way (nova's ovs) and accel-daemon's own build are pinned too.
# The caller's own resolution (step 1) is therefore the one OpenStack's CI
# tested, and the venv is the same on every machine;
# `tools/constraints.py check` runs on it at the end of a build.
#
# Usage: bash tools/caller-venvs.sh [cinder|nova|cinder-27|... ...]
#        (default: cinder and nova, the newest releases)
# Prints one line per venv: name, path, "reused"/"built"/"reinstalled".
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${ACCEL_CALLER_VENVS:-/var/cache/accel-daemon/caller-venvs}
PYTHON=/usr/bin/python3
export PIP_DISABLE_PIP_VERSION_CHECK=1

# What the caller's own `tests` packages import beyond the caller's
# requirements (found by importing the test modules run-caller-tests.sh
# runs): cinder.tests.unit needs ddt, fixtures, testtools; nova.tests.unit
# needs oslotest, wsgi_intercept, ddt (fixtures, testtools come with
# oslotest).
# The releases themselves are pinned in local-constraints.txt.
CINDER_PINS="cinder ddt fixtures testtools oslotest"
NOVA_PINS="nova ddt fixtures testtools oslotest wsgi-intercept"
export PIP_CONSTRAINT="$ROOT/upper-constraints.txt $ROOT/local-constraints.txt"

log() { echo "caller-venvs: $*" >&2; }

# The older releases the integrations support (accel_daemon.integrations.
# cinder.SUPPORTED, nova.SUPPORTED), each in a venv of its own named
# CALLER-MAJOR (cinder-27, nova-32...): the same build, with
# tools/caller-constraints/NAME.txt (that release's pin, and what it needs
# that upper-constraints.txt no longer pins) in place of
# local-constraints.txt's pin of the caller. The newest release is
# local-constraints'.
release_constraints() {
    local f="$ROOT/tools/caller-constraints/$1.txt"
    if [ -f "$f" ]; then
        echo "$f"
    fi
    return 0
}

pins_for() {
    case $1 in
        cinder) echo "$CINDER_PINS" ;;
        nova) echo "$NOVA_PINS" ;;
        *)
            if [ -n "$(release_constraints "$1")" ]; then
                pins_for "${1%%-*}"
            else
                log "unknown caller: $1 (cinder, nova, or one of" \
                    "tools/caller-constraints/)"
                return 2
            fi ;;
    esac
}

# local-constraints.txt as venv NAME uses it.
local_constraints() {
    local extra
    extra=$(release_constraints "$1")
    if [ -z "$extra" ]; then
        cat "$ROOT/local-constraints.txt"
    else
        grep -v "^${1%%-*}==" "$ROOT/local-constraints.txt"
        cat "$extra"
    fi
}

# Keyed on what decides the venv's third-party contents.
deps_stamp() {
    { pins_for "$1"; "$PYTHON" --version; cat "$ROOT/requirements.txt" \
        "$ROOT/upper-constraints.txt"; local_constraints "$1"; } |
        sha256sum | cut -d' ' -f1
}

# Keyed on what goes into accel-daemon's installed copy.
source_stamp() {
    (cd "$ROOT" &&
        find accel_daemon etc filters -type f ! -name '*.pyc' -print0 |
        sort -z | xargs -0 sha256sum &&
        sha256sum setup.cfg setup.py requirements.txt) |
        sha256sum | cut -d' ' -f1
}

install_accel_daemon() {
    local venv=$1
    shift
    # --use-pep517: pbr builds a wheel in an isolated build environment
    # instead of the deprecated `setup.py install`.
    "$venv/bin/pip" install -q --use-pep517 "$@" "$ROOT"
}

build() {
    local name=$1 venv=$2 start=$SECONDS pins
    pins=$(pins_for "$name")
    log "building $venv ($pins)"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    local_constraints "$name" >"$venv/local-constraints.txt"
    local PIP_CONSTRAINT="$ROOT/upper-constraints.txt $venv/local-constraints.txt"
    export PIP_CONSTRAINT
    # shellcheck disable=SC2086  # one requirement per word
    "$venv/bin/pip" install -q $pins
    "$venv/bin/pip" freeze --all >"$venv/caller-freeze.txt"
    install_accel_daemon "$venv" -c "$venv/caller-freeze.txt"
    "$venv/bin/pip" freeze --all |
        diff "$venv/caller-freeze.txt" - | sed -n 's/^> //p' \
            >"$venv/accel-daemon-added.txt" || true
    "$venv/bin/pip" check
    "$PYTHON" "$ROOT/tools/constraints.py" check \
        --local "$venv/local-constraints.txt" "$venv"
    log "$name: built in $((SECONDS - start)) s," \
        "$(du -sm "$venv" | cut -f1) MB; accel-daemon added:" \
        "$(tr '\n' ' ' <"$venv/accel-daemon-added.txt")"
}

ensure() {
    local name=$1 venv=$CACHE/$1 stamp src state=reused
    stamp=$(deps_stamp "$name")
    src=$(source_stamp)
    if [ ! -x "$venv/bin/python" ] ||
        [ "$(cat "$venv/.deps-stamp" 2>/dev/null)" != "$stamp" ]; then
        build "$name" "$venv"
        echo "$stamp" >"$venv/.deps-stamp"
        echo "$src" >"$venv/.source-stamp"
        state=built
    elif [ "$(cat "$venv/.source-stamp" 2>/dev/null)" != "$src" ]; then
        install_accel_daemon "$venv" --no-deps --force-reinstall
        echo "$src" >"$venv/.source-stamp"
        state=reinstalled
    fi
    echo "$name $venv $state"
}

main() {
    mkdir -p "$CACHE"
    # run-caller-tests.sh holds the lock for the whole run (so no other
    # checkout reinstalls accel-daemon under its tests) and says so.
    if [ -z "${ACCEL_CALLER_VENVS_LOCKED:-}" ]; then
        exec 9>"$CACHE/.lock"
        flock -w 1800 9
    fi
    [ $# -gt 0 ] || set -- cinder nova
    local name
    for name in "$@"; do
        ensure "$name"
    done
}

main "$@"
