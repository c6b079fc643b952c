"""Build the daemon's oslo.messaging RPC server.

Threading model only: no ``executor=`` argument (deprecated in
oslo.messaging 18.x, even for 'threading'; the executor follows the process,
and the daemon never monkey-patches, so it is the threading one).
``DefaultRPCAccessPolicy`` keeps methods whose names start with ``_`` out of
reach of callers.
"""

from __future__ import annotations

import logging
from typing import Any

import oslo_messaging
from oslo_config import cfg

from accel_daemon.rpc import api

LOG = logging.getLogger(__name__)


def get_transport(conf: cfg.ConfigOpts) -> oslo_messaging.Transport:
    api.register_messaging_opts(conf)
    return oslo_messaging.get_rpc_transport(conf)


def target(topic: str, host: str) -> oslo_messaging.Target:
    return oslo_messaging.Target(topic=topic, server=host)


def build(transport: oslo_messaging.Transport, topic: str, host: str,
          endpoints: list[Any]) -> oslo_messaging.rpc.RPCServer:
    """Return an unstarted RPC server for ``endpoints`` on topic/host."""
    server = oslo_messaging.get_rpc_server(
        transport, target(topic, host), endpoints,
        access_policy=oslo_messaging.DefaultRPCAccessPolicy)
    LOG.debug('RPC server for topic %s, server %s (executor %s)',
              topic, host, server.executor_type)
    return server
