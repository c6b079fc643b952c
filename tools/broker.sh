# shellcheck shell=bash
# Broker accounts for accel-daemon and its callers, on a RabbitMQ this host
# runs (rabbitmqctl). Sourced by tools/install.sh and the tests.
#
# The design (doc/source/security.rst): one virtual host per caller,
# "accel-NAME", that only two accounts may use: the caller's own,
# "accel-NAME", and the daemon's, "accel-daemon". The daemon serves each
# caller on that caller's virtual host, so a request's caller is the
# account the broker admitted it with. guest, and every other account,
# gets no permission there. Passwords are made once, kept root-only in
# $BROKER_SECRETS/<account>, and (re)set on the broker at every run.
#
# Environment: ACCEL_BROKER_HOST (127.0.0.1:5672), BROKER_SECRETS
# (/etc/accel-daemon/broker).

BROKER_HOST=${ACCEL_BROKER_HOST:-127.0.0.1:5672}
BROKER_SECRETS=${BROKER_SECRETS:-/etc/accel-daemon/broker}
BROKER_DAEMON_ACCOUNT=${BROKER_DAEMON_ACCOUNT:-accel-daemon}

# broker_secret ACCOUNT: print its password, made on first use.
broker_secret() {
    local file=$BROKER_SECRETS/$1
    if [ ! -s "$file" ]; then
        install -d -m 0700 -o root -g root "$BROKER_SECRETS"
        (umask 077 && head -c 24 /dev/urandom | base64 | tr '+/' '-_' |
            tr -d '=\n' >"$file")
    fi
    cat "$file"
}

# broker_account ACCOUNT: create it, or set its password to the kept one.
broker_account() {
    local account=$1
    if [ "$account" = guest ]; then
        echo "broker: refusing to use the guest account" >&2
        return 1
    fi
    if rabbitmqctl -q list_users | awk '{print $1}' | grep -qxF "$account"; then
        broker_secret "$account" | rabbitmqctl -q change_password "$account" >/dev/null
    else
        broker_secret "$account" | rabbitmqctl -q add_user "$account" >/dev/null
    fi
}

# broker_vhost VHOST ACCOUNT...: VHOST exists; each ACCOUNT has every
# permission there, and no other account has any.
broker_vhost() {
    local vhost=$1 account other
    shift
    if ! rabbitmqctl -q list_vhosts | grep -qxF "$vhost"; then
        rabbitmqctl -q add_vhost "$vhost" >/dev/null
    fi
    for account in "$@"; do
        rabbitmqctl -q set_permissions -p "$vhost" "$account" '.*' '.*' '.*' >/dev/null
    done
    for other in $(rabbitmqctl -q list_permissions -p "$vhost" | awk 'NR > 1 {print $1}'); do
        case " $* " in
            *" $other "*) ;;
            *) rabbitmqctl -q clear_permissions -p "$vhost" "$other" >/dev/null ;;
        esac
    done
}

# broker_url ACCOUNT VHOST: the transport URL of ACCOUNT on VHOST.
broker_url() {
    echo "rabbit://$1:$(broker_secret "$1")@$BROKER_HOST/$2"
}

# broker_caller NAME: the caller's account and virtual host, shared with the
# daemon's account; prints the daemon's URL there.
broker_caller() {
    broker_account "$BROKER_DAEMON_ACCOUNT"
    broker_account "accel-$1"
    broker_vhost "accel-$1" "$BROKER_DAEMON_ACCOUNT" "accel-$1"
    broker_url "$BROKER_DAEMON_ACCOUNT" "accel-$1"
}

# broker_forget NAME...: remove each caller's account and virtual host, and
# the daemon's account, from the broker and their kept passwords (devstack's
# clean; what install.sh made for them).
broker_forget() {
    local name
    for name in "$@"; do
        rabbitmqctl -q delete_vhost "accel-$name" >/dev/null 2>&1 || true
        rabbitmqctl -q delete_user "accel-$name" >/dev/null 2>&1 || true
        rm -f "$BROKER_SECRETS/accel-$name"
    done
    rabbitmqctl -q delete_user "$BROKER_DAEMON_ACCOUNT" >/dev/null 2>&1 || true
    rm -f "$BROKER_SECRETS/$BROKER_DAEMON_ACCOUNT"
}
