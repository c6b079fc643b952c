# SPDX-License-Identifier: Apache-2.0
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

The service runs under oslo.service's ``Launcher`` (threading backend): it
starts ``Service`` in a thread of this process and stops and waits for it.
Not ``oslo_service.service.launch()``: with the threading backend that is a
cotyledon ``ServiceManager``, which forks the service into a child process
and tells systemd READY=1 from the parent as soon as it starts supervising,
before the child has even started its RPC server (and it then removes
NOTIFY_SOCKET, so the child cannot say it later).  The lock, the presence
check and the privsep helper would also belong to different processes.

Readiness (systemd ``Type=notify``): READY=1 is sent on ``$NOTIFY_SOCKET``
once the privsep helper is up and the RPC server has answered a call of
this daemon's own (``wait_until_answering``); STOPPING=1 as the stop
begins.  Without NOTIFY_SOCKET nothing is sent.

Signals: SIGTERM (and SIGINT) stop the RPC server, stop the task manager
(running tasks get ``[tasks] stop_timeout`` seconds, then are cancelled)
and exit 0; SIGHUP reloads the command filters.  Handlers only post to a
queue: the work happens in the main thread, never inside a handler that may
have interrupted code holding a lock.
"""

from accel_daemon.cmd import privsep_helper

# futurist, oslo.service and oslo.privsep import eventlet whenever it is
# installed (oslo.service depends on it): no green DNS, no import warning
# (privsep_helper's docstring says why).  This daemon never uses eventlet.
privsep_helper.without_green_threads()

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
import socket  # noqa: E402
import stat  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

from oslo_config import cfg  # noqa: E402
from oslo_log import log as oslo_log  # noqa: E402
from oslo_service import service as oslo_service  # noqa: E402

from accel_daemon import conf as accel_conf  # noqa: E402
from accel_daemon.conf import callers as callers_conf  # noqa: E402
from accel_daemon.engine import paths  # noqa: E402
from accel_daemon.engine.tooluser import ToolUser  # noqa: E402
from accel_daemon.manager import lock as state_lock  # noqa: E402
from accel_daemon.manager.tasks import TaskManager  # noqa: E402
from accel_daemon.rpc import endpoint as rpc_endpoint  # noqa: E402
from accel_daemon.rpc import presence  # noqa: E402
from accel_daemon.rpc import rpcapi  # noqa: E402
from accel_daemon.rpc import server as rpc_server  # noqa: E402
from accel_daemon import streamproto  # noqa: E402

LOG = logging.getLogger(__name__)
CONF = accel_conf.CONF
PROJECT = 'accel-daemon'
# The modes the docs state (doc/source/operations.rst): the state
# directory, and the files in it (the lock, the journal).
STATE_DIR_MODE = 0o700

CLI_OPTS = [
    # For tests and development only: run the engine inside this process
    # instead of behind oslo.privsep.  Only honoured for root, where the
    # privilege split buys nothing anyway.
    cfg.BoolOpt('local-backend', default=False, advanced=True,
                help='(Testing only) run operations in-process instead of '
                     'in the privsep daemon. Requires running as root.'),
]


class ClosingChannelNoise(logging.Filter):
    """Demote to DEBUG the two 'Received method ... during closing channel'
    warnings that oslo.messaging's rabbit driver causes on every start and
    stop of this daemon; any other amqp record passes unchanged.

    Both are frames AMQP says a closing channel must discard, so nothing is
    lost:

    * (60, 80), basic.ack: the presence probe (``accel_daemon.rpc.presence``)
      publishes with the mandatory flag on a channel in confirm mode.  When
      no queue is bound the broker sends basic.return, then basic.ack; the
      driver raises MessageUndeliverable on the return, so the ack is still
      unread when the probe's transport closes the channel.
    * (60, 30), basic.cancel: at stop the driver deletes the RPC server's
      fanout queue while still consuming from it, and the broker tells the
      consumer so (consumer_cancel_notify) just as the channel closes.
    """

    EXPECTED = frozenset({(60, 80), (60, 30)})

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.levelno == logging.WARNING
                and 'during closing channel' in str(record.msg)
                and isinstance(record.args, tuple) and record.args
                and isinstance(record.args[0], tuple)
                and record.args[0] in self.EXPECTED):
            record.levelno, record.levelname = logging.DEBUG, 'DEBUG'
            return logging.getLogger(record.name).isEnabledFor(
                logging.DEBUG)
        return True


def parse_args(argv: list[str] | None, conf: cfg.ConfigOpts = CONF) -> None:
    accel_conf.register_opts(conf)
    conf.register_cli_opts(CLI_OPTS)
    oslo_log.register_options(conf)
    conf(argv, project=PROJECT)
    oslo_log.setup(conf, PROJECT)
    amqp_log = logging.getLogger('amqp')
    if not any(isinstance(f, ClosingChannelNoise) for f in amqp_log.filters):
        amqp_log.addFilter(ClosingChannelNoise())


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
    """Refuse a state_dir, staging_dir or stream socket_dir that requests
    could name: the journal holds every task's paths and results, the
    staging directory outputs nobody may see before they are accepted,
    the stream sockets are the streams' only door, and an allowed
    directory is the requests'.  A socket_dir too long for a socket's
    path is refused too."""
    a = conf.accel_daemon
    dirs = [('state_dir', a.state_dir), ('staging_dir', a.staging_dir),
            ('[streams] socket_dir', conf.streams.socket_dir)]
    for option, value in dirs:
        if not value:
            continue
        own = os.path.realpath(value)
        for allowed in a.allowed_dirs:
            root = os.path.realpath(allowed)
            if own == root or own.startswith(root.rstrip('/') + '/'):
                raise SystemExit('[accel_daemon] %s %s is inside the '
                                 'allowed directory %s; move it out'
                                 % (option, own, allowed))
    longest = streamproto.socket_path(conf.streams.socket_dir,
                                      '00000000-0000-0000-0000-000000000000')
    if len(longest.encode()) > streamproto.MAX_SOCKET_PATH:
        raise SystemExit('[streams] socket_dir %s is too long for a socket '
                         'path (at most %d bytes with a task id); choose a '
                         'shorter one' % (conf.streams.socket_dir,
                                          streamproto.MAX_SOCKET_PATH))


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


def check_hardlinks(proc_root: str = '/proc') -> None:
    """Warn when any user may hard-link files it does not own into an
    allowed directory: inputs with other links are then refused unless
    their directory's owner owns them (accel_daemon.engine.files)."""
    if paths.hardlinks_protected(proc_root) is False:
        LOG.warning('fs.protected_hardlinks is 0: a caller can hard-link '
                    'files it does not own into its directories; set it '
                    'to 1 (sysctl fs.protected_hardlinks=1)')


