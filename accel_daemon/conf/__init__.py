# SPDX-License-Identifier: Apache-2.0
"""All of accel-daemon's configuration options live in this package.

``register_opts(conf)`` registers every group of the daemon;
``settings(conf)`` turns the values into the plain
``engine.settings.Settings`` the engine takes.  Both live in
``accel_daemon.conf.daemon``, imported when they are called.

Importing a module of this package registers nothing, and this file
imports none of them: Python runs it before any module of the package, and
the client library (``accel_daemon.client``, which cinder-volume and
nova-compute import) loads ``accel_daemon.conf.client`` alone.  It puts
only ``[accel_daemon_client]`` on the caller's configuration, never the
daemon's groups; the daemon's entry points register those explicitly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from oslo_config import cfg

if TYPE_CHECKING:
    from accel_daemon.engine.settings import Settings

CONF = cfg.CONF


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register every group of the daemon on ``conf``."""
    # Imported here: see the module's docstring.
    from accel_daemon.conf import daemon
    daemon.register_opts(conf)


def settings(conf: cfg.ConfigOpts) -> Settings:
    """The engine's settings from the daemon's groups on ``conf``."""
    from accel_daemon.conf import daemon
    return daemon.settings(conf)
