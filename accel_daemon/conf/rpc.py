# SPDX-License-Identifier: Apache-2.0
"""RPC options of the daemon: its server side.

oslo.messaging registers its own options (transport_url, control_exchange,
rpc_response_timeout...) on whatever ``ConfigOpts`` it is handed; only our
own options live here.  The client library's group lives in
``accel_daemon.conf.client`` (registered on the *caller's* configuration,
cinder's or nova's); the daemon registers it too and lists it in its
sample configuration.
"""

import socket

from oslo_config import cfg

from accel_daemon.conf import callers
from accel_daemon.conf import client

SERVER_GROUP = cfg.OptGroup('accel_daemon_rpc',
                            title='accel-daemon RPC server')

SERVER_OPTS = [
    cfg.StrOpt('host', default=socket.gethostname(),
               sample_default='<this host name>',
               help='Name this daemon listens as (the RPC server name). '
                    'Clients address it with the same value in '
                    '[accel_daemon_client] host. Defaults to the machine '
                    'host name.'),
    cfg.StrOpt('topic', default=client.DEFAULT_TOPIC,
               help='RPC topic the daemon listens on. Change it only to run '
                    'several independent daemons against one broker.'),
    cfg.FloatOpt('max_task_wait', default=10.0, min=0.0, max=300.0,
                 help='Longest time, in seconds, one task_wait call blocks '
                      'inside the daemon. Clients wait longer by calling '
                      'again; keep this well below the clients\' RPC '
                      'timeout ([accel_daemon_client] timeout).'),
    cfg.FloatOpt('presence_timeout', default=2.0, min=0.0, max=60.0,
                 help='Seconds the daemon waits, before it starts serving, '
                      'for another daemon to answer a call addressed to its '
                      'own server name (host and topic on the same '
                      'transport_url and control_exchange). Any answer '
                      'means the name is taken, and the daemon refuses to '
                      'start instead of sharing the queue. When no daemon '
                      'ever used the name the broker says so at once; the '
                      'full wait is paid only when an earlier daemon\'s '
                      'queue is still there, as on every restart. An idle '
                      'daemon answers within milliseconds; a daemon whose '
                      'RPC threads are all blocked in task_wait calls '
                      '(executor_thread_pool_size of them, each up to '
                      'max_task_wait) answers later, so raise this on such '
                      'hosts. 0 disables the check.'),
    callers.CALLERS_OPT,
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(SERVER_GROUP)
    conf.register_opts(SERVER_OPTS, group=SERVER_GROUP)
    client.register_opts(conf)


def list_opts():
    return {SERVER_GROUP: SERVER_OPTS, **client.list_opts()}