def ensure_state_dir(conf: cfg.ConfigOpts) -> str:
    """Create ``state_dir`` mode 0700, or make an existing one of ours
    0700: it holds the task journal (every task's paths and results) and
    the lock, which only this daemon reads.  A directory of another owner
    is left as it is (we could not change it)."""
    state_dir = conf.accel_daemon.state_dir
    os.makedirs(state_dir, mode=STATE_DIR_MODE, exist_ok=True)
    st = os.lstat(state_dir)
    if not stat.S_ISDIR(st.st_mode):
        raise SystemExit('accel-daemon: refusing to start: [accel_daemon] '
                         'state_dir %s is not a directory' % state_dir)
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == os.geteuid() and mode != STATE_DIR_MODE:
        os.chmod(state_dir, STATE_DIR_MODE)
        LOG.info('state_dir %s: mode %04o changed to %04o', state_dir, mode,
                 STATE_DIR_MODE)
    return state_dir


def lock_state_dir(conf: cfg.ConfigOpts) -> state_lock.StateLock:
    """Hold the state directory for this process's life, or exit naming
    the daemon that holds it."""
    state_dir = ensure_state_dir(conf)
    holder = state_lock.holder_info(server=conf.accel_daemon_rpc.host)
    holder['topic'] = conf.accel_daemon_rpc.topic
    try:
        return state_lock.StateLock.acquire(state_dir, holder)
    except state_lock.StateDirLocked as e:
        raise SystemExit('accel-daemon: refusing to start: %s' % e) from None
    except OSError as e:
        raise SystemExit('accel-daemon: refusing to start: cannot lock '
                         'state_dir %s: %s' % (state_dir, e)) from None


