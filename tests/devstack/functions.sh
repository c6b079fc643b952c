#!/bin/bash
# A small stand-in for the devstack functions devstack/plugin.sh and
# devstack/settings call, for tests/functional/test_devstack.py.  Each has
# the signature and the observable behaviour of devstack's own, checked
# against openstack/devstack:
#   functions-common  f624631bfa870f07bf562eff801a6394ab3d5e5b
#                     (is_service_enabled, enable_service, define_plugin,
#                      run_process, stop_process)
#   inc/python        6b9a5646225a766f6240e2a1a93a92b82e088aa0
#                     (pip_install, pip_uninstall, setup_develop)
#   inc/ini-config    93a385c0056ffecc3f947de0f616b542b03827e2 (iniset)
# and, with no stored commit of devstack at hand that has them, by their
# use: get_transport_url [VIRTUAL_HOST] (lib/rpc_backend; out-of-tree RPC
# backend plugins override it with that signature) and echo_summary
# MESSAGE (stack.sh).
# The implementations are this project's own and do the real thing on this
# machine: run_process starts the command as the given user in the
# background and writes a pid file (devstack runs a systemd unit
# devstack@SERVICE with User= and Group=); pip_install installs into
# $PIP_VIRTUAL_ENV with $REQUIREMENTS_DIR/upper-constraints.txt.
#
# Globals: ENABLED_SERVICES, SERVICE_DIR (pid files), LOGDIR (service
# logs), PIP_VIRTUAL_ENV, REQUIREMENTS_DIR, RABBIT_USERID, RABBIT_PASSWORD,
# RABBIT_HOST.

# echo_summary MESSAGE
function echo_summary {
    echo "summary: $*"
}

# define_plugin NAME: nothing to do, as in devstack.
function define_plugin {
    :
}

# is_service_enabled SERVICE [SERVICE...]: true when any is enabled;
# "nova" stands for any n-* service, "cinder" for any c-*, "glance" for
# any g-*, "neutron" for any q-*, "swift" for any s-*.
function is_service_enabled {
    local svc enabled
    for svc in "$@"; do
        for enabled in ${ENABLED_SERVICES//,/ }; do
            [[ $enabled == "$svc" ]] && return 0
            case $svc in
                nova) [[ $enabled == n-* ]] && return 0 ;;
                cinder) [[ $enabled == c-* ]] && return 0 ;;
                glance) [[ $enabled == g-* ]] && return 0 ;;
                neutron) [[ $enabled == q-* ]] && return 0 ;;
                swift) [[ $enabled == s-* ]] && return 0 ;;
            esac
        done
    done
    return 1
}

# enable_service SERVICE [SERVICE...]
function enable_service {
    local svc
    for svc in "$@"; do
        is_service_enabled "$svc" ||
            ENABLED_SERVICES=${ENABLED_SERVICES:+$ENABLED_SERVICES,}$svc
    done
}

# iniset [-sudo] FILE SECTION OPTION VALUE: set OPTION in SECTION, adding
# the section (at the end) and the option (right under the section line)
# when missing; the file is created when absent.
function iniset {
    local -a as_root=()
    if [[ $1 == -sudo ]]; then
        as_root=(sudo)
        shift
    fi
    local file=$1 section=$2 option=$3 value=$4
    [[ -n $section && -n $option ]] || return 0
    "${as_root[@]}" python3 "$(dirname "${BASH_SOURCE[0]}")/iniset.py" \
        "$file" "$section" "$option" "$value"
}

# get_transport_url [VIRTUAL_HOST]
function get_transport_url {
    echo "rabbit://$RABBIT_USERID:$RABBIT_PASSWORD@$RABBIT_HOST:5672/${1:-}"
}

# pip_install PIP_ARGUMENTS...: pip install, always constrained by
# $REQUIREMENTS_DIR/upper-constraints.txt, into $PIP_VIRTUAL_ENV.
function pip_install {
    [[ $# -gt 0 ]] || return 0
    "$PIP_VIRTUAL_ENV/bin/pip" install -q \
        -c "$REQUIREMENTS_DIR/upper-constraints.txt" "$@"
}

# pip_uninstall NAME: never fails.
function pip_uninstall {
    "$PIP_VIRTUAL_ENV/bin/pip" uninstall -q -y "$1" || true
}

# setup_develop [-bindep] PROJECT_DIR [EXTRAS]: the project, editable,
# after dropping its own name from the constraints (as devstack's
# edit-constraints does), so the checkout wins over a pinned release.
function setup_develop {
    [[ $1 == -bindep* ]] && shift
    local dir extras name
    dir=$(cd "$1" && pwd)
    extras=${2:+[$2]}
    name=$(sed -n 's/^name[[:space:]]*=[[:space:]]*//p' "$dir/setup.cfg" |
        head -1)
    if [[ -n $name ]]; then
        sed -i "/^${name}[=<>!~ ]/Id" "$REQUIREMENTS_DIR/upper-constraints.txt"
    fi
    pip_install -e "$dir$extras"
}

# run_process SERVICE "COMMAND" [GROUP] [USER]: start COMMAND (an absolute
# path and its arguments) as USER (default $STACK_USER), with GROUP as its
# group when given, in the background in its own session, with a clean
# environment; pid in $SERVICE_DIR/SERVICE.pid, output in
# $LOGDIR/SERVICE.log.  Only when SERVICE is enabled.
function run_process {
    local service=$1 command=$2 group=${3:-} user=${4:-$STACK_USER}
    is_service_enabled "$service" || return 0
    [[ $command == /* ]] || {
        echo "run_process: $command: not an absolute path" >&2
        return 1
    }
    group=${group:-$(id -gn "$user")}
    mkdir -p "$SERVICE_DIR" "$LOGDIR"
    # word splitting of COMMAND is wanted: it is a command line
    # shellcheck disable=SC2086
    (cd / && exec setsid setpriv --reuid="$user" --regid="$group" \
        --init-groups -- env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
        HOME=/ LANG=C.UTF-8 $command) \
        </dev/null >>"$LOGDIR/$service.log" 2>&1 &
    echo $! >"$SERVICE_DIR/$service.pid"
}

# stop_process SERVICE: SIGTERM to the process run_process started, then
# SIGKILL if it is still there after 30 s.
function stop_process {
    local service=$1 pidfile pid i
    is_service_enabled "$service" || return 0
    pidfile=$SERVICE_DIR/$service.pid
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if kill -TERM "$pid" 2>/dev/null; then
        for ((i = 0; i < 300; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}
