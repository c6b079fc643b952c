# SPDX-License-Identifier: Apache-2.0
"""accel-daemon as a service: the real console script, a real privsep
helper and the real RabbitMQ broker, started with a real systemd
notification socket (a unix datagram socket this test binds, given as
``NOTIFY_SOCKET``), one real request, then SIGTERM.

* Quiet: nothing at WARNING or above and no Python warning in its whole
  output, and exit status 0.
* Readiness: the first datagram is READY=1, sent only once the privsep
  helper runs and the daemon answers at once; STOPPING=1 follows SIGTERM.
  A daemon whose helper cannot start never sends READY=1.
* Modes: the state directory, the lock and the journal have the modes the
  docs state (0700, 0600, 0600).

Twice: as root, like the other functional tests, and as production runs
it: as an unprivileged service user whose helper goes through sudo and the
shipped sudoers rule, under the systemd unit's capability bounding set and
UMask, with a state directory an older install.sh made 0750.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile

import pytest

from accel_daemon import exception
from accel_daemon.manager import lock
from tests import brokeraccounts
from tests.functional import procwatch
from tests.functional import test_privsep
from tests.functional.test_rpc_daemon import check_result
from tests.functional.test_rpc_daemon import DAEMON
from tests.functional.test_rpc_daemon import DaemonProcess
from tests.functional.test_rpc_daemon import make_raw
from tests.functional.test_rpc_daemon import MiB
from tests.functional.test_rpc_daemon import require_broker
from tests.functional import test_service_unit

pytestmark = [pytest.mark.functional, pytest.mark.rpc, pytest.mark.privsep,
              pytest.mark.skipif(os.geteuid() != 0, reason='needs root'),
              pytest.mark.timeout(300)]

VENV_BIN = os.path.dirname(DAEMON)
HELPER = os.path.join(VENV_BIN, 'accel-privsep-helper')
# A log line at WARNING or above (oslo.log's format: "date time pid LEVEL
# logger"), a Python warning ("file:line: SomeWarning: text") or a
# traceback.
NOISE = re.compile(r'^\S+ \S+ \d+ (WARNING|ERROR|CRITICAL) '
                   r'|\w+Warning: |^Traceback ', re.M)


class NotifySocket:
    """What systemd listens on for sd_notify datagrams."""

    def __init__(self, mode: int = 0o600) -> None:
        self.dir = tempfile.mkdtemp(prefix='accel-notify-', dir='/tmp')
        os.chmod(self.dir, 0o755)
        self.path = os.path.join(self.dir, 'notify')
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, mode)

    def recv(self, timeout: float) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096)
        except TimeoutError:
            return None

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify():
    s = NotifySocket(mode=0o666)
    yield s
    s.close()


class Service(DaemonProcess):
    """DaemonProcess started with an environment and, optionally, a
    command in front (setpriv for the service user)."""

    def launch(self, env: dict[str, str], prefix: list[str] = ()) -> None:
        with open(self.log_path, 'ab') as log:
            self.proc = subprocess.Popen(
                list(prefix) + [DAEMON, '--config-file', self.config],
                stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, cwd='/',
                start_new_session=True)

    def log(self) -> str:
        with open(self.log_path, errors='replace') as f:
            return f.read()


def base_env(notify: NotifySocket) -> dict[str, str]:
    # What systemd gives a service: no TMPDIR (the sudoers rule allows the
    # helper's socket under /tmp only).
    return {'PATH': '/usr/sbin:/usr/bin:/sbin:/bin', 'LANG': 'C.UTF-8',
            'NOTIFY_SOCKET': notify.path}


def helper_pids(config: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        argv = procwatch.cmdline(pid)
        if any(a.endswith(b'/accel-privsep-helper') for a in argv) and \
                config.encode() in argv and b'sudo' not in argv[0]:
            found.append(int(pid))
    return found


def environ(pid: int) -> list[bytes]:
    with open('/proc/%d/environ' % pid, 'rb') as f:
        return f.read().split(b'\0')


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def run_cycle(d: Service, notify: NotifySocket, env: dict[str, str],
              prefix: list[str] = ()) -> dict:
    """Start, READY, one request, SIGTERM, STOPPING, exit: what was seen
    along the way."""
    seen: dict = {}
    d.launch(env, prefix)
    try:
        seen['first'] = notify.recv(timeout=90)
        # At READY=1, at once: the helper runs, and a call with one short
        # try is answered.
        seen['helpers'] = helper_pids(d.config)
        seen['helper_env'] = [environ(p) for p in seen['helpers']]
        conf = d.client_conf()
        conf.set_override('timeout', 3, group='accel_daemon_client')
        from accel_daemon.client import AccelClient
        with AccelClient(conf, host=d.host) as c:
            try:
                c.tasks(limit=1)
                seen['answered_at_ready'] = True
            except exception.ServiceUnavailable:
                seen['answered_at_ready'] = False
        seen['log_at_ready'] = d.log()
        # One real request.
        src = make_raw(os.path.join(d.images, 'svc.raw'), 4 * MiB)
        dst = os.path.join(d.images, 'svc.raw.gz')
        with d.client() as c:
            result = c.compress(src, dst).wait(timeout=120)
        check_result(result, dst)
        seen['modes'] = {name: mode(os.path.join(d.state, name))
                         for name in os.listdir(d.state)}
        seen['modes']['.'] = mode(d.state)
        d.proc.send_signal(signal.SIGTERM)
        seen['rc'] = d.proc.wait(90)
        seen['second'] = notify.recv(timeout=5)
        seen['more'] = notify.recv(timeout=0.5)
    finally:
        if d.proc.poll() is None:
            os.killpg(d.proc.pid, signal.SIGKILL)
            d.proc.wait(10)
    seen['log'] = d.log()
    return seen


def check_cycle(seen: dict, d: Service) -> None:
    assert seen['first'] == b'READY=1', d.log()
    assert len(seen['helpers']) == 1, seen['helpers']
    # The helper does not inherit the notification socket.
    assert not [e for env in seen['helper_env'] for e in env
                if e.startswith(b'NOTIFY_SOCKET=')]
    assert seen['answered_at_ready']
    before = seen['log_at_ready']
    assert before.index('Spawned new privsep daemon') < \
        before.index('accel-daemon serving') < \
        before.index('accel-daemon ready')
    assert seen['second'] == b'STOPPING=1'
    assert seen['more'] is None
    assert seen['rc'] == 0, seen['log']
    assert 'accel-daemon stopped' in seen['log']
    noise = [m.group(0) for m in NOISE.finditer(seen['log'])]
    assert noise == [], seen['log']
    # The modes doc/source/operations.rst states.
    modes = seen['modes']
    assert modes['.'] == 0o700
    assert modes[lock.LOCK_NAME] == 0o600
    assert modes['tasks.sqlite'] == 0o600
    for name in ('tasks.sqlite-wal', 'tasks.sqlite-shm'):
        assert modes.get(name, 0o600) == 0o600, name
    assert set(modes) <= {'.', lock.LOCK_NAME, 'tasks.sqlite',
                          'tasks.sqlite-wal', 'tasks.sqlite-shm',
                          'tasks.sqlite-journal'}, modes


@pytest.fixture
def accounts(tmp_path):
    require_broker()
    with brokeraccounts.accounts(str(tmp_path / 'broker')) as made:
        yield made


def test_root_daemon_is_quiet_ready_when_answering(tmp_path, notify,
                                                   accounts):
    d = Service(str(tmp_path / 'root'), accounts=accounts)
    seen = run_cycle(d, notify, base_env(notify))
    check_cycle(seen, d)


def test_no_ready_when_the_helper_cannot_start(tmp_path, notify, accounts):
    d = Service(str(tmp_path / 'nohelper'), accounts=accounts,
                extra='[privsep_accel]\nhelper_command = /bin/false\n')
    d.launch(base_env(notify))
    try:
        rc = d.proc.wait(90)
    finally:
        if d.proc.poll() is None:
            os.killpg(d.proc.pid, signal.SIGKILL)
    assert rc == 1
    assert notify.recv(timeout=0.5) is None
    assert 'accel-daemon: cannot start the privsep helper: ' in d.log()
    assert 'Traceback' not in d.log()


# -- as production runs it ---------------------------------------------------
def unit_service_section() -> dict[str, list[str]]:
    with open(test_service_unit.UNIT) as f:
        return test_service_unit.parse_unit(f.read())['Service']


def setpriv_prefix(user: str) -> list[str]:
    """The unit's User=, Group= and CapabilityBoundingSet= (and no
    no_new_privs), by setpriv, which then execs the daemon."""
    service = unit_service_section()
    caps = test_service_unit.one(service, 'CapabilityBoundingSet').split()
    bounding = ','.join(['-all'] + ['+' + c[4:].lower() for c in caps])
    return ['setpriv', '--reuid', user, '--regid', user, '--init-groups',
            '--bounding-set', bounding]


need_service_user = pytest.mark.skipif(
    shutil.which('setpriv') is None or any(
        shutil.which(t) is None for t in ('sudo', 'visudo', 'useradd',
                                          'setfacl')),
    reason='needs setpriv, sudo, visudo, useradd and setfacl')


@need_service_user
def test_service_user_through_sudo_is_quiet_and_ready(notify, accounts):
    user = 'accel-sv-%s' % os.urandom(3).hex()
    subprocess.run(['useradd', '--system', '--user-group', '--no-create-home',
                    '--shell', '/usr/sbin/nologin', user], check=True)
    root = tempfile.mkdtemp(prefix='accel-svc-', dir='/tmp')
    sudoers = None
    try:
        os.chmod(root, 0o755)
        d = Service(os.path.join(root, 'd'), accounts=accounts)
        # The layout install.sh makes, with the state directory as older
        # releases made it (0750): the daemon makes it 0700.
        os.chmod(d.root, 0o755)
        os.makedirs(d.state, mode=0o750)
        os.chmod(d.state, 0o750)
        for path in (d.state, d.images):
            shutil.chown(path, user, user)
        os.chmod(d.images, 0o750)
        os.chmod(d.config, 0o644)
        venv = os.path.dirname(VENV_BIN)
        sudoers = test_privsep._install_sudoers(user, venv, d.config)
        umask = int(test_service_unit.one(unit_service_section(), 'UMask'),
                    8)
        prefix = setpriv_prefix(user) + [
            'sh', '-c', 'umask %03o; exec "$@"' % umask, 'sh']
        with test_privsep.traversable_by(user, DAEMON), \
                test_privsep.helper_policy(venv, d.config):
            seen = run_cycle(d, notify, base_env(notify), prefix)
        check_cycle(seen, d)
        # It really ran as the service user, its helper through sudo.
        assert re.search(r"Running privsep helper: \['%s', '-n', '%s'"
                         % (re.escape(shutil.which('sudo')),
                            re.escape(HELPER)), seen['log']), seen['log']
        assert os.stat(os.path.join(d.state, 'tasks.sqlite')).st_uid == \
            int(subprocess.run(['id', '-u', user], capture_output=True,
                               text=True, check=True).stdout)
    finally:
        if sudoers:
            os.unlink(sudoers)
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(Exception):
            subprocess.run(['userdel', user], check=False)
            subprocess.run(['groupdel', user], check=False,
                           capture_output=True)


def test_setpriv_prefix_keeps_the_units_capabilities():
    prefix = setpriv_prefix('nobody')
    caps = prefix[prefix.index('--bounding-set') + 1].split(',')
    assert caps[0] == '-all'
    assert '+setuid' in caps and '+dac_override' in caps
    # No tool reopens a file any more (engine.nbd): nothing keeps it.
    assert '+dac_read_search' not in caps
    assert shlex.join(prefix).startswith('setpriv --reuid nobody')