def callers_of(conf: cfg.ConfigOpts) -> list[rpc_endpoint.Caller]:
    """Whom this daemon serves, each on its own transport: the
    ``[caller:NAME]`` sections, or the one caller of ``[DEFAULT]
    transport_url`` (``accel_daemon.conf.callers``)."""
    scopes = callers_conf.scopes(conf)
    if not scopes:
        return [rpc_endpoint.Caller.only(accel_conf.settings(conf))]
    found = []
    for scope in scopes:
        opts = conf[callers_conf.group_name(scope.name)]
        found.append(rpc_endpoint.Caller(
            scope.name, scope.allowed_dirs, scope.allowed_block_devices,
            max_queued=opts.max_queued, operator=opts.operator,
            transport_url=opts.transport_url))
    return found


def broker_user(conf: cfg.ConfigOpts, url: str | None) -> str | None:
    """The user name in a transport URL (None: [DEFAULT] transport_url)."""
    import oslo_messaging
    rpcapi.register_messaging_opts(conf)
    try:
        parsed = oslo_messaging.TransportURL.parse(conf, url)
    except Exception:
        # oslo.messaging refuses it properly when the transport is built.
        return None
    return next((h.username for h in parsed.hosts if h.username), None)


def check_callers(conf: cfg.ConfigOpts) -> list[rpc_endpoint.Caller]:
    """The callers, or exit with the configuration's mistake; warn about
    what lets one local user act as another (doc/source/security.rst)."""
    try:
        callers = callers_of(conf)
    except callers_conf.CallerConfigError as e:
        raise SystemExit('accel-daemon: refusing to start: %s' % e) from None
    if callers[0].name is None:
        LOG.warning('No [accel_daemon_rpc] callers configured: whoever holds '
                    'the credentials of [DEFAULT] transport_url may use every '
                    'allowed directory and see every task (tools/install.sh '
                    '--caller gives each service its own)')
    for d, a, b in callers_conf.shared_dirs(
            tuple(accel_conf.settings(conf).callers)):
        LOG.warning('Callers %s and %s share the directory %s: each can '
                    'plant or replace files the other uses', a, b, d)
    for caller in callers:
        if broker_user(conf, caller.transport_url) == 'guest':
            LOG.warning('The transport of %s logs in as guest, which any '
                        'local user may use: give it an account of its own',
                        'caller %s' % caller.name if caller.name
                        else '[DEFAULT] transport_url')
    return callers


def _transports(conf: cfg.ConfigOpts) -> list[Any]:
    return [rpcapi.get_transport(conf, url=c.transport_url)
            for c in callers_of(conf)]


def check_server_name(conf: cfg.ConfigOpts) -> None:
    """Exit if another daemon already answers on our server name, on any
    caller's transport."""
    opts = conf.accel_daemon_rpc
    if not opts.presence_timeout:
        return
    for transport in _transports(conf):
        try:
            taken = presence.someone_answers(transport, opts.topic,
                                             opts.host, opts.presence_timeout)
        finally:
            transport.cleanup()
        if taken:
            raise SystemExit(
                'accel-daemon: refusing to start: another accel-daemon '
                'already answers as server %s on topic %s (same transport '
                'and exchange); stop it or give this one another '
                '[accel_daemon_rpc] host' % (opts.host, opts.topic))


def wait_until_answering(conf: cfg.ConfigOpts, timeout: float,
                         stopping: Callable[[], bool] = lambda: False
                         ) -> bool:
    """Call this daemon's own server name, on every caller's transport,
    until it answers there: then its RPC servers consume their queues and
    dispatch.  False after ``timeout`` seconds, or as soon as
    ``stopping()`` says the wait is pointless."""
    opts = conf.accel_daemon_rpc
    deadline = time.monotonic() + timeout
    transports = _transports(conf)
    try:
        for transport in transports:
            while True:
                left = deadline - time.monotonic()
                if stopping() or left <= 0:
                    return False
                if presence.someone_answers(transport, opts.topic,
                                            opts.host,
                                            min(2.0, max(left, 0.1))):
                    break
                time.sleep(0.05)
        return True
    finally:
        for transport in transports:
            transport.cleanup()


