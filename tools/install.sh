#!/bin/bash
# Deploy accel-daemon on this host from this checkout. Idempotent; run as
# root:
#
#   bash tools/install.sh [--caller NAME:DIR[,DIR...][:DEVICE_PATTERN[,...]]]...
#                         [--switch cinder-volume,nova-compute]
#   bash tools/install.sh --unswitch cinder-volume,nova-compute
#
# --switch, where systemd runs: after the install, a drop-in
# (UNIT.service.d/accel-daemon.conf) that starts the packaged unit through
# accel-daemon's launcher with the unit's own arguments
# (tools/systemd_switch.py); accel-daemon must be installed in the
# service's own Python environment. --unswitch removes the drop-ins.
#
# --caller (repeatable) gives one calling service (cinder, nova...) its own
# broker account and virtual host, accel-NAME, and its own directories and
# block devices (doc/source/security.rst); its client settings go to
# /etc/accel-daemon/callers/NAME.conf, to copy into the service's own
# configuration. An "operator" caller, for accel-image as root, is always
# made, with ACCEL_ALLOWED_DIRS. This needs a RabbitMQ on this host
# (rabbitmqctl); the guest account is never used.
#
# Environment (all optional):
#   ACCEL_USER           service user                   (accel-daemon)
#   ACCEL_PREFIX         where the venv goes             (/opt/accel-daemon)
#   ACCEL_ALLOWED_DIRS   comma-separated allowed dirs    (/var/lib/accel-daemon/images)
#   ACCEL_TRANSPORT_URL  a broker this host does not run: the daemon's
#                        own account there (never guest); no callers are
#                        then set up, the daemon serves one caller
#                        (default: accounts on the local RabbitMQ)
#   ACCEL_TOOL_USER      the user the tools run as       (accel-tools)
#   ACCEL_STREAM_USERS   comma-separated users that may write image
#                        streams besides the --callers' own (none)
#   ACCEL_SYSTEMD_UNIT_DIR  where the systemd unit goes  (/etc/systemd/system)
#   ACCEL_SYSTEMD_RUN_DIR   present when systemd runs    (/run/systemd/system)
#   ACCEL_SYSTEMD_UNIT      0: install no unit (a service manager of
#                           the caller's own runs the daemon)       (1)
#   PIP_CONSTRAINT       the pins pip installs with (upper-constraints.txt
#                        and local-constraints.txt of this checkout;
#                        devstack passes its own upper constraints and
#                        local-constraints.txt)
#
# What it does: Debian packages from bindep.txt (runtime entries only); the
# service user, the tools' user and the image streams' group accel-streams
# (which each --caller's service user, if it exists, joins); /var/lib/accel-daemon (0750, owned by
# that user), its state/ (0700: the task journal and the lock) and
# staging/ (root's, 0700: outputs made for a file system without
# O_TMPFILE); a venv built from Debian's /usr/bin/python3 with a regular
# (not editable) install, readable by the service user; /etc/accel-daemon
# with the config, the rootwrap.conf and the filters (root-owned: the
# service user must not be able to widen them); the sudoers rule for the privsep helper; where
# systemd runs, the unit accel-daemon.service (Type=notify), neither enabled
# nor started. accel-daemon.conf is written only when absent, so local edits
# survive. Sourcing the script defines its functions without running it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
USER_NAME=${ACCEL_USER:-accel-daemon}
PREFIX=${ACCEL_PREFIX:-/opt/accel-daemon}
VENV=$PREFIX/venv
ALLOWED_DIRS=${ACCEL_ALLOWED_DIRS:-/var/lib/accel-daemon/images}
STREAM_GROUP=accel-streams
STREAM_USERS=${ACCEL_STREAM_USERS:-}
TRANSPORT_URL=${ACCEL_TRANSPORT_URL:-}
CALLERS=()
SWITCH=
UNSWITCH=
STATE=/var/lib/accel-daemon
ETC=/etc/accel-daemon
UNIT_DIR=${ACCEL_SYSTEMD_UNIT_DIR:-/etc/systemd/system}
SYSTEMD_RUN=${ACCEL_SYSTEMD_RUN_DIR:-/run/systemd/system}
UNIT=accel-daemon.service
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The service's venv gets the versions the tests ran with; PIP_CONSTRAINT
# (not -c) so that the isolated build of accel-daemon is pinned too.
export PIP_CONSTRAINT=${PIP_CONSTRAINT:-"$ROOT/upper-constraints.txt $ROOT/local-constraints.txt"}

log() { echo "install: $*" >&2; }

