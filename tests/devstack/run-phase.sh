#!/bin/bash
# Run one phase of devstack/plugin.sh the way devstack's stack.sh, unstack.sh
# and clean.sh do: the harness functions, then the plugin's settings
# (devstack's "source" phase), then plugin.sh MODE [PHASE].
#
#   bash tests/devstack/run-phase.sh stack install|post-config|extra
#   bash tests/devstack/run-phase.sh unstack
#   bash tests/devstack/run-phase.sh clean
#
# The environment holds what local.conf and stackrc would set (DEST,
# DATA_DIR, ENABLED_SERVICES, CINDER_CONF, NOVA_CONF, ...), see
# tests/functional/test_devstack.py.
set -o errexit -o nounset -o pipefail

HARNESS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PLUGIN_DIR=${ACCEL_DAEMON_DIR:?}/devstack

# shellcheck source=tests/devstack/functions.sh
source "$HARNESS/functions.sh"
# shellcheck source=devstack/settings
source "$PLUGIN_DIR/settings"
# shellcheck source=devstack/plugin.sh
source "$PLUGIN_DIR/plugin.sh" "$1" "${2:-}"