def make_manager(conf: cfg.ConfigOpts, backend: Any) -> TaskManager:
    check_state_dir(conf)
    ensure_state_dir(conf)
    return TaskManager.from_conf(backend, conf)


class Service(oslo_service.ServiceBase):
    """Backend + task manager + RPC server, and their ordered shutdown.

    An oslo.service service: ``Launcher`` runs ``start()`` in a thread of
    its own, ``stop()`` and ``wait()`` from ``serve()``; ``reset()`` (what
    oslo.service calls on SIGHUP) reloads the filters.
    """

    def __init__(self, conf: cfg.ConfigOpts, backend: Any,
                 close_backend: Callable[[], None] = lambda: None) -> None:
        self.conf = conf
        self.backend = backend
        self.close_backend = close_backend
        self.manager = make_manager(conf, backend)
        opts = conf.accel_daemon_rpc
        settings = accel_conf.settings(conf)
        # One transport, endpoint and server per caller: a request's
        # caller is the transport (broker login) it arrived on.
        self.transports = []
        self.endpoints = []
        self.servers = []
        for caller in callers_of(conf):
            transport = rpcapi.get_transport(conf, url=caller.transport_url)
            endpoint = rpc_endpoint.AccelEndpoint(
                self.manager, backend, settings, max_wait=opts.max_task_wait,
                caller=caller)
            self.transports.append(transport)
            self.endpoints.append(endpoint)
            self.servers.append(rpc_server.build(transport, opts.topic,
                                                 opts.host, [endpoint]))
        # Set when start() has returned or raised; start_error holds what
        # it raised.
        self.started = threading.Event()
        self.start_error: BaseException | None = None
        self._stopped = threading.Event()
        self._managing = False
        # The servers whose start() returned: only those may be stopped.
        self._started: list[Any] = []

    def start(self) -> None:
        try:
            self.manager.start()
            self._managing = True
            for server in self.servers:
                server.start()
                self._started.append(server)
        except BaseException as e:
            self.start_error = e
            raise
        finally:
            self.started.set()
        LOG.info('accel-daemon serving topic %s as %s for %s',
                 self.conf.accel_daemon_rpc.topic,
                 self.conf.accel_daemon_rpc.host,
                 ', '.join(e.caller.name or 'its one caller'
                           for e in self.endpoints))

    def reload(self) -> None:
        try:
            count = self.backend.reload_filters()
            LOG.info('Filters reloaded: %s filters', count)
        except Exception:
            # A broken filter file must not kill the service; the old
            # filters stay in force.
            LOG.exception('Reloading the filters failed')

    def reset(self) -> None:
        self.reload()

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        LOG.info('accel-daemon stopping')
        # No new requests, then let the tasks end (which also wakes any
        # task_wait calls still in flight), then wait for those calls.
        # Only what start() got to: stopping a server that never started
        # would wait for it forever.
        for server in self._started:
            _quietly(server.stop)
        if self._managing:
            self.manager.stop(self.conf.tasks.stop_timeout)
        for server in self._started:
            _quietly(server.wait)
        for transport in self.transports:
            transport.cleanup()
        self.close_backend()
        self._stopped.set()
        LOG.info('accel-daemon stopped')

    def wait(self) -> None:
        self._stopped.wait()


def _quietly(step: Callable[[], None]) -> None:
    """One server's stop or wait: a failing one must not keep the others
    from stopping."""
    try:
        step()
    except Exception:
        LOG.exception('Stopping an RPC server failed')