# shellcheck source=tools/bindep.sh
source "$ROOT/tools/bindep.sh"
# shellcheck source=tools/tool-user.sh
source "$ROOT/tools/tool-user.sh"
BROKER_SECRETS=$ETC/broker
# shellcheck source=tools/broker.sh
source "$ROOT/tools/broker.sh"

make_user() {
    if ! getent passwd "$USER_NAME" >/dev/null; then
        log "creating system user $USER_NAME"
        useradd --system --user-group --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin "$USER_NAME"
    fi
    ensure_tool_user "${ACCEL_TOOL_USER:-accel-tools}"
    # The group that may enter the image streams' socket directory
    # ([streams] group); each --caller's service user joins it.
    if ! getent group "$STREAM_GROUP" >/dev/null; then
        log "creating system group $STREAM_GROUP"
        groupadd --system "$STREAM_GROUP"
    fi
    install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$STATE"
    # The journal names every task's files, and the lock is the daemon's:
    # 0700, as the daemon itself makes it (doc/source/operations.rst).
    install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" "$STATE/state"
    # Where the privileged helper makes outputs whose directory has no
    # O_TMPFILE ([accel_daemon] staging_dir): root's alone.
    install -d -m 0700 -o root -g root "$STATE/staging"
    # The default allowed directory; the services' own (cinder, nova) are
    # theirs to create.  The journal (state/) stays outside every allowed
    # directory: the daemon refuses to start otherwise.
    if [ "$ALLOWED_DIRS" = "$STATE/images" ]; then
        install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$STATE/images"
    fi
}

make_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV from /usr/bin/python3"
        install -d -m 0755 "$PREFIX"
        /usr/bin/python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q -r "$ROOT/requirements.txt"
    # Not editable: the service user must not depend on (or be able to
    # read) a developer's checkout. pbr needs a version outside git.
    if ! git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
        export PBR_VERSION=${PBR_VERSION:-0.0.0}
    fi
    "$VENV/bin/pip" install -q --use-pep517 --no-deps --force-reinstall "$ROOT"
    # pip honours root's umask; make sure the service user can read it all.
    chmod -R u+rwX,go+rX,go-w "$PREFIX"
}

install_file() {  # mode src dest: copy, replacing dest only when it differs
    if ! cmp -s "$2" "$3"; then
        install -m "$1" -o root -g "$USER_NAME" "$2" "$3"
        log "installed $3"
    fi
}

write_config() {
    local conf=$ETC/accel-daemon.conf
    [ -e "$conf" ] && return 0
    log "writing $conf"
    local url=$TRANSPORT_URL
    # The operator's virtual host (configure_callers): the transport of
    # accel-image run as root with this file.
    [ -n "$url" ] || url=$(broker_caller operator)
    install -m 0640 -o root -g "$USER_NAME" /dev/null "$conf"
    cat >"$conf" <<EOF
# accel-daemon configuration; every option is described in
# $ETC/accel-daemon.conf.sample.
[DEFAULT]
transport_url = $url

[accel_daemon]
allowed_dirs = $ALLOWED_DIRS
filters_path = $ETC/rootwrap.d
state_dir = $STATE/state
staging_dir = $STATE/staging
tool_user = ${ACCEL_TOOL_USER:-accel-tools}
EOF
}

# A transport URL that logs in as guest: any local user could be the
# daemon's caller.
is_guest_url() {
    case "$1" in
        *://guest:* | *://guest@* | *,guest:* | *,guest@*) return 0 ;;
    esac
    return 1
}

