# SPDX-License-Identifier: Apache-2.0
"""accel-image's old module name: the command line is now the cliff
application in ``accel_daemon.cmd.cli`` (``python -m
accel_daemon.cmd.image`` still runs it)."""

import sys

from accel_daemon.cmd.cli.app import main

__all__ = ['main']

if __name__ == '__main__':
    sys.exit(main())
