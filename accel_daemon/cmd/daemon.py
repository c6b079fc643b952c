"""The ``accel-daemon`` console script: the RPC service.

    accel-daemon --config-file /etc/accel-daemon/accel-daemon.conf

Threading model only: the daemon never monkey-patches.  oslo.messaging
imports oslo.service, whose default backend is eventlet, so the threading
backend is chosen here before anything imports oslo.messaging.

One daemon per state directory and per server name: main() locks
``<state_dir>/accel-daemon.lock`` (``accel_daemon.manager.lock``) before
anything opens the journal, then checks that no daemon answers on its RPC
server name (``accel_daemon.rpc.presence``) before it starts the privsep
daemon and the RPC server.  Either refusal is one line on stderr and exit
status 1.  Signal handlers are installed only after both checks, so SIGTERM
ends a daemon still waiting for its broker.

Signals: SIGTERM (and SIGINT) stop the RPC server, stop the task manager
(running tasks get ``[tasks] stop_timeout`` seconds, then are cancelled)
and exit 0; SIGHUP reloads the command filters.  Handlers only post to a
queue: the work happens in the main thread, never inside a handler that may
have interrupted code holding a lock.
"""

import warnings

# futurist and oslo.service import eventlet when it is installed, and
# eventlet warns at import in nine lines on stderr.  This daemon never uses
# eventlet; the warning would bury the one line a refused start prints.
warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')

from oslo_service import backend as _service_backend  # noqa: E402
from oslo_service.backend import (  # noqa: E402
    exceptions as _service_exceptions)

try:
    _service_backend.init_backend(_service_backend.BackendType.THREADING)
except _service_exceptions.BackendAlreadySelected:
    # Imported as a library after oslo.messaging (unit tests); main()
    # refuses to serve in that case.
    pass

import logging  # noqa: E402
import os  # noqa: E402
import queue  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from typing import Any, Callable  # noqa: E402

from oslo_config import cfg  # noqa: E402
from oslo_log import log as oslo_log  # noqa: E402

from accel_daemon import conf as accel_conf  # noqa: E402
from accel_daemon.engine.tooluser import ToolUser  # noqa: E402
from accel_daemon.manager import lock as state_lock  # noqa: E402
from accel_daemon.manager.tasks import TaskManager  # noqa: E402
from accel_daemon.rpc import endpoint as rpc_endpoint  # noqa: E402
from accel_daemon.rpc import presence  # noqa: E402
from accel_daemon.rpc import rpcapi  # noqa: E402
from accel_daemon.rpc import server as rpc_server  # noqa: E402

LOG = logging.getLogger(__name__)
CONF = accel_conf.CONF
PROJECT = 'accel-daemon'

CLI_OPTS = [
    # For tests and development only: run the engine inside this process
    # instead of behind oslo.privsep.  Only honoured for root, where the
    # privilege split buys nothing anyway.
    cfg.BoolOpt('local-backend', default=False, advanced=True,
                help='(Testing only) run operations in-process instead of '
                     'in the privsep daemon. Requires running as root.'),
]


def parse_args(argv: list[str] | None, conf: cfg.ConfigOpts = CONF) -> None:
    accel_conf.register_opts(conf)
    conf.register_cli_opts(CLI_OPTS)
    oslo_log.register_options(conf)
    conf(argv, project=PROJECT)
    oslo_log.setup(conf, PROJECT)


def make_backend(conf: cfg.ConfigOpts) -> tuple[Any, Callable[[], None]]:
    """The backend and how to close it: privsep, or in-process when asked
    (as root only)."""
    from accel_daemon.manager import backends
    if conf.local_backend:
        if os.geteuid() != 0:
            raise SystemExit('--local-backend needs root')
        LOG.warning('Running operations in-process (--local-backend)')
        return backends.LocalBackend(accel_conf.settings(conf)), lambda: None
    from accel_daemon.privileged import start as privileged_start
    privileged_start.init(conf)
    # Closing the channel makes the privsep daemon exit.
    return backends.PrivsepBackend(), privileged_start.stop


def check_state_dir(conf: cfg.ConfigOpts) -> None:
    """Refuse a state_dir that requests could name: the journal holds every
    task's paths and results, and an allowed directory is the requests'."""
    state = os.path.realpath(conf.accel_daemon.state_dir)
    for allowed in conf.accel_daemon.allowed_dirs:
        root = os.path.realpath(allowed)
        if state == root or state.startswith(root.rstrip('/') + '/'):
            raise SystemExit('[accel_daemon] state_dir %s is inside the '
                             'allowed directory %s; move it out'
                             % (state, allowed))


def check_tool_user(conf: cfg.ConfigOpts) -> None:
    """Refuse to start when the tools' user is missing (or is root): the
    tools would otherwise fail one by one, or run with privilege."""
    name = conf.accel_daemon.tool_user
    if not name:
        LOG.warning('[accel_daemon] tool_user is empty: external tools run '
                    'as the privileged helper')
        return
    try:
        ToolUser.lookup(name)
    except (KeyError, ValueError) as e:
        raise SystemExit('accel-daemon: refusing to start: [accel_daemon] '
                         'tool_user %s is not usable (%s); create it '
                         '(tools/install.sh does) or name another'
                         % (name, e.args[0] if isinstance(e, ValueError)
                            else 'no such user'))


