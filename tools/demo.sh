#!/bin/bash
# The main job, end to end: set up, build a sample volume, then compress,
# decompress and convert it with accel-image and print, for each step, the
# engine that ran, the seconds it took and the size ratio.
#
#   bash tools/demo.sh            (as root on Debian bookworm)
#
# The sample volume is a sparse raw image holding an ext4 file system with
# a few hundred MB of this host's real files (built by benchmarks/volume.py
# and cached under $ACCEL_DEMO_DIR, default /var/tmp/accel-demo).
#
# Today accel-image runs the engine in-process (--local). To go through the
# daemon instead, start it in start_service() and drop --local in accel().
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO_DIR=${ACCEL_DEMO_DIR:-/var/tmp/accel-demo}
SIZE_GIB=${ACCEL_DEMO_SIZE_GIB:-1}
DATA_GB=${ACCEL_DEMO_DATA_GB:-0.3}
IMAGES=$DEMO_DIR/images
OUT=$IMAGES/out
CONF=$DEMO_DIR/accel-daemon.conf
FILTERS=$DEMO_DIR/rootwrap.d
PY=$ROOT/.venv/bin/python
cd "$ROOT"

log() { echo "demo: $*" >&2; }

# The shipped filters name the default directory /var/lib/accel-daemon;
# point them (and the config) at the demo's directory, as a deployment
# does for its own directories.
write_config() {
    case $IMAGES in
        *[!A-Za-z0-9_/.-]*) log "ACCEL_DEMO_DIR must be a plain path"; exit 2;;
    esac
    rm -rf "$FILTERS" && mkdir -p "$FILTERS"
    local f
    for f in filters/*; do
        [ -e "$f" ] || continue
        sed "s|/var/lib/accel-daemon|$IMAGES|g" "$f" >"$FILTERS/${f##*/}"
    done
    cat >"$CONF" <<EOF
[DEFAULT]
transport_url = rabbit://guest:guest@127.0.0.1:5672/

[accel_daemon]
allowed_dirs = $IMAGES
filters_path = $FILTERS
state_dir = $DEMO_DIR/state
EOF
}

build_volume() {
    log "building the sample volume (${SIZE_GIB} GiB virtual, ${DATA_GB} GB of files; cached)"
    "$PY" -m benchmarks.volume --workdir "$DEMO_DIR" \
        --size-gib "$SIZE_GIB" --data-gb "$DATA_GB" >&2
}

# RPC mode: `bash tools/rabbitmq.sh`, then run
# "$ROOT/.venv/bin/accel-daemon --config-file $CONF" in the background,
# keep its pid, and wait until `accel-image capabilities` answers;
# stop_service kills that pid.
start_service() { :; }
stop_service() { :; }

# The one place that runs accel-image; prints its JSON result.
accel() {
    "$ROOT/.venv/bin/accel-image" --config-file "$CONF" --local --json "$@"
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
    mkdir -p "$IMAGES" "$DEMO_DIR/state"
    write_config
    build_volume
    local raw=$IMAGES/volume-${SIZE_GIB}g-${DATA_GB}gb.raw
    rm -rf "$OUT" && mkdir -p "$OUT"
    start_service
    trap stop_service EXIT
    log "capabilities:"
    "$ROOT/.venv/bin/accel-image" --config-file "$CONF" --local capabilities
    step compress "$raw" "$OUT/volume.raw.gz"
    step decompress "$OUT/volume.raw.gz" "$OUT/volume.roundtrip.raw"
    cmp "$raw" "$OUT/volume.roundtrip.raw" && log "round trip identical"
    step convert "$raw" "$OUT/volume.qcow2" --src-format raw --dst-format qcow2
    qemu-img compare -q -f raw -F qcow2 "$raw" "$OUT/volume.qcow2" &&
        log "qcow2 matches the volume"
}

main "$@"
