# SPDX-License-Identifier: Apache-2.0
"""The devstack plugin, every phase run for real on this machine.

``devstack/plugin.sh`` runs under the harness in ``tests/devstack/`` (the
devstack functions it calls, with devstack's signatures) inside a mount
namespace of its own, where ``/etc`` and ``/var/lib`` are overlays on
temporary directories: the users, sudoers rule, ``/etc/accel-daemon`` and
``/var/lib/accel-daemon`` that ``stack install`` makes vanish with the
namespace, and the host's are never touched.  DEST, DATA_DIR, the cinder
and nova configs and the daemon's prefix live in a temporary directory.
"devstack's Python environment" is a venv cached between runs in
/var/cache/accel-daemon (the first run builds it).

One test walks ``stack install``, ``stack post-config``, ``stack extra``,
``unstack`` and ``clean`` in order, checking after each phase what it must
have done (and not done).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid

import pytest

from tests import brokeraccounts
from tests.functional.test_rpc_daemon import require_broker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
RUN_PHASE = os.path.join(ROOT, 'tests', 'devstack', 'run-phase.sh')
CACHE = '/var/cache/accel-daemon'
SERVICE_USER = 'accel-daemon'
CINDER_USER = 'cinder'
HOST_PATHS = ('/etc/accel-daemon/accel-daemon.conf',
              '/etc/sudoers.d/accel-daemon', '/var/lib/accel-daemon/images')

pytestmark = [pytest.mark.functional, pytest.mark.rpc, pytest.mark.privsep,
              pytest.mark.slow]

# Ask the daemon for its capabilities with a service's own config file, as
# cinder-volume or nova-compute would: [DEFAULT] transport_url and
# [accel_daemon_client] (host...).
CLIENT_CALL = '''
import json, sys
from oslo_config import cfg
from accel_daemon.client import AccelClient
from accel_daemon.conf import client
conf = cfg.ConfigOpts()
client.register_opts(conf)
conf([], project='devstack-test', default_config_files=[sys.argv[1]])
conf.set_override('timeout', 10, group='accel_daemon_client')
with AccelClient(conf) as client:
    print(json.dumps(client.capabilities()))
'''


# The callers the plugin gives broker accounts (devstack's rabbit on this
# host), and every user and virtual host it makes for them and the daemon.
CALLERS = ('operator', 'cinder', 'nova')
BROKER_NAMES = {'accel-daemon'} | {'accel-' + c for c in CALLERS}


def _rabbitmqctl(*args: str) -> list[str]:
    out = subprocess.run(['rabbitmqctl', '-q', *args], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return [line.split('\t')[0] for line in out.splitlines()[1:]
            if line.strip()]


def _broker_names() -> set[str]:
    """The broker's users and virtual hosts."""
    return set(_rabbitmqctl('list_users')) | set(_rabbitmqctl('list_vhosts'))


def _broker_permissions(vhost: str) -> set[str]:
    """The users with any permission on ``vhost``."""
    return set(_rabbitmqctl('list_permissions', '-p', vhost))


def _forget_broker_names() -> None:
    for name in BROKER_NAMES:
        subprocess.run(['rabbitmqctl', '-q', 'delete_vhost', name],
                       capture_output=True, timeout=60)
        subprocess.run(['rabbitmqctl', '-q', 'delete_user', name],
                       capture_output=True, timeout=60)


def _client_login(client: dict[str, str]) -> tuple[str, str]:
    """(user, virtual host path) of an [accel_daemon_client] section."""
    url = urllib.parse.urlsplit(client['transport_url'])
    return url.username or '', url.path


def _skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip('needs root (users, sudoers, mount namespace)')
    for tool in ('unshare', 'nsenter', 'setpriv', 'useradd', 'visudo',
                 'rabbitmqctl'):
        if shutil.which(tool) is None:
            pytest.skip('%s is missing' % tool)
    require_broker()
    taken = BROKER_NAMES & _broker_names()
    if taken:
        # A deployment on this host (tools/install.sh): its accounts are
        # the plugin's names; never touch them.
        pytest.skip('the broker already has %s' % ', '.join(sorted(taken)))


def _devstack_venv() -> str:
    """devstack's Python environment: a venv of this checkout's Python
    with nothing of accel-daemon in it until setup_develop runs."""
    key = hashlib.sha256(ROOT.encode()).hexdigest()[:12]
    venv = os.path.join(CACHE, 'devstack-venv-' + key)
    if not os.path.exists(os.path.join(venv, 'bin', 'pip')):
        shutil.rmtree(venv, ignore_errors=True)
        os.makedirs(CACHE, mode=0o755, exist_ok=True)
        subprocess.run(['/usr/bin/python3', '-m', 'venv', venv], check=True)
    return venv


