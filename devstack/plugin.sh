#!/bin/bash
# devstack plugin for accel-daemon: installs it with the project's own
# tools/install.sh (service user, venv, /etc/accel-daemon, filters, sudoers),
# points it at cinder's and nova's image directories and the devstack
# broker, and runs it as the unprivileged service user.

function install_accel_daemon {
    # tools/install.sh installs the Debian packages from bindep.txt
    # (qemu-utils, pigz, isal, zstd, sudo) and everything else.
    sudo ACCEL_USER="$ACCEL_DAEMON_USER" ACCEL_PREFIX="$ACCEL_DAEMON_PREFIX" \
        ACCEL_ALLOWED_DIRS="$ACCEL_DAEMON_ALLOWED_DIRS" \
        ACCEL_TRANSPORT_URL="$(get_transport_url)" \
        bash "$ACCEL_DAEMON_DIR/tools/install.sh"
}

function configure_accel_daemon {
    local dir
    # The directories must exist for the daemon's path checks.
    for dir in ${ACCEL_DAEMON_ALLOWED_DIRS//,/ }; do
        sudo install -d "$dir"
    done
    iniset -sudo "$ACCEL_DAEMON_CONF" DEFAULT transport_url "$(get_transport_url)"
    iniset -sudo "$ACCEL_DAEMON_CONF" DEFAULT debug "$ENABLE_DEBUG_LOG_LEVEL"
    iniset -sudo "$ACCEL_DAEMON_CONF" accel_daemon allowed_dirs "$ACCEL_DAEMON_ALLOWED_DIRS"
    iniset -sudo "$ACCEL_DAEMON_CONF" accel_daemon filters_path "$ACCEL_DAEMON_CONF_DIR/rootwrap.d"
    iniset -sudo "$ACCEL_DAEMON_CONF" accel_daemon state_dir "$ACCEL_DAEMON_STATE_DIR/state"
    iniset -sudo "$ACCEL_DAEMON_CONF" compression drivers "$ACCEL_DAEMON_DRIVERS"
    # Let cinder and nova find the daemon with their own configuration.
    if is_service_enabled cinder && [ -n "${CINDER_CONF:-}" ]; then
        iniset "$CINDER_CONF" accel_daemon_client host "$(hostname)"
    fi
    if is_service_enabled n-cpu && [ -n "${NOVA_CPU_CONF:-}" ]; then
        iniset "$NOVA_CPU_CONF" accel_daemon_client host "$(hostname)"
    fi
}

function start_accel_daemon {
    # run_process SERVICE COMMAND [GROUP] [USER]: the main process runs as
    # the service user; only its privsep helper (started through the
    # sudoers rule tools/install.sh installed) runs as root.
    run_process accel-daemon \
        "$ACCEL_DAEMON_PREFIX/venv/bin/accel-daemon --config-file $ACCEL_DAEMON_CONF" \
        "" "$ACCEL_DAEMON_USER"
}

function stop_accel_daemon {
    stop_process accel-daemon
}

function cleanup_accel_daemon {
    sudo rm -rf "$ACCEL_DAEMON_PREFIX" "$ACCEL_DAEMON_CONF_DIR" \
        "$ACCEL_DAEMON_STATE_DIR/state" /etc/sudoers.d/accel-daemon
}

if is_service_enabled accel-daemon; then
    if [[ "$1" == "stack" && "$2" == "install" ]]; then
        echo_summary "Installing accel-daemon"
        install_accel_daemon
    elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
        echo_summary "Configuring accel-daemon"
        configure_accel_daemon
    elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
        echo_summary "Starting accel-daemon"
        start_accel_daemon
    fi
    if [[ "$1" == "unstack" ]]; then
        stop_accel_daemon
    fi
    if [[ "$1" == "clean" ]]; then
        cleanup_accel_daemon
    fi
fi
