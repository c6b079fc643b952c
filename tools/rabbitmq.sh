#!/bin/bash
# Make sure a RabbitMQ broker answers on 127.0.0.1:5672 (guest/guest), for
# the functional RPC tests and the demo. Idempotent: installs
# rabbitmq-server when it is missing, starts it detached when the port is
# closed (there is no init system to do it on CI machines), then waits until
# `rabbitmqctl await_startup` succeeds, for at most ACCEL_RABBIT_WAIT
# seconds (default 180).
set -euo pipefail

HOST=127.0.0.1
PORT=5672
WAIT=${ACCEL_RABBIT_WAIT:-180}
export PATH=$PATH:/usr/sbin:/sbin
export DEBIAN_FRONTEND=noninteractive

log() { echo "rabbitmq: $*" >&2; }

port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$PORT" 2>/dev/null
}

install_server() {
    if command -v rabbitmq-server >/dev/null; then
        return 0
    fi
    log "installing rabbitmq-server"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
}

await_startup() {
    local deadline=$((SECONDS + WAIT))
    until timeout 60 rabbitmqctl -q await_startup >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            log "broker did not start within ${WAIT}s"
            return 1
        fi
        sleep 2
    done
    # await_startup can return before the AMQP listener accepts.
    until port_open; do
        if [ $SECONDS -ge $deadline ]; then
            log "port $PORT still closed after ${WAIT}s"
            return 1
        fi
        sleep 1
    done
}

main() {
    if port_open; then
        log "already listening on $HOST:$PORT"
        return 0
    fi
    install_server
    # A node that is still booting answers await_startup; only start one
    # when none is there, as a second start fails with "already running".
    if ! timeout 20 rabbitmqctl -q status >/dev/null 2>&1; then
        log "starting rabbitmq-server"
        rabbitmq-server -detached
    fi
    await_startup
    log "ready on $HOST:$PORT"
}

main "$@"
