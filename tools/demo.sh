#!/bin/bash
# The main job, end to end, the way a host runs it:
#   1. set up (Debian packages, venv), start RabbitMQ if it is not running;
#   2. install accel-daemon as a host deployment (tools/install.sh: service
#      user "accel-daemon", /opt/accel-daemon/venv, /etc/accel-daemon with
#      filters and a sudoers rule for the privsep helper only);
#   3. start accel-daemon as that unprivileged user (its privsep daemon is
#      started through sudo and holds the privileges);
#   4. build a sample volume and run compress, decompress and convert
#      through the RPC API with accel-image, printing for each step the
#      engine that ran, the seconds it took and the size ratio;
#   5. stop the daemon (SIGTERM).
#
#   bash tools/demo.sh            (as root on Debian bookworm)
#
# The sample volume is a sparse raw image holding an ext4 file system with
# a few hundred MB of this host's real files (built by benchmarks/volume.py,
# cached under /var/lib/accel-daemon/images/demo).  ACCEL_DEMO_LOCAL=1 runs the
# same steps with the engine in-process (accel-image --local) instead.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO_DIR=/var/lib/accel-daemon/images/demo
SERVICE_USER=accel-daemon
ETC_CONF=/etc/accel-daemon/accel-daemon.conf
SIZE_GIB=${ACCEL_DEMO_SIZE_GIB:-1}
DATA_GB=${ACCEL_DEMO_DATA_GB:-0.3}
IMAGES=$DEMO_DIR/images
OUT=$IMAGES/out
CONF=$ETC_CONF
LOCAL=${ACCEL_DEMO_LOCAL:-0}
DAEMON_PID=
PY=$ROOT/.venv/bin/python
cd "$ROOT"

log() { echo "demo: $*" >&2; }

build_volume() {
    log "building the sample volume (${SIZE_GIB} GiB virtual, ${DATA_GB} GB of files; cached)"
    "$PY" -m benchmarks.volume --workdir "$DEMO_DIR" \
        --size-gib "$SIZE_GIB" --data-gb "$DATA_GB" >&2
}

start_service() {
    [ "$LOCAL" = 1 ] && return 0
    log "starting accel-daemon as user $SERVICE_USER"
    runuser -u "$SERVICE_USER" -- env TMPDIR=/tmp \
        /opt/accel-daemon/venv/bin/accel-daemon --config-file "$ETC_CONF" \
        >"$DEMO_DIR/daemon.log" 2>&1 &
    DAEMON_PID=$!
    local _
    for _ in $(seq 1 60); do
        if "$ROOT/.venv/bin/accel-image" --config-file "$CONF" \
                capabilities >/dev/null 2>&1; then
            log "accel-daemon (pid $DAEMON_PID) answers over RPC"
            return 0
        fi
        kill -0 "$DAEMON_PID" 2>/dev/null || break
        sleep 1
    done
    log "accel-daemon did not come up; its log:"
    tail -n 30 "$DEMO_DIR/daemon.log" >&2
    exit 1
}

stop_service() {
    [ -n "$DAEMON_PID" ] || return 0
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
    log "accel-daemon stopped"
    DAEMON_PID=''
}

# The one place that runs accel-image; prints its JSON result.
accel() {
    local mode=()
    [ "$LOCAL" = 1 ] && mode=(--local)
    "$ROOT/.venv/bin/accel-image" --config-file "$CONF" "${mode[@]}" \
        --json "$@"
}

# Print "step: engine, seconds, sizes, ratio" from a JSON result on stdin;
# the ratio is the larger size over the smaller (the compression ratio for
# both compress and decompress).
report() {
    "$PY" -c '
import json, os, sys
step, src, dst = sys.argv[1:4]
data = json.load(sys.stdin)
res = data.get("result") or data
size_in = os.path.getsize(src)
size_out = res.get("size") or os.path.getsize(dst)
engine = res.get("engine", "?")
hw = "hardware" if res.get("hardware") else "software"
print("%-10s engine=%-8s (%s) %7.2f s  in=%8.1f MiB  out=%8.1f MiB  "
      "ratio=%.2f" % (step, engine, hw, res.get("wall_seconds", 0.0),
                      size_in / 2**20, size_out / 2**20,
                      max(size_in, size_out) / max(1, min(size_in, size_out))))
' "$@"
}

step() {
    local name=$1 src=$2 dst=$3
    shift 3
    local out
    rm -f "$dst"
    out=$(accel "$name" "$src" "$dst" "$@")
    report "$name" "$src" "$dst" <<<"$out"
}

main() {
    bash tools/setup.sh
    bash tools/rabbitmq.sh
    bash tools/install.sh
    mkdir -p "$IMAGES"
    build_volume
    local raw=$IMAGES/volume-${SIZE_GIB}g-${DATA_GB}gb.raw
    rm -rf "$OUT" && mkdir -p "$OUT"
    start_service
    trap stop_service EXIT
    log "capabilities (as reported by the daemon):"
    local mode=()
    [ "$LOCAL" = 1 ] && mode=(--local)
    "$ROOT/.venv/bin/accel-image" --config-file "$CONF" "${mode[@]}" \
        capabilities
    step compress "$raw" "$OUT/volume.raw.gz"
    step decompress "$OUT/volume.raw.gz" "$OUT/volume.roundtrip.raw"
    cmp "$raw" "$OUT/volume.roundtrip.raw" && log "round trip identical"
    step convert "$raw" "$OUT/volume.qcow2" --src-format raw --dst-format qcow2
    qemu-img compare -q -f raw -F qcow2 "$raw" "$OUT/volume.qcow2" &&
        log "qcow2 matches the volume"
}

main "$@"
