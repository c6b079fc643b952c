# SPDX-License-Identifier: Apache-2.0
"""Callers have identities: a real daemon serving two callers, each on its
own RabbitMQ account and virtual host made by ``tools/broker.sh`` (as
``tools/install.sh --caller`` makes them), and a throwaway local user who
holds no caller's credentials.

* The broker refuses the local user: guest, a wrong password, or one
  caller's account on the other's virtual host (``amqp_probe.py``, run as
  that user with the system's python3).
* The daemon is not reachable where guest may go (the default virtual
  host).
* Each caller names only its own directories (a write or ``replace`` in
  the other's is PathNotAllowed, nothing written), and sees and cancels
  only its own tasks (another's task is TaskNotFound, like a missing one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from accel_daemon import exception
from tests import brokeraccounts
from tests.functional.reliability import arena
from tests.functional.reliability import common
from tests.functional.test_rpc_daemon import DaemonProcess

pytestmark = common.marks(300)

HERE = os.path.dirname(os.path.abspath(__file__))
MiB = common.MiB


class Deployment:
    """The broker accounts (``tests/brokeraccounts.py``) and the daemon;
    ``names`` maps each role (cinder, nova) to its caller name."""

    def __init__(self, root: str, accounts) -> None:
        self.accounts = accounts
        self.names = {role: accounts.name(role) for role in
                      ('cinder', 'nova')}
        self.root = root
        self.daemon: DaemonProcess | None = None
        self.dirs: dict[str, str] = {}
        self.client_confs: dict[str, str] = {}
        self.urls = {role: accounts.caller(role) for role in self.names}

    def account(self, role: str) -> tuple[str, str]:
        return self.accounts.account(role)

    def start(self) -> None:
        root = os.path.join(self.root, 'daemon')
        os.makedirs(root)
        images = os.path.join(os.path.realpath(root), 'images')
        callers = {}
        for role, name in self.names.items():
            self.dirs[role] = os.path.join(images, role)
            callers[name] = {'transport_url': self.urls[role],
                             'allowed_dirs': self.dirs[role],
                             'max_queued': 2}
        self.daemon = DaemonProcess(
            root, extra=brokeraccounts.caller_sections(callers))
        for path in self.dirs.values():
            os.makedirs(path)
        for role in self.names:
            path = os.path.join(self.root, '%s.conf' % role)
            with open(path, 'w') as f:
                f.write('[accel_daemon_client]\ntransport_url = %s\n'
                        'timeout = 30\n' % self.accounts.client_url(role))
            self.client_confs[role] = path
        self.daemon.spawn()
        with self.client('cinder') as c:
            self.daemon.wait_ready(c, 60, gone=AssertionError)

    def client(self, role: str, **kwargs):
        assert self.daemon is not None
        return self.daemon.client(self.client_confs[role], **kwargs)

    def stop(self) -> None:
        if self.daemon is not None:
            common.stop_daemon(self.daemon)


@pytest.fixture(scope='module')
def deployment(tmp_path_factory):
    common.require_broker()
    root = str(tmp_path_factory.mktemp('callers'))
    with brokeraccounts.accounts(os.path.join(root, 'broker')) as accounts:
        d = Deployment(root, accounts)
        try:
            d.start()
            yield d
        finally:
            d.stop()


def probe_as(user, script_dir: str, vhost: str, login: str,
             password: str) -> str:
    name, uid, gid = user

    def become():
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    out = subprocess.run(
        [arena.PYTHON, os.path.join(script_dir, 'amqp_probe.py'),
         '127.0.0.1', '5672', vhost],
        input='%s\n%s\n' % (login, password), capture_output=True,
        text=True, timeout=60, preexec_fn=become, cwd='/')
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def script_dir():
    """amqp_probe.py where any user can run it (pytest's own temporary
    directories are root's only)."""
    path = tempfile.mkdtemp(prefix='accel-probe-', dir='/tmp')
    os.chmod(path, 0o755)
    shutil.copy(os.path.join(HERE, 'amqp_probe.py'), path)
    os.chmod(os.path.join(path, 'amqp_probe.py'), 0o644)
    yield path
    shutil.rmtree(path)


def test_the_broker_refuses_a_local_user_without_credentials(
        deployment, script_dir):
    cinder_vhost = 'accel-%s' % deployment.names['cinder']
    nova_vhost = 'accel-%s' % deployment.names['nova']
    cinder_user, cinder_password = deployment.account('cinder')
    with common.throwaway_user() as user:
        attempts = {
            'guest on cinder': (cinder_vhost, 'guest', 'guest'),
            'guest on nova': (nova_vhost, 'guest', 'guest'),
            'wrong password': (cinder_vhost, cinder_user, 'guess'),
            'cinder on nova': (nova_vhost, cinder_user, cinder_password),
            'no account': (cinder_vhost, user[0], ''),
        }
        seen = {what: probe_as(user, script_dir, *args)
                for what, args in attempts.items()}
        # The control: with the credentials, the same user gets in.
        control = probe_as(user, script_dir, cinder_vhost,
                           cinder_user, cinder_password)
    assert control == 'open'
    assert seen == {'guest on cinder': 'refused-vhost',
                    'guest on nova': 'refused-vhost',
                    'wrong password': 'refused-login',
                    'cinder on nova': 'refused-vhost',
                    'no account': 'refused-login'}, seen


def test_guest_reaches_no_daemon(deployment, tmp_path):
    # Where guest may log in (the default virtual host) nothing serves.
    conf = tmp_path / 'guest.conf'
    conf.write_text('[accel_daemon_client]\ntransport_url = '
                    'rabbit://guest:guest@127.0.0.1:5672/\ntimeout = 3\n')
    with deployment.daemon.client(str(conf)) as c:
        with pytest.raises(exception.ServiceUnavailable):
            c.capabilities()
        with pytest.raises(exception.ServiceUnavailable):
            c.tasks()


def _write(path: str, data: bytes) -> str:
    with open(path, 'wb') as f:
        f.write(data)
    return path


def test_each_caller_names_only_its_own_directories(deployment):
    cdir, ndir = deployment.dirs['cinder'], deployment.dirs['nova']
    c_in = _write(os.path.join(cdir, 'in.raw'), os.urandom(MiB))
    n_in = _write(os.path.join(ndir, 'disk.img'), b'nova' * (MiB // 4))
    with deployment.client('cinder') as cinder:
        assert cinder.capabilities()['allowed_dirs'] == [cdir]
        # Its own directory: served.
        done = cinder.copy(c_in, os.path.join(cdir, 'out.raw'),
                           checksum=True).wait(60)
        assert done['size'] == MiB
        # nova's: refused, whether as input, output or replace.
        for src, dst, extra in (
                (n_in, os.path.join(cdir, 'stolen.raw'), {}),
                (c_in, os.path.join(ndir, 'planted.raw'), {}),
                (c_in, n_in, {'replace': True})):
            with pytest.raises(exception.PathNotAllowed):
                cinder.copy(src, dst, **extra)
    assert sorted(os.listdir(ndir)) == ['disk.img']
    with open(n_in, 'rb') as f:
        assert f.read() == b'nova' * (MiB // 4)
    assert sorted(os.listdir(cdir)) == ['in.raw', 'out.raw']


def test_a_caller_sees_and_cancels_only_its_own_tasks(deployment):
    ndir = deployment.dirs['nova']
    src = _write(os.path.join(ndir, 'tasks.raw'), os.urandom(MiB))
    with deployment.client('nova') as nova, \
            deployment.client('cinder') as cinder:
        handle = nova.copy(src, os.path.join(ndir, 'tasks.out'))
        handle.wait(60)
        assert handle.task['caller'] == deployment.names['nova']
        task_id = handle.id
        with pytest.raises(exception.TaskNotFound):
            cinder.task(task_id)
        with pytest.raises(exception.TaskNotFound):
            cinder._api.task_cancel(cinder.host, task_id)
        with pytest.raises(exception.TaskNotFound):
            cinder._api.task_wait(cinder.host, task_id, 0.1)
        assert task_id not in {t.id for t in cinder.tasks()}
        assert task_id in {t.id for t in nova.tasks()}
        assert nova.task(task_id).state == 'succeeded'
