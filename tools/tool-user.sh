#!/bin/bash
# Create the system user the external tools run as ([accel_daemon]
# tool_user, default accel-tools): no home, no shell, no access to any
# image (accel-daemon hands the tools opened descriptors).  Sourced by
# tools/setup.sh and tools/install.sh; idempotent.
ensure_tool_user() {
    local name=${1:-accel-tools}
    if ! getent passwd "$name" >/dev/null; then
        echo "creating system user $name (the tools' identity)" >&2
        useradd --system --user-group --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin "$name"
    fi
}