def _upper_constraints(path: str) -> None:
    """A stand-in for requirements' upper-constraints.txt: the versions
    this checkout's own venv holds (so no install needs the network)."""
    frozen = subprocess.run(
        [sys.executable, '-m', 'pip', 'freeze', '--exclude-editable'],
        check=True, capture_output=True, text=True).stdout
    with open(path, 'w') as f:
        f.writelines(line + '\n' for line in frozen.splitlines()
                     if '==' in line and not line.startswith('accel'))


class Namespace:
    """A mount namespace with /etc and /var/lib on throwaway overlays."""

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.holder = subprocess.Popen(
            ['unshare', '--mount', '--propagation', 'private',
             'sleep', '3600'])
        mine = os.readlink('/proc/self/ns/mnt')
        deadline = time.monotonic() + 10
        while os.readlink('/proc/%d/ns/mnt' % self.holder.pid) == mine:
            assert time.monotonic() < deadline, 'unshare did not start'
            time.sleep(0.05)
        self.uppers = {}
        for top in ('/etc', '/var/lib'):
            name = top.strip('/').replace('/', '-')
            upper = os.path.join(tmp, 'overlay', name, 'upper')
            work = os.path.join(tmp, 'overlay', name, 'work')
            os.makedirs(upper)
            os.makedirs(work)
            self.run(['mount', '-t', 'overlay', 'overlay', '-o',
                      'lowerdir=%s,upperdir=%s,workdir=%s'
                      % (top, upper, work), top])
            self.uppers[top] = upper

    def cmd(self, argv: list[str]) -> list[str]:
        return ['nsenter', '-t', str(self.holder.pid), '-m', '--'] + argv

    def run(self, argv: list[str], check: bool = True,
            **kw) -> subprocess.CompletedProcess:
        kw.setdefault('capture_output', True)
        kw.setdefault('text', True)
        r = subprocess.run(self.cmd(argv), **kw)
        assert r.returncode == 0 or not check, '%s: exit %d\n%s%s' % (
            ' '.join(argv), r.returncode, r.stdout, r.stderr)
        return r

    def exists(self, path: str) -> bool:
        return self.run(['test', '-e', path], check=False).returncode == 0

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


@pytest.fixture
def stack():
    _skip_unless_possible()
    # Not pytest's tmp_path, whose root is 0700: the service user must
    # reach the daemon's venv under this directory.
    tmp = tempfile.mkdtemp(prefix='accel-devstack-', dir='/tmp')
    os.chmod(tmp, 0o755)
    ns = Namespace(tmp)
    accounts = brokeraccounts.Accounts(os.path.join(tmp, 'broker'))
    try:
        # devstack's RABBIT_USERID: an account of its own, never guest.
        yield _Stack(ns, tmp, accounts.plain('stack'))
    finally:
        accounts.remove()
        # What the plugin made on the broker, if the test failed before
        # its clean phase removed it.
        _forget_broker_names()
        # A failed test must not leave its daemon running.
        pidfile = os.path.join(tmp, 'status', 'accel-daemon.pid')
        if os.path.exists(pidfile):
            try:
                os.kill(int(open(pidfile).read()), 9)
            except (OSError, ValueError):
                pass
        ns.close()
        shutil.rmtree(tmp, ignore_errors=True)


