#!/bin/bash
# Benchmark cinder's own image flows (benchmarks/cinder_flows.py), or with
# a first argument "nova" nova's fetch_to_raw (benchmarks/nova_flows.py),
# stock against accel-daemon, in one run:
#   1. make sure RabbitMQ answers on 127.0.0.1:5672 (tools/rabbitmq.sh);
#   2. build or refresh the caller's venv (tools/caller-venvs.sh: cinder
#      or nova, plus accel-daemon from this checkout), and glance's
#      (tools/glance-venv.sh) when a real glance-api is asked for;
#   3. run benchmarks/<caller>_flows.py with that venv's Python, so that
#      the caller, the integration and the accel-daemon console script it
#      starts are the venv's.
# The caller-venvs lock is held for the whole run: no other checkout
# reinstalls accel-daemon into the venv under a running daemon.
#
#   bash tools/bench-callers.sh [cinder] [--size-mib 1024] [--repeat 3]
#       [--flows upload-raw,upload-qcow2,fetch-qcow2] [--glance]
#       [--json FILE] ...
#   bash tools/bench-callers.sh nova [--size-mib 1024] [--repeat 5]
#       [--flows fetch-raw,fetch-qcow2]
#
# --glance: a real glance-api (tools/glance-venv.sh builds its venv)
# instead of the file-backed image service.
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
caller=cinder
case ${1:-} in
    cinder|nova) caller=$1; shift ;;
esac
bash "$ROOT/tools/caller-venvs.sh" "$caller" >&2
# nova's flows always run against a real glance-api; cinder's with --glance.
if [ "$caller" = nova ] || [[ " $* " == *" --glance "* ]]; then
    bash "$ROOT/tools/glance-venv.sh" >&2
fi
exec "$CACHE/$caller/bin/python" "$ROOT/benchmarks/${caller}_flows.py" "$@"
