# SPDX-License-Identifier: Apache-2.0
"""The ``accel-cinder-volume`` console script: cinder-volume, with
accel-daemon when cinder's configuration switches it on.

Run it in place of ``cinder-volume``, with the same arguments::

    accel-cinder-volume --config-file /etc/cinder/cinder.conf

with, in one of those files (or their ``--config-dir``)::

    [accel_daemon_client]
    enabled = true

In order:

1. ``[accel_daemon_client] enabled`` is read from the files cinder will
   read (``accel_daemon.cmd.service_switch``), before anything of cinder
   is imported.  A value that is not a boolean is refused (one line on
   stderr, exit status 1); files cinder cannot read are left to cinder's
   own error a moment later;
2. ``cinder.cmd.volume`` is imported: as its first line it monkey-patches
   with eventlet (unless ``OS_CINDER_DISABLE_EVENTLET_PATCHING`` says
   otherwise), so oslo.messaging and the rest of accel-daemon's client are
   imported only after that;
3. when enabled, ``install()``: cinder's ``image_utils.convert_image`` is
   replaced by accel-daemon's (``accel_daemon.integrations.cinder``), and
   ``DaemonAccel`` becomes cinder's first image accelerator (see
   ``install``);
4. cinder's own ``cinder.cmd.volume.main()`` runs, with ``sys.argv``
   untouched; its return value is the exit status.

The program name oslo.config sees is this command's (``sys.argv[0]``):
besides ``cinder.conf``, oslo.config's default files include
``accel-cinder-volume.conf`` (not ``cinder-volume.conf``), and a
``log_dir`` without ``log_file`` logs to ``accel-cinder-volume.log``.
"""

from __future__ import annotations

import sys
from typing import Any

from accel_daemon.cmd import service_switch

PROJECT = 'cinder'


def install() -> None:
    """Make cinder use accel-daemon: ``accel_daemon.integrations.cinder``'s
    ``install()`` replaces cinder's ``image_utils.convert_image`` and puts
    ``DaemonAccel`` first in cinder's engine list,
    ``accelerator._ACCEL_PATH_PREFERENCE_ORDER_LIST``.

    In cinder 29 that list is the engine list itself.  In a cinder with
    contrib/'s change (the option ``image_compression_accelerators``) it is
    the option's default: DaemonAccel comes first unless the operator set
    the option, and a list the operator set is used as set.
    """
    from accel_daemon.integrations import cinder as integration

    integration.install()


def main() -> Any:
    return service_switch.run(PROJECT, 'cinder.cmd.volume', install)


if __name__ == '__main__':
    sys.exit(main())
