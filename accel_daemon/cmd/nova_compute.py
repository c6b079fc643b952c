# SPDX-License-Identifier: Apache-2.0
"""The ``accel-nova-compute`` console script: nova-compute, with
accel-daemon when nova's configuration switches it on.

Run it in place of ``nova-compute``, with the same arguments::

    accel-nova-compute --config-file /etc/nova/nova.conf

with, in one of those files (or their ``--config-dir``)::

    [accel_daemon_client]
    enabled = true

In order:

1. ``[accel_daemon_client] enabled`` is read from the files nova will
   read (``accel_daemon.cmd.service_switch``), before anything of nova is
   imported.  A value that is not a boolean is refused (one line on
   stderr, exit status 1); files nova cannot read are left to nova's own
   error a moment later;
2. ``nova.cmd.compute`` is imported: as its first line it chooses the
   concurrency backend (nova 34: native threads, unless
   ``OS_NOVA_DISABLE_EVENTLET_PATCHING`` asks for eventlet), which must
   happen before oslo.messaging is imported, so accel-daemon's client is
   imported only after that;
3. when enabled, ``install()``: nova's ``nova.virt.images.convert_image``
   is replaced by accel-daemon's (``accel_daemon.integrations.nova``);
4. nova's own ``nova.cmd.compute.main()`` runs, with ``sys.argv``
   untouched; its return value is the exit status.

The program name oslo.config sees is this command's (``sys.argv[0]``):
besides ``nova.conf``, oslo.config's default files include
``accel-nova-compute.conf`` (not ``nova-compute.conf``), and a ``log_dir``
without ``log_file`` logs to ``accel-nova-compute.log``.
"""

from __future__ import annotations

import sys
from typing import Any

from accel_daemon.cmd import service_switch

PROJECT = 'nova'


def install() -> None:
    """Make nova use accel-daemon for its qemu-img conversions."""
    from accel_daemon.integrations import nova as integration

    integration.install()


def main() -> Any:
    return service_switch.run(PROJECT, 'nova.cmd.compute', install)


if __name__ == '__main__':
    sys.exit(main())
