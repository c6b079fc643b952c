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

import os
import sys
from typing import Any

from accel_daemon.cmd import service_switch

PROJECT = 'cinder'
# cinder.conf's option that names the engines, when cinder carries the
# change of contrib/cinder-configurable-accelerators (not in cinder 29).
ENGINES_OPT = 'image_compression_accelerators'


def install() -> None:
    """Make cinder use accel-daemon: ``convert_image`` and the image
    accelerator.

    cinder builds its accelerator from a list of class paths.  cinder 29
    hard-codes it (``accelerator._ACCEL_PATH_PREFERENCE_ORDER_LIST``):
    ``DaemonAccel`` is put first in that list.  A cinder with the option
    ``image_compression_accelerators`` (the contrib/ patch) reads the list
    from its configuration: then ``DaemonAccel`` is put first in the
    option's default only, so a list the operator set is used as set.
    """
    from oslo_config import cfg

    from cinder.image import accelerator

    from accel_daemon.integrations import cinder as integration

    integration.install()
    if ENGINES_OPT in cfg.CONF:
        # Read before cinder parses its configuration: the default.
        default = list(cfg.CONF[ENGINES_OPT])
        if integration.PATH not in default:
            cfg.CONF.set_default(ENGINES_OPT, [integration.PATH] + default)
        return
    engines: list[str] = accelerator._ACCEL_PATH_PREFERENCE_ORDER_LIST
    if integration.PATH not in engines:
        engines.insert(0, integration.PATH)


def main() -> Any:
    prog = os.path.basename(sys.argv[0])
    try:
        enabled = service_switch.read_enabled(PROJECT)
    except service_switch.SwitchError as e:
        service_switch.refuse(prog, e)
    # Monkey-patches (eventlet) before anything else of cinder's.
    from cinder.cmd import volume
    if enabled:
        install()
    return volume.main()


if __name__ == '__main__':
    sys.exit(main())
