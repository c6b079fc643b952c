# SPDX-License-Identifier: Apache-2.0
"""Build the daemon's oslo.messaging RPC server.

Threading model only: no ``executor=`` argument (deprecated in
oslo.messaging 18.x, even for 'threading'; the executor follows the process,
and the daemon never monkey-patches, so it is the threading one).

Callers may be hostile, and they must only ever get the typed errors of
``accel_daemon.exception``.  oslo.messaging's own dispatcher does not see
to that:

* ``DefaultRPCAccessPolicy`` lets a caller reach any public attribute of
  the endpoint, ``target`` (an ``oslo_messaging.Target``) included: calling
  it was a ``TypeError`` sent back as it is.  ``DeclaredMethodsPolicy``
  allows the methods named in ``METHODS`` and nothing else.
* ``utils.version_is_compatible`` parses the message's version with
  ``str.split`` and ``int``: '1', 'x.y', '' or a number raised
  ValueError/IndexError/AttributeError, sent back as they are.  The
  dispatcher's call-monitor watchdog thread, started before that check,
  was then never stopped: one leaked thread per bad message when the caller
  asked for call monitoring.
* A method name that is not a string made ``hasattr`` raise TypeError; an
  ``args`` that is not a mapping or holds ``self``/``ctxt`` made the call
  itself raise TypeError.

``GuardedDispatcher`` checks all of that before oslo.messaging's dispatcher
runs and answers ``InvalidRequest``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import oslo_messaging
from oslo_messaging import _utils as messaging_utils
from oslo_messaging.rpc import server as rpc_server

from accel_daemon import exception
from accel_daemon import operations
from accel_daemon.rpc import endpoint
from accel_daemon.rpc import rpcapi

LOG = logging.getLogger(__name__)

# MAJOR.MINOR, ASCII digits only ('1.0.0' too is refused: the API's versions
# have two parts), short enough for int() to be cheap.
_VERSION_RE = re.compile(r'[0-9]{1,6}\.[0-9]{1,6}')


class DeclaredMethodsPolicy(oslo_messaging.RPCAccessPolicyBase):
    """Only the operations of the API are callable: not ``target``, not a
    helper, not anything inherited."""

    def is_allowed(self, endpoint_obj: Any, method: Any) -> bool:
        return isinstance(method, str) and method in endpoint.METHODS


def _refuse(why: str) -> exception.InvalidRequest:
    return exception.InvalidRequest(reason=why)


def _check_version(version: Any) -> None:
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise _refuse('malformed version %s (expected MAJOR.MINOR)'
                      % endpoint.shown(version))
    if not messaging_utils.version_is_compatible(operations.API_VERSION,
                                                 version):
        raise _refuse('version %s is not supported (this daemon implements '
                      '%s)' % (version, operations.API_VERSION))


def check_message(ctxt: Any, message: Any) -> None:
    """Raise InvalidRequest unless the message is a call oslo.messaging's
    dispatcher can route to a declared method without raising itself."""
    if not isinstance(message, dict):
        raise _refuse('the message is not a mapping')
    if not isinstance(ctxt, dict):
        raise _refuse('the context is not a mapping')
    method = message.get('method')
    if not isinstance(method, str) or method not in endpoint.METHODS:
        raise _refuse('no such method %s' % endpoint.shown(method))
    if message.get('namespace') is not None:
        raise _refuse('no such namespace %s'
                      % endpoint.shown(message['namespace']))
    # An absent version means 1.0 to oslo.messaging.
    _check_version(message.get('version', '1.0'))
    args = message.get('args', {})
    if not isinstance(args, dict):
        raise _refuse('%s: the arguments are not a mapping' % method)
    endpoint.check_arg_names(method, args)


class GuardedDispatcher(oslo_messaging.RPCDispatcher):
    """oslo.messaging's dispatcher behind ``check_message``."""

    def dispatch(self, incoming: Any) -> Any:
        try:
            check_message(incoming.ctxt, incoming.message)
        except exception.InvalidRequest as e:
            LOG.info('RPC message refused: %s', e.message)
            raise endpoint.expected(e) from None
        try:
            return super().dispatch(incoming)
        except (oslo_messaging.NoSuchMethod,
                oslo_messaging.UnsupportedVersion) as e:
            # Not reached after check_message; kept so that a gap there is
            # still answered typed.
            LOG.warning('RPC message refused by oslo.messaging: %s', e)
            raise endpoint.expected(_refuse(str(e))) from None


def target(topic: str, host: str) -> oslo_messaging.Target:
    # accel-daemon's own exchange, not [DEFAULT] control_exchange: clients
    # configured like nova or like cinder all reach it (rpcapi.EXCHANGE).
    return oslo_messaging.Target(exchange=rpcapi.EXCHANGE, topic=topic,
                                 server=host)


def build(transport: oslo_messaging.Transport, topic: str, host: str,
          endpoints: list[Any]) -> rpc_server.RPCServer:
    """Return an unstarted RPC server for ``endpoints`` on topic/host."""
    dispatcher = GuardedDispatcher(endpoints, None, DeclaredMethodsPolicy)
    # get_rpc_server() builds a plain RPCDispatcher: build the same server
    # around ours.
    server = rpc_server.RPCServer(transport, target(topic, host), dispatcher)
    LOG.debug('RPC server for topic %s, server %s (executor %s)',
              topic, host, server.executor_type)
    return server
