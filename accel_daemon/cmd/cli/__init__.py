# SPDX-License-Identifier: Apache-2.0
"""accel-image, the operators' command line, built on cliff.

``app`` holds the application (global options, configuration, the one-line
errors), ``usage`` the name and the one-line usage errors that ``app`` and
``base`` both use, ``base`` the pieces every command shares (the backend,
output columns, ISO times), ``progress`` the progress bar, ``broker`` the
bounded broker check and the deadline of each call, and ``capabilities``
and ``tasks`` the commands themselves (entry points ``accel_daemon.cli`` in
setup.cfg).
"""

import os
import time


def process_started() -> float:
    """When this process started, on the ``time.monotonic()`` clock (from
    /proc: the kernel's start time of the process against the uptime);
    now, where /proc cannot tell."""
    now = time.monotonic()
    try:
        with open('/proc/self/stat') as f:
            # Field 22, after the command name in parentheses.
            start_ticks = int(f.read().rsplit(')', 1)[1].split()[19])
        with open('/proc/uptime') as f:
            uptime = float(f.read().split()[0])
        age = uptime - start_ticks / os.sysconf('SC_CLK_TCK')
    except (OSError, ValueError, IndexError):
        return now
    return now - min(max(age, 0.0), 60.0)
