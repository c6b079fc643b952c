# SPDX-License-Identifier: Apache-2.0
"""Entry point for oslo-config-generator (``oslo.config.opts``)."""

from accel_daemon.conf import accel
from accel_daemon.conf import callers
from accel_daemon.conf import client
from accel_daemon.conf import compression
from accel_daemon.conf import integrations
from accel_daemon.conf import manager
from accel_daemon.conf import privsep
from accel_daemon.conf import qemu_img
from accel_daemon.conf import rpc
from accel_daemon.conf import streams


def list_opts():
    result = []
    for module in (accel, compression, qemu_img, manager, rpc, streams,
                   callers, privsep):
        result.extend(module.list_opts().items())
    return result


def list_client_opts():
    """Only ``[accel_daemon_client]``: the namespace ``accel_daemon.client``
    that cinder's and nova's sample-config generators can list beside their
    own, without any option of the daemon."""
    return list(client.list_opts().items())


def list_cinder_opts():
    """Only ``[accel_daemon_cinder]`` (namespace ``accel_daemon.cinder``):
    what a cinder-volume operator sets beside ``accel_daemon.client``."""
    return list(integrations.list_cinder_opts().items())


def list_nova_opts():
    """Only ``[accel_daemon_nova]`` (namespace ``accel_daemon.nova``):
    what a nova-compute operator sets beside ``accel_daemon.client``."""
    return list(integrations.list_nova_opts().items())
