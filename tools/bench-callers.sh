#!/bin/bash
# Benchmark cinder's own image flows, stock against accel-daemon, in one
# run (benchmarks/cinder_flows.py):
#   1. make sure RabbitMQ answers on 127.0.0.1:5672 (tools/rabbitmq.sh);
#   2. build or refresh the cinder caller venv (tools/caller-venvs.sh
#      cinder: cinder==29.0.0 plus accel-daemon from this checkout);
#   3. run benchmarks/cinder_flows.py with that venv's Python, so that
#      cinder, the integration and the accel-daemon console script it
#      starts are the venv's.
# The caller-venvs lock is held for the whole run: no other checkout
# reinstalls accel-daemon into the venv under a running daemon.
#
#   bash tools/bench-callers.sh [--size-mib 1024] [--repeat 3]
#       [--flows upload-raw,upload-qcow2,fetch-qcow2] [--json FILE] ...
#
# Arguments go to cinder_flows.py (--help lists them). As root (the daemon
# and cinder's privsep helper are started directly). Prints a markdown
# table; exit status 1 when an output check failed, 2 when a flow failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${ACCEL_CALLER_VENVS:-/var/cache/accel-daemon/caller-venvs}
export ACCEL_CALLER_VENVS=$CACHE

log() { echo "bench-callers: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "run as root"
    exit 2
fi
bash "$ROOT/tools/rabbitmq.sh"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
log "waiting for the caller-venvs lock ($CACHE/.lock)"
flock -w 1800 9
export ACCEL_CALLER_VENVS_LOCKED=1
bash "$ROOT/tools/caller-venvs.sh" cinder >&2
exec "$CACHE/cinder/bin/python" "$ROOT/benchmarks/cinder_flows.py" "$@"
