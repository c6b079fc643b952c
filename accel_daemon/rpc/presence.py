# SPDX-License-Identifier: Apache-2.0
"""Is another accel-daemon already answering on our RPC server name?

Two daemons started with the same ``[accel_daemon_rpc] host`` and topic on
the same transport and exchange consume from one queue: RabbitMQ hands each
request to either of them, so a task created on one is unknown to the other
and the two journals split.  Before it starts its RPC server the daemon
calls itself (``task_get`` of a random id, which no daemon holds): any
answer, a typed TaskNotFound included, means the name is taken.

The call is published with the AMQP mandatory flag (oslo.messaging's
``TransportOptions(at_least_once=True)``).  When no queue is bound to the
name -- no daemon ever ran with it on this exchange -- the broker returns
the message at once and oslo.messaging raises MessageUndeliverable: the
answer "nobody" costs about a millisecond on RabbitMQ.  When the queue
outlived an earlier daemon (server queues are not auto-deleted), only the
timeout can tell that nobody consumes it; the message carries the timeout
as its TTL, so the probe never reaches the server we start next.

This is a check, not a lock: two daemons started within one timeout of
each other can both pass.  The state directory lock covers the usual case
of the same host and configuration.
"""

from __future__ import annotations

import logging
import time
import uuid

import oslo_messaging

from accel_daemon import exception
from accel_daemon.rpc import rpcapi

LOG = logging.getLogger(__name__)


class _MandatoryAPI(rpcapi.AccelAPI):
    """AccelAPI whose messages the broker returns when no queue is bound."""

    def __init__(self, transport: oslo_messaging.Transport, topic: str,
                 timeout: float) -> None:
        super().__init__(transport, topic=topic, timeout=timeout)
        self._client = self._client.prepare(
            transport_options=oslo_messaging.TransportOptions(
                at_least_once=True))


def someone_answers(transport: oslo_messaging.Transport, topic: str,
                    host: str, timeout: float) -> bool:
    """True when a daemon answers as ``host`` on ``topic`` within
    ``timeout`` seconds."""
    probe = _MandatoryAPI(transport, topic, timeout)
    started = time.monotonic()
    try:
        probe.task_get(host, str(uuid.uuid4()))
        answered, how = True, 'a task'
    except oslo_messaging.MessageUndeliverable:
        answered, how = False, 'no queue bound'
    except exception.ServiceUnavailable:
        answered, how = False, 'no answer'
    except exception.AccelError as e:
        # TaskNotFound from a current daemon, InvalidRequest from one that
        # does not know the method or version: someone is there either way.
        answered, how = True, type(e).__name__
    LOG.debug('Presence probe of %s.%s: %s after %.3fs', topic, host, how,
              time.monotonic() - started)
    return answered