class Notifier:
    """systemd's notification socket (``sd_notify``), read once from
    ``$NOTIFY_SOCKET`` and removed from the environment, so that neither the
    privsep helper nor the tools inherit it.  Without it, send() does
    nothing."""

    def __init__(self, address: str | None = None) -> None:
        if address is None:
            address = os.environ.pop('NOTIFY_SOCKET', None)
        if address and address.startswith('@'):
            address = '\0' + address[1:]         # abstract namespace
        self.address = address or None

    def send(self, state: str) -> bool:
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(state.encode(), self.address)
        except OSError as e:
            # systemd would wait for READY=1 until its start timeout: say
            # why it never came.
            LOG.warning('systemd notification %r not sent to NOTIFY_SOCKET '
                        '%r: %s', state, self.address, e)
            return False
        return True


def _install_signals(events: queue.SimpleQueue) -> None:
    # SimpleQueue.put is safe to call from a signal handler.
    for signum, name in ((signal.SIGTERM, 'stop'), (signal.SIGINT, 'stop'),
                         (signal.SIGHUP, 'reload')):
        signal.signal(signum, lambda *_, n=name: events.put(n))


def _wait_started(service: Service, events: queue.SimpleQueue,
                  early: list[str]) -> None:
    """Until start() has returned or raised (in the launcher's thread),
    keeping the events that come meanwhile for later: a stop must not race
    a start still under way."""
    while not service.started.wait(0.2):
        _stop_queued(events, early)
    _stop_queued(events, early)


def serve(service: Service, events: queue.SimpleQueue,
          notifier: Notifier | None = None,
          ready_timeout: float = 60.0) -> int:
    """Run ``service`` under oslo.service's Launcher until a 'stop' event;
    'reload' events reload the filters.  READY=1 once the server answers,
    STOPPING=1 when the stop begins.  Exit status: 0, or 1 when the service
    did not start."""
    notifier = notifier or Notifier('')
    launcher = oslo_service.Launcher(service.conf)
    launcher.launch_service(service)
    early: list[str] = []
    status = 0
    _wait_started(service, events, early)
    if service.start_error is None and 'stop' not in early:
        if wait_until_answering(service.conf, ready_timeout,
                                stopping=lambda: _stop_queued(events,
                                                              early)):
            notifier.send('READY=1')
            LOG.info('accel-daemon ready')
        elif 'stop' not in early:
            LOG.error('accel-daemon does not answer its own calls after '
                      '%d s; stopping', ready_timeout)
            early.append('stop')
            status = 1
    if service.start_error is not None:
        LOG.error('accel-daemon could not start: %s', service.start_error)
        early.append('stop')
        status = 1
    for event in _events(events, early):
        if event == 'reload':
            service.reset()
        elif event == 'stop':
            break
    notifier.send('STOPPING=1')
    launcher.stop()
    launcher.wait()
    return status


def _stop_queued(events: queue.SimpleQueue, early: list[str]) -> bool:
    while True:
        try:
            early.append(events.get_nowait())
        except queue.Empty:
            return 'stop' in early


def _events(events: queue.SimpleQueue, early: list[str]):
    yield from early
    while True:
        try:
            yield events.get(timeout=1.0)
        except queue.Empty:
            continue


def main(argv: list[str] | None = None) -> int:
    if (_service_backend.get_backend_type()
            != _service_backend.BackendType.THREADING):
        raise SystemExit('accel-daemon must use the threading model; '
                         'import accel_daemon.cmd.daemon first')
    parse_args(sys.argv[1:] if argv is None else argv)
    check_state_dir(CONF)
    check_callers(CONF)
    check_tool_user(CONF)
    check_hardlinks()
    lock = lock_state_dir(CONF)
    check_server_name(CONF)
    events: queue.SimpleQueue = queue.SimpleQueue()
    _install_signals(events)
    notifier = Notifier()
    try:
        backend = make_backend(CONF)
    except Exception as e:
        # No READY=1: systemd sees a failed start (and the exit status).
        raise SystemExit('accel-daemon: cannot start the privsep helper: '
                         '%s: %s' % (type(e).__name__, e)) from None
    service = Service(CONF, *backend)
    status = serve(service, events, notifier)
    lock.release()
    return status


if __name__ == '__main__':
    sys.exit(main())