# The broker accounts and the [caller:NAME] sections: the operator's, then
# each --caller's; the callers' client settings in $ETC/callers/.
configure_callers() {
    local conf=$ETC/accel-daemon.conf spec name rest dirs devices url
    if [ -n "$TRANSPORT_URL" ]; then
        if [ ${#CALLERS[@]} -gt 0 ]; then
            log "--caller needs the broker's accounts made here (rabbitmqctl);"
            log "with ACCEL_TRANSPORT_URL, make them on the broker and add"
            log "[caller:NAME] sections by hand (doc/source/security.rst)"
            return 1
        fi
        return 0
    fi
    url=$(broker_caller operator)
    python3 "$ROOT/tools/caller_conf.py" "$conf" operator "$url" \
        "$ALLOWED_DIRS" "" --operator
    # A configuration an older install.sh wrote logs in as guest.
    if is_guest_url "$(python3 "$ROOT/tools/inifile.py" get "$conf" DEFAULT \
        transport_url)"; then
        python3 "$ROOT/tools/inifile.py" set "$conf" DEFAULT transport_url \
            "$url"
        log "$conf: [DEFAULT] transport_url no longer logs in as guest"
    fi
    install -d -m 0755 -o root -g root "$ETC/callers"
    for spec in "${CALLERS[@]}"; do
        name=${spec%%:*}
        rest=${spec#*:}
        dirs=${rest%%:*}
        devices=
        [ "$rest" = "$dirs" ] || devices=${rest#*:}
        url=$(broker_caller "$name")
        python3 "$ROOT/tools/caller_conf.py" "$conf" "$name" "$url" \
            "$dirs" "$devices"
        write_client_conf "$name"
        allow_streams "$name"
    done
}

# A caller whose service runs as a system user of its name (cinder, nova),
# and each of ACCEL_STREAM_USERS, may write image streams: it joins the
# stream group and [streams] allowed_users.
allow_streams() {
    local name=$1 conf=$ETC/accel-daemon.conf users
    getent passwd "$name" >/dev/null || return 0
    usermod -a -G "$STREAM_GROUP" "$name"
    users=$(python3 "$ROOT/tools/inifile.py" get "$conf" streams \
        allowed_users)
    case ",$users," in
        *",$name,"*) ;;
        *) python3 "$ROOT/tools/inifile.py" set "$conf" streams \
               allowed_users "${users:+$users,}$name" ;;
    esac
    log "caller $name: may write image streams (group $STREAM_GROUP)"
}

# $ETC/callers/NAME.conf: what the caller's service sets, readable by the
# group NAME when there is one (cinder, nova), else by root only.
write_client_conf() {
    local name=$1 file=$ETC/callers/$1.conf group=root mode=0600
    if getent group "$name" >/dev/null; then
        group=$name
        mode=0640
    fi
    install -m "$mode" -o root -g "$group" /dev/null "$file.new"
    {
        echo "# accel-daemon client settings of caller $name: copy into the"
        echo "# service's own configuration (for example /etc/$name/$name.conf)."
        echo "[accel_daemon_client]"
        echo "transport_url = $(broker_url "accel-$name" "accel-$name")"
    } >"$file.new"
    mv -f "$file.new" "$file"
    log "caller $name: client settings in $file"
}

install_etc() {
    install -d -m 0755 -o root -g root "$ETC" "$ETC/rootwrap.d"
    install_file 0644 "$ROOT/etc/accel-daemon/rootwrap.conf" "$ETC/rootwrap.conf"
    install_file 0644 "$ROOT/etc/accel-daemon/accel-daemon.conf.sample" \
        "$ETC/accel-daemon.conf.sample"
    write_config
    configure_callers
    local user
    for user in ${STREAM_USERS//,/ }; do
        allow_streams "$user"
    done
    # The filters are the command boundary: owned by root, not writable by
    # the service user (tools/render_filters.py rewrites any path pattern
    # for the allowed directories; the shipped filters have none left).
    local -a dirs
    IFS=, read -r -a dirs <<<"$ALLOWED_DIRS"
    /usr/bin/python3 "$ROOT/tools/render_filters.py" "$ROOT/filters" \
        "$ETC/rootwrap.d" "${dirs[@]}" >/dev/null
    chown -R root:root "$ETC/rootwrap.d"
}

install_sudoers() {
    local src=$ROOT/etc/accel-daemon/sudoers.d/accel-daemon
    if [ ! -f "$src" ]; then
        log "no sudoers sample in the tree; skipping"
        return 0
    fi
    local tmp
    tmp=$(mktemp)
    sed -e "s|/opt/accel-daemon/venv|$VENV|g" \
        -e "s|^accel-daemon |$USER_NAME |" \
        -e "s|^Defaults:accel-daemon |Defaults:$USER_NAME |" "$src" >"$tmp"
    if ! visudo -c -q -f "$tmp"; then
        rm -f "$tmp"
        log "sudoers file does not parse; not installed"
        return 1
    fi
    install -m 0440 -o root -g root "$tmp" /etc/sudoers.d/accel-daemon
    # The command line the helper accepts from the service user
    # (accel_daemon.privileged.helper_args): the sudoers rule is a plain
    # command rule.
    install -d -m 0755 -o root -g root "$VENV/etc/accel-daemon"
    printf '# The configuration accel-privsep-helper accepts when sudo runs it\n# (written by tools/install.sh; one "config-file PATH" or\n# "config-dir PATH" per line, in the daemon'"'"'s order).\nconfig-file %s\n' \
        "$ETC/accel-daemon.conf" >"$tmp"
    install -m 0644 -o root -g root "$tmp" \
        "$VENV/etc/accel-daemon/privsep-helper.conf"
    rm -f "$tmp"
}

# The systemd unit, with this venv and user, where systemd runs (the
# directory systemd creates at boot, as sd_booted(3) checks it). Returns 1
# when it did not install one.
install_unit() {
    if [ "${ACCEL_SYSTEMD_UNIT:-1}" = 0 ] || [ ! -d "$SYSTEMD_RUN" ]; then
        return 1
    fi
    local tmp
    tmp=$(mktemp)
    sed -e "s|/opt/accel-daemon/venv/|$VENV/|g" \
        -e "s|^User=accel-daemon\$|User=$USER_NAME|" \
        -e "s|^Group=accel-daemon\$|Group=$USER_NAME|" \
        "$ROOT/etc/accel-daemon/$UNIT" >"$tmp"
    install -d -m 0755 "$UNIT_DIR"
    if ! cmp -s "$tmp" "$UNIT_DIR/$UNIT"; then
        install -m 0644 "$tmp" "$UNIT_DIR/$UNIT"
        log "installed $UNIT_DIR/$UNIT"
        if [ "$SYSTEMD_RUN" = /run/systemd/system ] &&
            command -v systemctl >/dev/null; then
            systemctl daemon-reload
        fi
    fi
    rm -f "$tmp"
}

how_to_start() {
    if install_unit; then
        log "done. Start the daemon (and at every boot) with:"
        log "  systemctl enable --now $UNIT"
    else
        log "done. No systemd unit installed: start the daemon as the"
        log "service user, for example:"
        log "  sudo -u $USER_NAME $VENV/bin/accel-daemon --config-file $ETC/accel-daemon.conf"
    fi
}

# --switch: a drop-in for each packaged unit that runs it through the
# launcher (tools/systemd_switch.py renders it from the unit's own
# ExecStart); the service is not restarted here.
switch_services() {
    local unit tmp dir
    if [ ! -d "$SYSTEMD_RUN" ]; then
        log "--switch: systemd does not run here; start the services with"
        log "accel-cinder-volume / accel-nova-compute instead (doc/source/deployment.rst)"
        return 1
    fi
    tmp=$(mktemp)
    for unit in ${1//,/ }; do
        if ! systemctl cat "$unit.service" |
            /usr/bin/python3 "$ROOT/tools/systemd_switch.py" "$unit" >"$tmp"; then
            rm -f "$tmp"
            return 1
        fi
        dir=$UNIT_DIR/$unit.service.d
        install -d -m 0755 "$dir"
        install -m 0644 "$tmp" "$dir/accel-daemon.conf"
        log "$unit: switched ($dir/accel-daemon.conf); restart it to use accel-daemon"
    done
    rm -f "$tmp"
    systemctl daemon-reload
}

unswitch_services() {
    local unit
    for unit in ${1//,/ }; do
        rm -f "$UNIT_DIR/$unit.service.d/accel-daemon.conf"
        rmdir "$UNIT_DIR/$unit.service.d" 2>/dev/null || true
        log "$unit: switched back; restart it"
    done
    if [ -d "$SYSTEMD_RUN" ]; then
        systemctl daemon-reload
    fi
}

main() {
    if [ "$(id -u)" -ne 0 ]; then
        log "run as root"
        exit 1
    fi
    while [ $# -gt 0 ]; do
        case "$1" in
            --caller)
                if ! [[ "${2:-}" =~ ^[a-z][a-z0-9_-]{0,31}:/ ]]; then
                    log "--caller NAME:DIR[,DIR...][:PATTERN,...], got '${2:-}'"
                    exit 2
                fi
                CALLERS+=("$2")
                shift 2 ;;
            --switch|--unswitch)
                if ! [[ "${2:-}" =~ ^(cinder-volume|nova-compute)(,(cinder-volume|nova-compute))*$ ]]; then
                    log "$1 cinder-volume,nova-compute (one or both), got '${2:-}'"
                    exit 2
                fi
                if [ "$1" = --switch ]; then SWITCH=$2; else UNSWITCH=$2; fi
                shift 2 ;;
            *) log "unknown argument $1"; exit 2 ;;
        esac
    done
    if [ -n "$UNSWITCH" ]; then
        unswitch_services "$UNSWITCH"
        return
    fi
    if [ -n "$TRANSPORT_URL" ] && is_guest_url "$TRANSPORT_URL"; then
        log "refusing to deploy on the broker's guest account: any local"
        log "user may log in as guest and would be the daemon's caller"
        exit 1
    fi
    if [ -z "$TRANSPORT_URL" ] && ! command -v rabbitmqctl >/dev/null; then
        log "no rabbitmqctl here: run a RabbitMQ on this host"
        log "(bash tools/rabbitmq.sh), or give ACCEL_TRANSPORT_URL"
        exit 1
    fi
    # shellcheck disable=SC2046  # one package name per word
    install_debs $(bindep_packages)
    make_user
    make_venv
    install_etc
    install_sudoers
    how_to_start
    if [ -n "$SWITCH" ]; then
        switch_services "$SWITCH"
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
