#!/bin/bash
# devstack plugin for accel-daemon (doc/source/devstack.rst).
#
# - install: accel-daemon into devstack's Python environment with
#   setup_develop (upper constraints applied), so that cinder-volume and
#   nova-compute can import accel_daemon.client; then tools/install.sh for
#   the privileged parts: the service and tool users, the daemon's own
#   root-owned venv (the sudoers rule names its privsep helper),
#   /etc/accel-daemon with the filters, and the sudoers rule.
# - post-config: the daemon's configuration, and [accel_daemon_client] in
#   $CINDER_CONF and $NOVA_CONF (devstack copies $NOVA_CONF over
#   $NOVA_CPU_CONF when it starts nova-compute, after this phase).
# - extra: run_process as the service user.  unstack: stop_process.
# - clean: removes what install made, users excepted.
#
# It never creates or changes another service's directories.

# The callers get broker accounts of their own when devstack runs the
# broker here (rabbit enabled: devstack has started it before the install
# phase); otherwise the daemon serves one caller on devstack's transport.
function _accel_daemon_own_accounts {
    is_service_enabled rabbit
}

function install_accel_daemon {
    setup_develop "$ACCEL_DAEMON_DIR"
    # No systemd unit of install.sh's own: devstack runs the daemon as
    # devstack@accel-daemon through run_process.
    # devstack's upper constraints, and our pins of what they do not list
    # (isal, tqdm, the build's setuptools).
    local pins=$ACCEL_DAEMON_DIR/local-constraints.txt
    if [[ -f ${REQUIREMENTS_DIR:-}/upper-constraints.txt ]]; then
        pins="$REQUIREMENTS_DIR/upper-constraints.txt $pins"
    fi
    # devstack runs cinder-volume and nova-compute as $STACK_USER: that
    # user may write image streams (stream_in).
    local -a constraints=("PIP_CONSTRAINT=$pins") callers=()
    local transport="" allowed=$ACCEL_DAEMON_ALLOWED_DIRS
    if _accel_daemon_own_accounts; then
        # One account and virtual host per service (tools/broker.sh): a
        # request's caller is the login the broker admitted, and each
        # service names only its own directories.  The operator's
        # (accel-image as root) is the daemon's own images directory.
        allowed=$ACCEL_DAEMON_STATE_DIR/images
        if is_service_enabled c-vol; then
            callers+=(--caller "cinder:$ACCEL_DAEMON_CINDER_DIRS")
        fi
        if is_service_enabled n-cpu; then
            callers+=(--caller "nova:$ACCEL_DAEMON_NOVA_DIRS")
        fi
    else
        transport=$(get_transport_url "$ACCEL_DAEMON_RPC_VHOST")
    fi
    sudo "${constraints[@]}" \
        ACCEL_USER="$ACCEL_DAEMON_USER" ACCEL_PREFIX="$ACCEL_DAEMON_PREFIX" \
        ACCEL_ALLOWED_DIRS="$allowed" ACCEL_TRANSPORT_URL="$transport" \
        ACCEL_STREAM_USERS="$STACK_USER" ACCEL_SYSTEMD_UNIT=0 \
        bash "$ACCEL_DAEMON_DIR/tools/install.sh" "${callers[@]}"
    # The daemon's own allowed directory (install.sh makes it only when
    # the allowed directories are left at its default).
    sudo install -d -m 0750 -o "$ACCEL_DAEMON_USER" -g "$ACCEL_DAEMON_USER" \
        "$ACCEL_DAEMON_STATE_DIR/images"
}

# The daemon's config is root:$ACCEL_DAEMON_USER 0640, which devstack's
# user cannot read: edit a private copy with iniset, then put it back.
function configure_accel_daemon {
    local tmp
    tmp=$(mktemp)
    # shellcheck disable=SC2024  # the copy is ours; only reading needs root
    sudo cat "$ACCEL_DAEMON_CONF" >"$tmp"
    if ! _accel_daemon_own_accounts; then
        iniset "$tmp" DEFAULT transport_url \
            "$(get_transport_url "$ACCEL_DAEMON_RPC_VHOST")"
    fi
    iniset "$tmp" DEFAULT debug "${ENABLE_DEBUG_LOG_LEVEL:-True}"
    iniset "$tmp" accel_daemon allowed_dirs "$ACCEL_DAEMON_ALLOWED_DIRS"
    iniset "$tmp" accel_daemon_rpc host "$ACCEL_DAEMON_HOST"
    iniset "$tmp" compression drivers "$ACCEL_DAEMON_DRIVERS"
    sudo install -m 0640 -o root -g "$ACCEL_DAEMON_USER" "$tmp" \
        "$ACCEL_DAEMON_CONF"
    rm -f "$tmp"

    # The clients: [accel_daemon_client] where each service reads it.
    # nova-compute reads $NOVA_CPU_CONF, which devstack makes from
    # $NOVA_CONF after this phase, so nova's setting goes into $NOVA_CONF.
    if is_service_enabled c-vol; then
        _accel_daemon_client_conf "$CINDER_CONF" cinder
    fi
    if is_service_enabled n-cpu; then
        _accel_daemon_client_conf "$NOVA_CONF" nova
    fi
}

# _accel_daemon_client_conf CONF CALLER
function _accel_daemon_client_conf {
    local url
    iniset "$1" accel_daemon_client enabled True
    iniset "$1" accel_daemon_client host "$ACCEL_DAEMON_HOST"
    # The daemon's broker and virtual host, whatever the service's own
    # transport_url says: with cells v2 "superconductor" (devstack's
    # default) nova-compute's names the cell's virtual host.  With
    # accounts of their own, the service's login that install.sh made
    # (root-only until copied into the service's configuration).
    if _accel_daemon_own_accounts; then
        url=$(sudo python3 "$ACCEL_DAEMON_DIR/tools/inifile.py" get \
            "$ACCEL_DAEMON_CONF_DIR/callers/$2.conf" accel_daemon_client \
            transport_url)
    else
        url=$(get_transport_url "$ACCEL_DAEMON_RPC_VHOST")
    fi
    iniset "$1" accel_daemon_client transport_url "$url"
}

function start_accel_daemon {
    # run_process SERVICE COMMAND [GROUP] [USER]: only the privsep helper,
    # started through the sudoers rule, runs as root.
    run_process accel-daemon \
        "$ACCEL_DAEMON_PREFIX/venv/bin/accel-daemon --config-file $ACCEL_DAEMON_CONF" \
        "" "$ACCEL_DAEMON_USER"
}

function stop_accel_daemon {
    stop_process accel-daemon
}

function cleanup_accel_daemon {
    pip_uninstall accel-daemon
    if _accel_daemon_own_accounts; then
        # The accounts and virtual hosts install.sh made on the broker.
        sudo bash -c 'source "$1"; broker_forget operator cinder nova' \
            cleanup "$ACCEL_DAEMON_DIR/tools/broker.sh"
    fi
    sudo rm -rf "$ACCEL_DAEMON_PREFIX" "$ACCEL_DAEMON_CONF_DIR" \
        "$ACCEL_DAEMON_STATE_DIR" /etc/sudoers.d/accel-daemon
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
