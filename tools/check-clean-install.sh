#!/bin/bash
# A clean install stays clean: build a venv from scratch with the pins, as
# tools/install.sh builds the service's (requirements.txt, then
# accel-daemon itself, not editable), and check that
#
#   1. every package it holds is pinned, at the pinned version
#      (tools/constraints.py check: a pin removed from upper-constraints.txt
#      or local-constraints.txt fails here, whatever that package prints);
#   2. `accel-image --version` prints its one line and nothing on stderr;
#   3. `accel-daemon` starts as root with its real privsep helper and the
#      real RabbitMQ, answers `accel-image capabilities` and compresses a
#      file through RPC, and stops on SIGTERM with status 0; nothing on the
#      stderr of any of them, and no WARNING, ERROR, Python warning or
#      traceback in the daemon's log.
#
# CI runs it (.ci/run) after the test command. Needs root, the Debian
# packages of bindep.txt and RabbitMQ (tools/setup.sh and tools/rabbitmq.sh
# see to both). The venv and everything else live in a temporary directory,
# removed at the end.
#
# Usage: bash tools/check-clean-install.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_CONSTRAINT="$ROOT/upper-constraints.txt $ROOT/local-constraints.txt"

log() { echo "check-clean-install: $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

WORK=$(mktemp -d /tmp/accel-clean-install.XXXXXX)
DAEMON_PID=
CALLER=
# Broker accounts of this check's own, as tools/install.sh makes them
# (never guest), removed at the end.
TAG=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
BROKER_SECRETS=$WORK/broker
BROKER_DAEMON_ACCOUNT=accel-c$TAG-daemon
# shellcheck source=tools/broker.sh
source "$ROOT/tools/broker.sh"
cleanup() {
    if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -KILL -- "-$DAEMON_PID" 2>/dev/null || true
    fi
    if [ -n "$CALLER" ]; then
        rabbitmqctl -q delete_vhost "accel-$CALLER" >/dev/null 2>&1 || true
        rabbitmqctl -q delete_user "accel-$CALLER" >/dev/null 2>&1 || true
        rabbitmqctl -q delete_user "$BROKER_DAEMON_ACCOUNT" >/dev/null 2>&1 ||
            true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# stderr_empty FILE WHAT: FILE must be empty; otherwise show it and fail.
stderr_empty() {
    if [ -s "$1" ]; then
        sed 's/^/    /' "$1" >&2
        fail "$2 wrote $(wc -l <"$1") line(s) on stderr (above)"
    fi
}

build_venv() {
    local start=$SECONDS
    /usr/bin/python3 -m venv "$WORK/venv"
    "$WORK/venv/bin/pip" install -q -r "$ROOT/requirements.txt"
    (cd "$ROOT" && "$WORK/venv/bin/pip" install -q --use-pep517 --no-deps .)
    log "venv built from scratch in $((SECONDS - start)) s"
    /usr/bin/python3 "$ROOT/tools/constraints.py" check "$WORK/venv" ||
        fail "the venv holds packages that are not pinned, or not at the pin"
}

check_version() {
    local out
    out=$("$WORK/venv/bin/accel-image" --version 2>"$WORK/version.err") ||
        fail "accel-image --version exited with $?"
    stderr_empty "$WORK/version.err" "accel-image --version"
    [[ $out =~ ^accel-image\ [0-9] ]] ||
        fail "accel-image --version printed '$out'"
    log "accel-image --version: '$out', stderr empty"
}

write_config() {
    local tag
    tag=$(od -An -N5 -tx1 /dev/urandom | tr -d ' \n')
    HOST=accel-clean-$tag
    mkdir -p "$WORK/images" "$WORK/filters"
    /usr/bin/python3 "$ROOT/tools/render_filters.py" "$ROOT/filters" \
        "$WORK/filters" "$WORK/images" >/dev/null
    # One operator caller, as install.sh makes it.
    CALLER=c$TAG-operator
    local url
    url=$(broker_caller "$CALLER")
    cat >"$WORK/accel-daemon.conf" <<EOF
[DEFAULT]
transport_url = $url
log_file = $WORK/daemon.log

[accel_daemon]
allowed_dirs = $WORK/images
filters_path = $WORK/filters
state_dir = $WORK/state

[accel_daemon_rpc]
host = $HOST
callers = $CALLER

[caller:$CALLER]
transport_url = $url
allowed_dirs = $WORK/images
operator = true
EOF
}

# image CMD...: accel-image with this daemon's config; its stderr must stay
# empty.
image() {
    local rc=0
    "$WORK/venv/bin/accel-image" --config-file "$WORK/accel-daemon.conf" \
        --host "$HOST" --timeout 10 "$@" 2>"$WORK/image.err" || rc=$?
    if [ $rc -ne 0 ]; then
        sed 's/^/    /' "$WORK/image.err" >&2
        fail "accel-image $* exited with status $rc"
    fi
    stderr_empty "$WORK/image.err" "accel-image $1"
}

check_daemon() {
    write_config
    setsid "$WORK/venv/bin/accel-daemon" \
        --config-file "$WORK/accel-daemon.conf" \
        </dev/null >"$WORK/daemon.out" 2>"$WORK/daemon.err" &
    DAEMON_PID=$!
    local deadline=$((SECONDS + 60))
    until "$WORK/venv/bin/accel-image" --config-file \
        "$WORK/accel-daemon.conf" --host "$HOST" --timeout 3 tasks list \
        >/dev/null 2>&1; do
        kill -0 "$DAEMON_PID" 2>/dev/null || {
            cat "$WORK/daemon.err" "$WORK/daemon.log" >&2 || true
            fail "accel-daemon exited before answering"; }
        if [ $SECONDS -ge $deadline ]; then
            tail -n 20 "$WORK/daemon.err" "$WORK/daemon.log" >&2 || true
            fail "accel-daemon did not answer in 60 s"
        fi
        sleep 0.5
    done
    image capabilities >/dev/null
    head -c 4194304 /usr/bin/python3 >"$WORK/images/sample.bin"
    image compress "$WORK/images/sample.bin" "$WORK/images/sample.bin.gz" \
        >/dev/null
    gzip -dc "$WORK/images/sample.bin.gz" | cmp -s - "$WORK/images/sample.bin" ||
        fail "the compressed sample does not decompress to the input"
    kill -TERM "$DAEMON_PID"
    local rc=0
    wait "$DAEMON_PID" || rc=$?
    DAEMON_PID=
    [ $rc -eq 0 ] || fail "accel-daemon exited with $rc on SIGTERM"
    stderr_empty "$WORK/daemon.err" "accel-daemon"
    if grep -nE ' (WARNING|ERROR|CRITICAL) |Warning: |Traceback' \
        "$WORK/daemon.log" >&2; then
        fail "accel-daemon's log has the lines above"
    fi
    log "accel-daemon: started, answered, compressed 4 MiB, stopped" \
        "(status 0), stderr empty, log clean"
}

main() {
    [ "$(id -u)" -eq 0 ] || fail "run as root"
    build_venv
    check_version
    check_daemon
    log "passed"
}

main "$@"