def lock_state_dir(conf: cfg.ConfigOpts) -> state_lock.StateLock:
    """Hold the state directory for this process's life, or exit naming
    the daemon that holds it."""
    state_dir = conf.accel_daemon.state_dir
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    holder = state_lock.holder_info(server=conf.accel_daemon_rpc.host)
    holder['topic'] = conf.accel_daemon_rpc.topic
    try:
        return state_lock.StateLock.acquire(state_dir, holder)
    except state_lock.StateDirLocked as e:
        raise SystemExit('accel-daemon: refusing to start: %s' % e) from None
    except OSError as e:
        raise SystemExit('accel-daemon: refusing to start: cannot lock '
                         'state_dir %s: %s' % (state_dir, e)) from None


def check_server_name(conf: cfg.ConfigOpts) -> None:
    """Exit if another daemon already answers on our server name."""
    opts = conf.accel_daemon_rpc
    if not opts.presence_timeout:
        return
    transport = rpcapi.get_transport(conf)
    try:
        taken = presence.someone_answers(transport, opts.topic, opts.host,
                                         opts.presence_timeout)
    finally:
        transport.cleanup()
    if taken:
        raise SystemExit(
            'accel-daemon: refusing to start: another accel-daemon already '
            'answers as server %s on topic %s (same transport and exchange); '
            'stop it or give this one another [accel_daemon_rpc] host'
            % (opts.host, opts.topic))


def make_manager(conf: cfg.ConfigOpts, backend: Any) -> TaskManager:
    check_state_dir(conf)
    os.makedirs(conf.accel_daemon.state_dir, mode=0o700, exist_ok=True)
    return TaskManager.from_conf(backend, conf)


class Service:
    """Backend + task manager + RPC server, and their ordered shutdown."""

    def __init__(self, conf: cfg.ConfigOpts, backend: Any,
                 close_backend: Callable[[], None] = lambda: None) -> None:
        self.conf = conf
        self.backend = backend
        self.close_backend = close_backend
        self.manager = make_manager(conf, backend)
        self.transport = rpcapi.get_transport(conf)
        opts = conf.accel_daemon_rpc
        self.endpoint = rpc_endpoint.AccelEndpoint(
            self.manager, backend, accel_conf.settings(conf),
            max_wait=opts.max_task_wait)
        self.server = rpc_server.build(self.transport, opts.topic, opts.host,
                                       [self.endpoint])

    def start(self) -> None:
        self.manager.start()
        self.server.start()
        LOG.info('accel-daemon serving topic %s as %s',
                 self.conf.accel_daemon_rpc.topic,
                 self.conf.accel_daemon_rpc.host)

    def reload(self) -> None:
        try:
            count = self.backend.reload_filters()
            LOG.info('Filters reloaded: %s filters', count)
        except Exception:
            # A broken filter file must not kill the service; the old
            # filters stay in force.
            LOG.exception('Reloading the filters failed')

    def stop(self) -> None:
        LOG.info('accel-daemon stopping')
        # No new requests, then let the tasks end (which also wakes any
        # task_wait calls still in flight), then wait for those calls.
        self.server.stop()
        self.manager.stop(self.conf.tasks.stop_timeout)
        self.server.wait()
        self.transport.cleanup()
        self.close_backend()
        LOG.info('accel-daemon stopped')


def _install_signals(events: queue.SimpleQueue) -> None:
    # SimpleQueue.put is safe to call from a signal handler.
    for signum, name in ((signal.SIGTERM, 'stop'), (signal.SIGINT, 'stop'),
                         (signal.SIGHUP, 'reload')):
        signal.signal(signum, lambda *_, n=name: events.put(n))


def serve(service: Service, events: queue.SimpleQueue) -> None:
    service.start()
    while True:
        try:
            event = events.get(timeout=1.0)
        except queue.Empty:
            continue
        if event == 'reload':
            service.reload()
        elif event == 'stop':
            break
    service.stop()


def main(argv: list[str] | None = None) -> int:
    if (_service_backend.get_backend_type()
            != _service_backend.BackendType.THREADING):
        raise SystemExit('accel-daemon must use the threading model; '
                         'import accel_daemon.cmd.daemon first')
    parse_args(sys.argv[1:] if argv is None else argv)
    check_state_dir(CONF)
    check_tool_user(CONF)
    lock = lock_state_dir(CONF)
    check_server_name(CONF)
    events: queue.SimpleQueue = queue.SimpleQueue()
    _install_signals(events)
    service = Service(CONF, *make_backend(CONF))
    serve(service, events)
    lock.release()
    return 0


if __name__ == '__main__':
    sys.exit(main())
