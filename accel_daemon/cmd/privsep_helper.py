# SPDX-License-Identifier: Apache-2.0
"""The ``accel-privsep-helper`` console script: oslo.privsep's helper,
started (through sudo when the daemon is not root) by
``accel_daemon.privileged.start``.

It is oslo.privsep's own ``helper_main`` with ``without_green_threads()``
done first (the daemon and ``accel-image`` call it too).  oslo.privsep's
daemon module, futurist and oslo.service import eventlet whenever it is
installed (oslo.service depends on it, so it always is), and none of these
processes ever runs a green thread:

* eventlet warns at import in nine lines on stderr, and oslo.privsep logs
  whatever the helper writes to stderr before its log channel is up at
  WARNING level in the daemon's log: nine warning lines on every start
  that nobody can act on.  Exactly that message is ignored, so every other
  warning stays visible.
* eventlet's green DNS (``eventlet.support.greendns``) imports dnspython and,
  through it, cryptography: about 0.12 s of every start, and whatever those
  libraries print at import (dnspython 2.9 with cryptography 51 printed
  eight DSA deprecation warnings).  eventlet skips it when
  ``EVENTLET_NO_GREENDNS=yes``; nothing here resolves names with green
  threads.  Set only when the environment does not say otherwise, and only
  in accel-daemon's own processes: never in cinder-volume or nova-compute,
  which may run green threads and import the client library.
"""

import os
import sys
import warnings

# The text eventlet's import-time warning starts with (after a newline).
EVENTLET_DEPRECATION = r'\s*Eventlet is deprecated'


def without_green_threads() -> None:
    """Before eventlet is first imported, in a process that never runs
    green threads: no green DNS, and no import-time deprecation warning of
    eventlet's (nothing else is hidden)."""
    os.environ.setdefault('EVENTLET_NO_GREENDNS', 'yes')
    warnings.filterwarnings('ignore', message=EVENTLET_DEPRECATION)


def main() -> None:
    without_green_threads()
    # Before oslo.privsep reads a single argument: a service user gets
    # only the installed command line (accel_daemon.privileged.helper_args).
    from accel_daemon.privileged import helper_args
    try:
        helper_args.enforce(sys.argv[1:])
    except (helper_args.Refused, OSError) as e:
        sys.stderr.write('accel-privsep-helper: refused: %s\n' % e)
        sys.exit(2)
    from oslo_privsep import daemon
    daemon.helper_main()
