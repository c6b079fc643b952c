# SPDX-License-Identifier: Apache-2.0
"""The ``accel-privsep-helper`` console script: oslo.privsep's helper,
started (through sudo when the daemon is not root) by
``accel_daemon.privileged.start``.

It is oslo.privsep's own ``helper_main`` with one thing done first.
oslo.privsep's daemon module imports eventlet whenever it is installed
(oslo.service depends on it, so it always is), and eventlet warns at import
in nine lines on stderr.  The helper never uses eventlet, and oslo.privsep
logs whatever the helper writes to stderr before its log channel is up at
WARNING level in the daemon's log: nine warning lines on every start that
nobody can act on.  Ignoring exactly that message before the import keeps
every other warning of the helper visible.
"""

import warnings

# The text eventlet's import-time warning starts with (after a newline).
EVENTLET_DEPRECATION = r'\s*Eventlet is deprecated'


def ignore_eventlet_deprecation() -> None:
    """Hide eventlet's import-time deprecation warning, and nothing else,
    in a process that never runs green threads."""
    warnings.filterwarnings('ignore', message=EVENTLET_DEPRECATION)


def main() -> None:
    ignore_eventlet_deprecation()
    from oslo_privsep import daemon
    daemon.helper_main()
