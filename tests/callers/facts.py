# SPDX-License-Identifier: Apache-2.0
"""Helpers for the caller fact tests (standard library only)."""

import inspect
import json
import subprocess
import sys

REQUIRED = '<required>'


def major(project):
    """The installed release of ``project``, its major version (the
    caller venvs hold cinder 27-29 or nova 32-34)."""
    from importlib import metadata
    return int(metadata.version(project).split('.')[0])


# Appended to a caller's start-up code, which leaves its configuration in
# CONF: which exchange that configuration gives oslo.messaging, and which
# one an AccelClient built on it sends to.
_EXCHANGES = '''
import json
from accel_daemon.client import AccelClient
client = AccelClient(CONF)
print(json.dumps({
    'control_exchange': CONF.control_exchange,
    # oslo.messaging sends to target.exchange or the driver's default.
    'client': (client._api._client.target.exchange
               or client._transport._driver._default_exchange)}))
client.close()
'''

# The exchange a daemon with a default configuration listens on: its RPC
# server's target exchange, or else the driver's default.
_DAEMON = '''
from oslo_config import cfg
from accel_daemon.rpc import rpcapi
from accel_daemon.rpc import server
print(server.target(rpcapi.TOPIC, 'host').exchange
      or rpcapi.get_transport(cfg.ConfigOpts())._driver._default_exchange)
'''


def params(func):
    """[(name, default or REQUIRED), ...]; annotations are left out (their
    repr changes with the typing module, their meaning does not)."""
    return [(p.name, REQUIRED if p.default is p.empty else p.default)
            for p in inspect.signature(func).parameters.values()]


def _python(code):
    # A fresh interpreter: a service's start-up monkey-patches eventlet
    # and changes oslo.messaging's defaults for the whole process.
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=120, check=False)
    if proc.returncode:
        raise AssertionError('start-up code failed:\n%s' % proc.stderr)
    return proc.stdout.strip().splitlines()[-1]


def exchanges(startup):
    """{'control_exchange', 'client'} after the caller's ``startup`` code."""
    return json.loads(_python(startup + _EXCHANGES))


def daemon_exchange():
    return _python(_DAEMON)
