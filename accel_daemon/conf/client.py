# SPDX-License-Identifier: Apache-2.0
"""``[accel_daemon_client]``: the client library's own options.

Registered on the *caller's* configuration (cinder's or nova's) by
``accel_daemon.client``.  This module holds nothing of the daemon's: the
client that cinder-volume and nova-compute import loads it and the
package's ``__init__`` only, never the daemon's groups or the engine's
settings (``tests/unit/test_layering.py`` checks what it loads).
"""

from oslo_config import cfg

CLIENT_GROUP = cfg.OptGroup('accel_daemon_client',
                            title='accel-daemon client library')

# The daemon's default topic ([accel_daemon_rpc] topic) is the same.
DEFAULT_TOPIC = 'accel_daemon'
# The client's backoff between attempts while the daemon's queue is full:
# the first wait, doubled each attempt up to the last, each jittered.
QUEUE_RETRY_FIRST = 0.25
QUEUE_RETRY_MAX = 5.0

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
    conf.register_group(CLIENT_GROUP)
    conf.register_opts(CLIENT_OPTS, group=CLIENT_GROUP)


def list_opts():
    return {CLIENT_GROUP: CLIENT_OPTS}
