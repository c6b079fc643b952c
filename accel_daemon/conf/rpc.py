# SPDX-License-Identifier: Apache-2.0
"""RPC options: the daemon's server side and the client library's side.

oslo.messaging registers its own options (transport_url, control_exchange,
rpc_response_timeout...) on whatever ``ConfigOpts`` it is handed; only our
own options live here.  The client group is registered on the *caller's*
configuration (cinder's or nova's) by ``accel_daemon.client``.
"""

import socket

from oslo_config import cfg

SERVER_GROUP = cfg.OptGroup('accel_daemon_rpc',
                            title='accel-daemon RPC server')
CLIENT_GROUP = cfg.OptGroup('accel_daemon_client',
                            title='accel-daemon client library')

DEFAULT_TOPIC = 'accel_daemon'
# The client's backoff between attempts while the daemon's queue is full:
# the first wait, doubled each attempt up to the last, each jittered.
QUEUE_RETRY_FIRST = 0.25
QUEUE_RETRY_MAX = 5.0

SERVER_OPTS = [
    cfg.StrOpt('host', default=socket.gethostname(),
               sample_default='<this host name>',
               help='Name this daemon listens as (the RPC server name). '
                    'Clients address it with the same value in '
                    '[accel_daemon_client] host. Defaults to the machine '
                    'host name.'),
    cfg.StrOpt('topic', default=DEFAULT_TOPIC,
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
]

CLIENT_OPTS = [
    cfg.BoolOpt('enabled', default=False,
                help='Whether the service uses accel-daemon. Read by the '
                     'accel-cinder-volume and accel-nova-compute commands '
                     '(run in place of cinder-volume and nova-compute, with '
                     'the same arguments) from the service\'s own '
                     'configuration files: when true they install the '
                     'integration (accel_daemon.integrations.cinder or '
                     '.nova) before the service starts; when false they '
                     'start the service unchanged. The client library '
                     'itself (AccelClient) does not read it.'),
    cfg.StrOpt('host',
               help='Host name of the accel-daemon to call (its '
                    '[accel_daemon_rpc] host). Unset means this machine\'s '
                    'host name, which is right when the daemon runs beside '
                    'the service.'),
    cfg.StrOpt('topic', default=DEFAULT_TOPIC,
               help='RPC topic of the daemon ([accel_daemon_rpc] topic).'),
    cfg.StrOpt('transport_url', secret=True,
               help='oslo.messaging transport URL of the broker the daemon '
                    'listens on. Unset means the service\'s own '
                    '[DEFAULT] transport_url, which is right when the '
                    'service and the daemon share a broker and virtual '
                    'host. Set it where they do not, e.g. a nova-compute '
                    'whose transport_url names its cell\'s virtual host '
                    'while the daemon listens on the default one.'),
    cfg.IntOpt('timeout', default=60, min=1,
               help='Seconds to wait for the daemon to answer one RPC call '
                    '(not for a task to finish: tasks are waited for with '
                    'repeated short calls). A daemon that does not answer '
                    'in time raises ServiceUnavailable.'),
    cfg.FloatOpt('wait_interval', default=5.0, min=0.1, max=300.0,
                 help='Seconds each task_wait call asks the daemon to block '
                      'while a task handle waits. Smaller values notice a '
                      'caller-side deadline sooner; larger ones make fewer '
                      'calls.'),
    cfg.FloatOpt('task_timeout', default=0.0, min=0.0,
                 help='Seconds a task handle\'s wait() waits for its task '
                      'when the caller gives no timeout. When the wait '
                      'gives up (this deadline, the caller\'s own timeout, '
                      'or an exception such as a killed green thread '
                      'interrupting it) the client cancels the task, '
                      'unless wait() was called with cancel=False. 0 means '
                      'no limit: the daemon\'s own [tasks] task_timeout '
                      'still ends any task.'),
    cfg.FloatOpt('queue_full_timeout', default=60.0, min=0.0,
                 help='Seconds an operation call (compress, convert...) '
                      'keeps retrying while the daemon answers QueueFull, '
                      'waiting between attempts with a jittered exponential '
                      'backoff (%.2f s doubling up to %.0f s). After this '
                      'deadline the QueueFull is raised. 0 raises it at '
                      'once.' % (QUEUE_RETRY_FIRST, QUEUE_RETRY_MAX)),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(SERVER_GROUP)
    conf.register_opts(SERVER_OPTS, group=SERVER_GROUP)
    register_client_opts(conf)


def register_client_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(CLIENT_GROUP)
    conf.register_opts(CLIENT_OPTS, group=CLIENT_GROUP)


def list_opts():
    return {SERVER_GROUP: SERVER_OPTS, CLIENT_GROUP: CLIENT_OPTS}