class _Stack:
    def __init__(self, ns: Namespace, tmp: str, url: str) -> None:
        self.ns = ns
        self.tmp = tmp
        self.venv = _devstack_venv()
        self.host = 'devstack-test-' + uuid.uuid4().hex[:8]
        d = lambda *p: os.path.join(tmp, *p)  # noqa: E731
        reqs = d('requirements')
        os.makedirs(reqs)
        _upper_constraints(os.path.join(reqs, 'upper-constraints.txt'))
        for sub in ('etc/cinder', 'etc/nova', 'opt/stack', 'data/nova'):
            os.makedirs(d(sub))
        self.cinder_conf = d('etc/cinder/cinder.conf')
        self.nova_conf = d('etc/nova/nova.conf')
        self.nova_cpu_conf = d('etc/nova/nova-cpu.conf')
        # nova-compute's as devstack's default cells v2 "superconductor"
        # writes it: the cell's virtual host, where no daemon listens.
        for conf, vhost in ((self.cinder_conf, ''),
                            (self.nova_conf, 'nova_cell1')):
            with open(conf, 'w') as f:
                f.write('[DEFAULT]\ntransport_url = %s%s\n' % (url, vhost))
            os.chmod(conf, 0o644)
        self.daemon_url = url
        # What nova-compute read before devstack rewrote it: stale.
        with open(self.nova_cpu_conf, 'w') as f:
            f.write('[DEFAULT]\nstale = true\n')
        self.prefix = d('opt', 'accel-daemon')
        self.conversion = d('data', 'cinder', 'conversion')
        self.instances = d('data', 'nova', 'instances')
        self.env = {
            'PATH': '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:'
                    '/sbin:/bin',
            'HOME': '/root', 'LANG': 'C.UTF-8',
            'DEST': d('opt', 'stack'), 'DATA_DIR': d('data'),
            'STACK_USER': 'root',
            'ENABLED_SERVICES': 'rabbit,c-api,c-vol,n-api,n-cpu',
            'ACCEL_DAEMON_DIR': ROOT,
            'ACCEL_DAEMON_PREFIX': self.prefix,
            'ACCEL_DAEMON_HOST': self.host,
            'CINDER_STATE_PATH': d('data', 'cinder'),
            'NOVA_INSTANCES_PATH': self.instances,
            'CINDER_CONF': self.cinder_conf,
            'NOVA_CONF': self.nova_conf,
            'NOVA_CPU_CONF': self.nova_cpu_conf,
            'PIP_VIRTUAL_ENV': self.venv,
            'REQUIREMENTS_DIR': reqs,
            'SERVICE_DIR': d('status'), 'LOGDIR': d('logs'),
            'RABBIT_USERID': urllib.parse.urlsplit(url).username,
            'RABBIT_PASSWORD': urllib.parse.urlsplit(url).password,
            'RABBIT_HOST': '127.0.0.1',
            'ENABLE_DEBUG_LOG_LEVEL': 'True',
            # nova-compute on devstack's default virtual host, as the
            # daemon (see the warning checked below).
            'CELLSV2_SETUP': 'singleconductor',
            'PIP_DISABLE_PIP_VERSION_CHECK': '1',
        }
        self.log = os.path.join(tmp, 'logs', 'accel-daemon.log')

    def phase(self, *args: str,
              **env: str) -> subprocess.CompletedProcess:
        started = time.monotonic()
        r = self.ns.run(['bash', RUN_PHASE, *args],
                        env={**self.env, **env}, check=False, timeout=600)
        assert r.returncode == 0, '%s failed:\n%s\n%s' % (
            ' '.join(args), r.stdout[-4000:], r.stderr[-4000:])
        print('%s: %.1f s' % (' '.join(args), time.monotonic() - started))
        return r

    def daemon_log(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()[-4000:]
        except OSError:
            return '(no log)'

    def pid(self) -> int:
        with open(os.path.join(self.tmp, 'status', 'accel-daemon.pid')) as f:
            return int(f.read())

    def capabilities(self, python: str, conf: str, user: str | None,
                     timeout: float = 90) -> dict:
        argv = [python, '-c', CLIENT_CALL, conf]
        if user:
            argv = ['runuser', '-u', user, '--'] + argv
        deadline = time.monotonic() + timeout
        while True:
            r = self.ns.run(argv, check=False, cwd='/', timeout=120)
            if r.returncode == 0:
                return json.loads(r.stdout.strip().splitlines()[-1])
            assert time.monotonic() < deadline, (
                'no capabilities: %s\ndaemon log:\n%s'
                % (r.stderr[-3000:], self.daemon_log()))
            time.sleep(2)


def _ini(path: str) -> dict[str, dict[str, str]]:
    import configparser
    # [DEFAULT] read as a section of its own, not merged into the others.
    p = configparser.RawConfigParser(strict=False,
                                     default_section='\0no default')
    p.read(path)
    return {s: dict(p.items(s)) for s in p.sections()}


def _tree(root: str) -> set[str]:
    """Every path under root (the overlays' own directory left out)."""
    found = set()
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == '.':
            dirs.remove('overlay')
        found.update(os.path.normpath(os.path.join(rel, n))
                     for n in dirs + files)
    return found


def _owner_mode(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    with open('/proc/%d/stat' % pid) as f:
        return f.read().split(') ')[-1][0] != 'Z'


def test_plugin_phases(stack):
    ns = stack.ns
    # cinder's conversion directory, as cinder-volume makes it: its own.
    cinder_user = CINDER_USER
    if ns.run(['getent', 'passwd', cinder_user], check=False).returncode == 0:
        cinder_user += '-' + uuid.uuid4().hex[:8]  # the host has a cinder
    ns.run(['useradd', '--system', '--user-group', '--no-create-home',
            '--shell', '/usr/sbin/nologin', cinder_user])
    ns.run(['install', '-d', '-m', '0755', os.path.dirname(stack.conversion)])
    ns.run(['install', '-d', '-m', '0750', '-o', cinder_user, '-g',
            cinder_user, stack.conversion])
    ns.run(['install', '-m', '0640', '-o', cinder_user, '-g', cinder_user,
            '/dev/null', os.path.join(stack.conversion, 'volume-1.tmp')])
    cinder_dir = _owner_mode(stack.conversion)
    assert cinder_dir[2] == 0o750 and cinder_dir[0] != 0
    before = _tree(stack.tmp)
    host_etc = [os.path.exists(p) for p in HOST_PATHS]

    # -- stack install
    stack.phase('stack', 'install')
    assert _owner_mode(stack.conversion) == cinder_dir
    assert not os.path.exists(stack.instances), 'nova owns its directory'
    # cinder and nova import the client from devstack's environment
    r = subprocess.run(
        [os.path.join(stack.venv, 'bin', 'python'), '-c',
         'import accel_daemon.client, accel_daemon; '
         'print(accel_daemon.__file__)'],
        capture_output=True, text=True, check=True, cwd='/')
    assert r.stdout.strip().startswith(ROOT), 'setup_develop: editable'
    for path in ('/etc/accel-daemon/accel-daemon.conf',
                 '/etc/accel-daemon/rootwrap.d',
                 '/etc/sudoers.d/accel-daemon',
                 '/var/lib/accel-daemon/images',
                 os.path.join(stack.prefix, 'venv', 'bin', 'accel-daemon')):
        assert ns.exists(path), path
    assert ns.run(['id', '-u', SERVICE_USER]).stdout.strip() != '0'
    sudoers = ns.run(['cat', '/etc/sudoers.d/accel-daemon']).stdout
    assert os.path.join(stack.prefix, 'venv', 'bin',
                        'accel-privsep-helper') in sudoers
    # ... and nothing of it outside the namespace
    assert host_etc == [os.path.exists(p) for p in HOST_PATHS]

    # -- stack post-config
    r = stack.phase('stack', 'post-config')
    assert 'WARNING' not in r.stderr
    assert _owner_mode(stack.conversion) == cinder_dir
    conf = ns.run(['cat', '/etc/accel-daemon/accel-daemon.conf']).stdout
    conf_file = os.path.join(stack.tmp, 'daemon.conf')
    with open(conf_file, 'w') as f:
        f.write(conf)
    daemon_conf = _ini(conf_file)
    allowed = daemon_conf['accel_daemon']['allowed_dirs'].split(',')
    assert allowed == ['/var/lib/accel-daemon/images', stack.conversion,
                       stack.instances]
    assert daemon_conf['accel_daemon_rpc']['host'] == stack.host
    # One broker account, virtual host and set of directories per service
    # (and the operator's, for accel-image as root); devstack's own
    # account is nobody's.
    assert daemon_conf['accel_daemon_rpc']['callers'] == \
        'operator,cinder,nova'
    assert daemon_conf['caller:cinder']['allowed_dirs'] == stack.conversion
    assert daemon_conf['caller:nova']['allowed_dirs'] == stack.instances
    assert daemon_conf['caller:operator']['allowed_dirs'] == \
        '/var/lib/accel-daemon/images'
    assert stack.daemon_url.split('@')[0] not in conf
    # devstack's services run as STACK_USER: it may write image streams
    # (and a caller whose name is a system user, as this test's cinder).
    streamers = set(daemon_conf['streams']['allowed_users'].split(','))
    assert stack.env['STACK_USER'] in streamers
    assert streamers <= {stack.env['STACK_USER'], 'cinder', 'nova'}
    members = ns.run(['getent', 'group', 'accel-streams']).stdout
    assert stack.env['STACK_USER'] in members.strip().split(':')[3].split(',')
    for caller in CALLERS:
        assert _broker_permissions('accel-' + caller) == {
            'accel-daemon', 'accel-' + caller}
    cinder = _ini(stack.cinder_conf)['accel_daemon_client']
    assert _client_login(cinder) == ('accel-cinder', '/accel-cinder')
    assert {k: cinder[k] for k in ('enabled', 'host')} == {
        'enabled': 'True', 'host': stack.host}
    # devstack starts nova-compute after post-config: it copies $NOVA_CONF
    # over $NOVA_CPU_CONF (lib/nova, start_nova_compute), then runs
    # nova-compute --config-file $NOVA_CPU_CONF.
    shutil.copyfile(stack.nova_conf, stack.nova_cpu_conf)
    nova_cpu = _ini(stack.nova_cpu_conf)['accel_daemon_client']
    assert _client_login(nova_cpu) == ('accel-nova', '/accel-nova')
    assert {k: nova_cpu[k] for k in ('enabled', 'host')} == {
        'enabled': 'True', 'host': stack.host}
    assert _ini(stack.nova_cpu_conf)['DEFAULT']['transport_url'] \
        .endswith('/nova_cell1'), 'the service\'s own transport is kept'
    # Again: a second post-config changes nothing.
    with open(stack.cinder_conf) as f:
        cinder_text = f.read()
    r = stack.phase('stack', 'post-config', CELLSV2_SETUP='superconductor')
    assert 'WARNING' not in r.stderr
    with open(stack.cinder_conf) as f:
        assert f.read() == cinder_text
    assert ns.run(['cat', '/etc/accel-daemon/accel-daemon.conf']).stdout \
        == conf

    # -- stack extra
    stack.phase('stack', 'extra')
    pid = stack.pid()
    assert _alive(pid), stack.daemon_log()
    want = [os.path.join(stack.prefix, 'venv', 'bin', 'accel-daemon'),
            '--config-file', '/etc/accel-daemon/accel-daemon.conf', '']
    deadline = time.monotonic() + 10
    while True:  # until setpriv and env have exec'd the daemon's Python
        with open('/proc/%d/cmdline' % pid) as f:
            cmdline = f.read().split('\0')
        if len(cmdline) == 5 and cmdline[1:] == want:
            break
        assert time.monotonic() < deadline, cmdline
        time.sleep(0.1)
    with open('/proc/%d/status' % pid) as f:
        uids = next(line for line in f if line.startswith('Uid:')).split()
    service_uid = ns.run(['id', '-u', SERVICE_USER]).stdout.strip()
    assert uids[1:] == [service_uid] * 4, 'runs as the service user'
    # As the service user, with cinder's config (the daemon's venv).
    caps = stack.capabilities(
        os.path.join(stack.prefix, 'venv', 'bin', 'python'),
        stack.cinder_conf, SERVICE_USER)
    # cinder's login: cinder's directories only.
    assert caps['allowed_dirs'] == [stack.conversion], \
        'started from the written config'
    # As nova-compute: devstack's environment and $NOVA_CPU_CONF, whose
    # own transport_url names the cell's virtual host: the client's
    # [accel_daemon_client] transport_url reaches the daemon.
    caps = stack.capabilities(os.path.join(stack.venv, 'bin', 'python'),
                              stack.nova_cpu_conf, None, timeout=30)
    assert caps['allowed_dirs'] == [stack.instances]
    assert _owner_mode(stack.conversion) == cinder_dir

    # -- unstack
    stack.phase('unstack')
    assert not _alive(pid), 'unstack left the daemon running'
    assert not os.path.exists(os.path.join(stack.tmp, 'status',
                                           'accel-daemon.pid'))

    # -- clean
    stack.phase('clean')
    for path in (stack.prefix, '/etc/accel-daemon', '/var/lib/accel-daemon',
                 '/etc/sudoers.d/accel-daemon'):
        assert not ns.exists(path), '%s survived clean' % path
    assert not BROKER_NAMES & _broker_names(), 'clean left broker accounts'
    r = subprocess.run([os.path.join(stack.venv, 'bin', 'python'), '-c',
                        'import accel_daemon'], capture_output=True, cwd='/')
    assert r.returncode != 0, 'clean left accel-daemon in devstack\'s venv'
    # Nothing else went: cinder's directory and file, the services'
    # configs, the temporary root's other entries.
    assert _owner_mode(stack.conversion) == cinder_dir
    assert os.listdir(stack.conversion) == ['volume-1.tmp']
    for path in (stack.cinder_conf, stack.nova_conf, stack.nova_cpu_conf):
        assert os.path.exists(path)
    ours = ('daemon.conf', 'logs', 'status')  # the test's and harness's
    assert {p for p in _tree(stack.tmp)
            if p.split('/')[0] not in ours} == before
    # What remains of /etc in the overlay is the user database (the users
    # are kept, see doc/source/devstack.rst) and the emptied sudoers.d.
    left = set()
    for upper in stack.ns.uppers.values():
        for dirpath, _dirs, files in os.walk(upper):
            for name in files:
                path = os.path.join(dirpath, name)
                if os.path.islink(path) or not stat.S_ISREG(
                        os.lstat(path).st_mode):
                    continue
                left.add(os.path.relpath(path, upper))
    allowed_left = {'passwd', 'group', 'shadow', 'gshadow', 'passwd-',
                    'group-', 'shadow-', 'gshadow-', 'subuid', 'subgid',
                    'subuid-', 'subgid-', '.pwd.lock'}
    assert left <= allowed_left, sorted(left - allowed_left)


def _harness(script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ['bash', '-c', 'source "$1"; ' + script, 'harness',
         os.path.join(ROOT, 'tests', 'devstack', 'functions.sh')],
        env={'PATH': os.environ['PATH'], **env}, capture_output=True,
        text=True)


def test_harness_iniset_behaves_like_devstacks(tmp_path):
    conf = tmp_path / 'a.conf'
    conf.write_text('# top\n[DEFAULT]\ndebug = False\n\n[other]\nx = 1\n')
    r = _harness('iniset "$F" DEFAULT debug True && '
                 'iniset "$F" DEFAULT new v && '
                 'iniset "$F" fresh key "a b" && '
                 'iniset "$F" "" key ignored', F=str(conf))
    assert r.returncode == 0, r.stderr
    # replaced in place, added right under the section line, new section
    # at the end, an empty section name ignored
    assert conf.read_text() == ('# top\n[DEFAULT]\nnew = v\ndebug = True\n'
                                '\n[other]\nx = 1\n\n[fresh]\nkey = a b\n')
    missing = tmp_path / 'new.conf'
    assert _harness('iniset "$F" s k v', F=str(missing)).returncode == 0
    assert missing.read_text() == '\n[s]\nk = v\n'


@pytest.mark.parametrize('services,asked,enabled', [
    ('c-vol,n-cpu', 'c-vol', True),
    ('c-vol,n-cpu', 'n-cpu', True),
    ('c-vol,n-cpu', 'n-api', False),
    ('c-vol,n-cpu', 'nova', True),
    ('c-api', 'cinder', True),
    ('c-api', 'c-vol', False),
    ('n-cpu', 'c-vol n-cpu', True),
    ('', 'accel-daemon', False),
])
def test_harness_is_service_enabled(services, asked, enabled):
    r = _harness('is_service_enabled %s' % asked, ENABLED_SERVICES=services)
    assert (r.returncode == 0) is enabled


def test_harness_run_and_stop_process(tmp_path):
    if os.geteuid() != 0:
        pytest.skip('needs root to run a process as another user')
    env = {'SERVICE_DIR': str(tmp_path / 'status'),
           'LOGDIR': str(tmp_path / 'logs'), 'STACK_USER': 'root',
           'ENABLED_SERVICES': 'demo'}
    r = _harness('run_process demo "/bin/sleep 60" "" nobody', **env)
    assert r.returncode == 0, r.stderr
    pid = int((tmp_path / 'status' / 'demo.pid').read_text())
    deadline = time.monotonic() + 10
    while True:  # until the subshell has exec'd sleep
        with open('/proc/%d/cmdline' % pid) as f:
            if f.read().split('\0')[0] == '/bin/sleep':
                break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with open('/proc/%d/status' % pid) as f:
        uid = next(line for line in f if line.startswith('Uid:')).split()[1]
    assert int(uid) == int(subprocess.run(
        ['id', '-u', 'nobody'], capture_output=True, text=True).stdout)
    assert os.getsid(pid) == pid, 'in its own session'
    # not started when the service is not enabled
    r = _harness('run_process other "/bin/sleep 60"', **env)
    assert not (tmp_path / 'status' / 'other.pid').exists()
    r = _harness('stop_process demo', **env)
    assert r.returncode == 0, r.stderr
    assert not _alive(pid)
    assert not (tmp_path / 'status' / 'demo.pid').exists()
    r = _harness('run_process demo "sleep 60"', **env)
    assert r.returncode != 0, 'a relative command is refused'
