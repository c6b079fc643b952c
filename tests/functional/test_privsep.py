# SPDX-License-Identifier: Apache-2.0
"""The privileged layer through a REAL privsep daemon, started the way
accel-daemon starts it as root (``privileged.start.init``: helper_command
with the venv's absolute accel-privsep-helper, the test's --config-file),
with the real tools.  The allowed directory belongs to another user (uid
4242, mode 0750) and inputs are mode 0600, as cinder's are: the daemon must
get there with its few capabilities only.
"""

import contextlib
import gzip
import hashlib
import os
import pwd
import shutil
import subprocess
import threading
import time

from oslo_config import cfg
import pytest

from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine import paths
from accel_daemon import exception
from accel_daemon.manager import backends
from accel_daemon import privileged
from accel_daemon.privileged import caps
from accel_daemon.privileged import ops
from accel_daemon.privileged import start as privileged_start
from tests import envfixture
from tests.functional import procwatch

pytestmark = [
    pytest.mark.functional, pytest.mark.privsep,
    pytest.mark.skipif(os.geteuid() != 0,
                       reason='starts the privsep helper as root directly'),
    pytest.mark.timeout(120),
]

OWNER = 4242
TOOL_USER = 'accel-tools'    # the default [accel_daemon] tool_user
MiB = 1024 * 1024
need_qemu = pytest.mark.skipif(shutil.which('qemu-img') is None,
                               reason='qemu-img is not installed')


_mask = procwatch.mask
_status = procwatch.status
_status_path = procwatch.status_path
_execed = procwatch.execed
daemon_pids = procwatch.daemon_pids
children = procwatch.children


@pytest.fixture(scope='module')
def daemon(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('privsep'))
    env = envfixture.make_env(root)
    os.chown(env.images, OWNER, OWNER)
    os.chmod(env.images, 0o750)
    conf_path = os.path.join(env.root, 'accel-daemon.conf')
    with open(conf_path, 'w') as f:
        f.write('[accel_daemon]\nallowed_dirs = %s\nfilters_path = %s\n'
                '[tasks]\nworkers = 4\n' % (env.images, env.filters_dir))
    cfg.CONF(['--config-file', conf_path], project='accel-daemon')
    privileged_start.init(cfg.CONF)
    try:
        yield env, conf_path, backends.PrivsepBackend()
    finally:
        privileged_start.stop()
        cfg.CONF.clear_override('helper_command', group=privileged.SECTION)
        cfg.CONF.clear()


@pytest.fixture
def env(daemon):
    env = daemon[0]
    yield env
    for name in os.listdir(env.images):
        os.unlink(env.path(name))


@pytest.fixture
def backend(daemon):
    return daemon[2]


def owned_input(env, name, data=None, size=None):
    path = env.path(name)
    with open(path, 'wb') as f:
        if data is not None:
            f.write(data)
        else:
            for _ in range(size // MiB):
                f.write(os.urandom(MiB))
    os.chown(path, OWNER, OWNER)
    os.chmod(path, 0o600)
    return path


def assert_nothing_written(env, *outputs):
    for out in outputs:
        assert not os.path.lexists(out)
    assert paths.stray_temp_files(env.images) == []


# -- the daemon itself -----------------------------------------------------
def test_helper_started_by_absolute_path_without_sudo(daemon):
    cmd = cfg.CONF[privileged.SECTION].helper_command.split()
    assert os.path.isabs(cmd[0]) and cmd[0].endswith('/accel-privsep-helper')
    assert 'sudo' not in cmd[0]
    assert ['--config-file', daemon[1]] == cmd[1:3]
    assert cfg.CONF[privileged.SECTION].thread_pool_size == 4 + 4


def test_daemon_holds_only_the_configured_capabilities(daemon, backend):
    backend.reload_filters()     # make sure a worker thread is hardened
    pids = daemon_pids(daemon[1])
    assert len(pids) == 1
    status = _status(pids[0])    # the main (dispatch) thread
    assert int(status['CapEff'], 16) == _mask(privileged.CAPABILITIES)
    assert int(status['CapPrm'], 16) == _mask(privileged.CAPABILITIES)
    assert status['Uid'].split()[0] == '0'


def test_worker_threads_hardened(daemon, backend):
    backend.reload_filters()
    (pid,) = daemon_pids(daemon[1])
    hardened = []
    for tid in os.listdir('/proc/%d/task' % pid):
        st = _status_path('/proc/%d/task/%s/status' % (pid, tid))
        if st['NoNewPrivs'] == '1':
            hardened.append(st)
    assert hardened, 'no privsep worker thread was hardened'
    child = _mask(privileged.CHILD_CAPABILITIES)
    keep, _ = caps.plan(privileged.CAPABILITIES,
                        privileged.CHILD_CAPABILITIES)
    for st in hardened:
        # CAP_SETPCAP is gone; SETUID/SETGID stay to switch children to
        # the tool user.
        assert int(st['CapEff'], 16) == _mask(keep)
        assert int(st['CapAmb'], 16) == child
        assert int(st['CapBnd'], 16) == child


HARDEN_SCRIPT = """
import subprocess, sys
from oslo_privsep import capabilities as c
from accel_daemon import privileged
from accel_daemon.privileged import caps
keep = list(privileged.CAPABILITIES)
c.drop_all_caps_except(keep, keep, [])      # what privsep's daemon does
assert caps.harden_thread(keep, privileged.CHILD_CAPABILITIES)
print(subprocess.run(['cat', '/proc/self/status'], capture_output=True,
                     text=True).stdout)
print('READ', subprocess.run(['cat', sys.argv[1]], capture_output=True,
                             text=True).stdout)
print('CHOWN', subprocess.run(['chown', '0', sys.argv[1]]).returncode)
"""


def test_root_children_of_hardened_thread_keep_only_child_caps(tmp_path):
    # The kernel mechanism on its own, without the Engine or a tool user
    # ([accel_daemon] tool_user empty): uid 0 children would get the full
    # bounding set back; hardened ones get none (so they can neither read
    # a 0600 file of another user nor chown it).
    secret = tmp_path / 'secret'
    secret.write_text('s3cret')
    os.chown(secret, OWNER, OWNER)
    os.chmod(secret, 0o600)
    out = subprocess.run(
        [os.path.join(envfixture.ROOT, '.venv', 'bin', 'python'), '-c',
         HARDEN_SCRIPT, str(secret)], capture_output=True, text=True,
        cwd=envfixture.ROOT, check=True).stdout
    st = dict(line.split(':', 1) for line in out.splitlines()
              if line.startswith(('Cap', 'NoNewPrivs')))
    child = _mask(privileged.CHILD_CAPABILITIES)
    assert int(st['CapEff'], 16) == child
    assert int(st['CapPrm'], 16) == child
    assert int(st['CapBnd'], 16) == child
    assert st['NoNewPrivs'].strip() == '1'
    assert 'READ s3cret' not in out
    assert 'CHOWN 0' not in out
    assert os.stat(secret).st_uid == OWNER


def test_reload_filters_through_privsep(daemon, backend):
    expected = len(CommandPolicy((daemon[0].filters_dir,)))
    assert backend.reload_filters() == expected
    assert type(backend.reload_filters()) is int


def test_daemon_restarts_after_being_killed(daemon, backend):
    (pid,) = daemon_pids(daemon[1])
    os.kill(pid, 9)
    deadline = time.monotonic() + 10
    while privileged.context.channel.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.reload_filters() >= 0          # privsep started a new one
    (new_pid,) = daemon_pids(daemon[1])
    assert new_pid != pid


# -- errors typed across the channel ----------------------------------------
def test_path_errors_typed_with_fields(env, backend):
    src = owned_input(env, 'src.img', b'data')
    outside = os.path.join(env.root, 'out.gz')
    with pytest.raises(exception.PathNotAllowed) as e:
        backend.run('e1', 'compress', {'src': src, 'dst': outside})
    assert type(e.value) is exception.PathNotAllowed
    assert e.value.fields['path'] == outside
    os.symlink('/etc/shadow', env.path('shadow.img'))
    with pytest.raises(exception.SymlinkEscape):
        backend.info(env.path('shadow.img'), 'raw')
    with pytest.raises(exception.OutputExists):
        backend.run('e2', 'copy', {'src': src, 'dst': src})
    assert_nothing_written(env, outside)


def test_unknown_kind_and_bad_types_typed(env, backend):
    with pytest.raises(exception.InvalidRequest) as e:
        backend.run('e3', 'format-disk', {})
    assert 'format-disk' in e.value.message
    with pytest.raises(exception.InvalidRequest):
        backend.run('e4', 'copy', 'not a dict')
    assert backend.progress('no-such-task') is None
    assert backend.cancel('no-such-task') is False


def test_raw_entrypoint_raises_failure_over_the_channel(env):
    with pytest.raises(ops.Failure) as e:
        ops.info('/etc/passwd', 'raw')
    assert type(e.value.to_error()) is exception.PathNotAllowed


# -- real work (needs the integrated Engine) --------------------------------
def test_capabilities_plain(backend):
    caps = backend.capabilities()
    assert isinstance(caps['drivers'], list) and caps['drivers']
    assert isinstance(caps['tools'], dict)
    assert isinstance(caps['hardware'], bool)


@need_qemu
def test_info_qcow2(env, backend):
    src = env.path('disk.qcow2')
    subprocess.run(['qemu-img', 'create', '-f', 'qcow2', src, '16M'],
                   check=True, capture_output=True)
    os.chown(src, OWNER, OWNER)
    os.chmod(src, 0o600)
    info = backend.info(src, 'qcow2')
    assert info['format'] == 'qcow2'
    assert info['virtual-size'] == 16 * MiB


def test_compress_owned_by_another_user(env, backend):
    data = b''.join(b'block %d\n' % i for i in range(300000))
    src = owned_input(env, 'vol.raw', data)
    dst = env.path('vol.raw.gz')
    result = backend.run('c1', 'compress', {'src': src, 'dst': dst})
    with open(dst, 'rb') as f:
        out = f.read()
    assert gzip.decompress(out) == data
    assert result['output'] == dst and result['size'] == len(out)
    assert result['sha256'] == hashlib.sha256(out).hexdigest()
    st = os.stat(dst)
    assert (st.st_uid, st.st_gid) == (OWNER, OWNER)   # CAP_CHOWN at work
    assert st.st_mode & 0o7777 == 0o640
    assert paths.stray_temp_files(env.images) == []


@need_qemu
def test_convert_qcow2_to_raw(env, backend):
    src = env.path('disk.qcow2')
    subprocess.run(['qemu-img', 'create', '-f', 'qcow2', src, '16M'],
                   check=True, capture_output=True)
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x5a 1M 2M',
                    src], check=True, capture_output=True)
    os.chown(src, OWNER, OWNER)
    os.chmod(src, 0o600)
    dst = env.path('disk.raw')
    result = backend.run('v1', 'convert', {
        'src': src, 'dst': dst, 'src_format': 'qcow2', 'dst_format': 'raw'})
    assert result['output'] == dst
    subprocess.run(['qemu-img', 'compare', '-f', 'qcow2', '-F', 'raw',
                    src, dst], check=True, capture_output=True)
    assert os.stat(dst).st_uid == OWNER


def test_discard_partial(env, backend):
    dst = env.path('lost.raw')
    stray = env.path('%slost.raw.0badc0de%s' % (paths.TEMP_PREFIX,
                                                paths.TEMP_SUFFIX))
    owned_input(env, os.path.basename(stray), b'partial')
    removed = backend.discard_partial(dst)
    assert isinstance(removed, list) and len(removed) == 1
    assert not os.path.exists(stray)


# -- concurrency, cancel, what children inherit -----------------------------
def assert_bare(seen, what):
    """Every tool recorded in ``seen`` ran as the tool user with no
    capability at all (effective, permitted, inheritable, ambient, and
    none it could ever regain: an empty bounding set)."""
    assert seen, '%s was not seen running' % what
    tools = pwd.getpwnam(TOOL_USER)
    for st in seen.values():
        assert st['Uid'].split() == [str(tools.pw_uid)] * 4
        assert st['Gid'].split() == [str(tools.pw_gid)] * 4
        assert st['NoNewPrivs'] == '1'
        for field in ('CapEff', 'CapPrm', 'CapInh', 'CapAmb', 'CapBnd'):
            assert int(st[field], 16) == 0, (what, field, st[field])


@need_qemu
@pytest.mark.parametrize('op', ['convert', 'info'])
def test_qemu_img_is_bare(daemon, env, backend, op):
    """qemu-img reads another user's 0600 input, and writes an output,
    with no capability and not as root: the input is served to it over
    NBD from the helper's descriptor, the output lent to the tool user."""
    src = env.path('big.raw')
    with open(src, 'wb') as f:
        for i in range(256):
            f.write(bytes([i % 251 + 1]) * MiB)
    os.chown(src, OWNER, OWNER)
    os.chmod(src, 0o600)
    (pid,) = daemon_pids(daemon[1])
    with procwatch.watching(pid, op.encode()) as seen:
        if op == 'info':
            result = backend.info(src, 'raw')
        else:
            result = backend.run('q-convert', 'convert', {
                'src': src, 'dst': env.path('big.qcow2'),
                'src_format': 'raw', 'dst_format': 'qcow2'})
    assert_bare(seen, 'qemu-img ' + op)
    if op == 'info':
        assert result['virtual-size'] == 256 * MiB
        return
    # Published with the directory's owner, whatever the tool's uid.
    st = os.stat(result['output'])
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (OWNER, OWNER,
                                                          0o640)
    assert subprocess.run(['qemu-img', 'compare', '-f', 'raw', '-F',
                           'qcow2', src, result['output']],
                          capture_output=True).returncode == 0


def test_gzip_is_inflated_by_a_bare_child(daemon, env, backend):
    """The caller's deflate stream is parsed by isal_child, run as the
    tool user with no capability, not in the root helper; it reads its
    code through directories the helper handed down."""
    data = b''.join(bytes([i % 251 + 1]) * MiB for i in range(64))
    src = env.path('in.raw.gz')
    with open(src, 'wb') as f:
        f.write(gzip.compress(data, 1))
    os.chown(src, OWNER, OWNER)
    os.chmod(src, 0o600)
    (pid,) = daemon_pids(daemon[1])

    def isal_child(argv):
        return any(a.endswith(b'/accel_daemon/drivers/isal_child.py')
                   for a in argv)

    with procwatch.watching(pid, isal_child) as seen:
        result = backend.run('inflate', 'decompress', {
            'src': src, 'dst': env.path('out.raw')})
    assert_bare(seen, 'isal_child')
    assert result['engine'] == 'isal'
    with open(result['output'], 'rb') as f:
        assert hashlib.sha256(f.read()).digest() == \
            hashlib.sha256(data).digest()


def _slow_compress(backend, task_id, src, dst, errors):
    try:
        backend.run(task_id, 'compress', {'src': src, 'dst': dst,
                                          'driver': 'gzip', 'level': 9})
    except exception.AccelError as e:
        errors[task_id] = e


def _wait_all_running(backend, ids, errors, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not errors:
        if all(backend.progress(t) is not None for t in ids):
            return True
        time.sleep(0.05)
    assert not errors, errors
    return False


def test_cancel_from_another_thread(env, backend):
    src = owned_input(env, 'big.raw', size=64 * MiB)
    dst = env.path('big.raw.gz')
    errors = {}
    t = threading.Thread(target=_slow_compress,
                         args=(backend, 'k1', src, dst, errors))
    t.start()
    assert _wait_all_running(backend, ['k1'], errors)
    assert backend.cancel('k1') is True
    t.join(30)
    assert type(errors.get('k1')) is exception.Cancelled
    assert backend.progress('k1') is None
    assert_nothing_written(env, dst)


def test_four_tasks_run_concurrently_children_narrowed(daemon, env, backend):
    src = owned_input(env, 'big.raw', size=64 * MiB)
    ids = ['p%d' % i for i in range(4)]
    dsts = [env.path('%s.gz' % t) for t in ids]
    errors = {}
    threads = [threading.Thread(target=_slow_compress,
                                args=(backend, t, src, d, errors))
               for t, d in zip(ids, dsts)]
    for t in threads:
        t.start()
    try:
        # progress() answering for all four at once means four pool threads
        # are busy with tasks and a fifth serves the control call.
        assert _wait_all_running(backend, ids, errors)
        (pid,) = daemon_pids(daemon[1])
        # A task is registered before its tool is forked and exec'd: on a
        # loaded machine the exec may come a little later.
        deadline = time.monotonic() + 20
        kids = []
        while not kids and time.monotonic() < deadline:
            kids = [k for k in children(pid) if _execed(k)]
            time.sleep(0.05)
        assert kids, 'the tasks run no child process'
        tools = pwd.getpwnam(TOOL_USER)
        for kid in kids:
            # The compressor runs as the tool user with no capability at
            # all: it only reads its stdin and writes its stdout, both
            # descriptors the privileged parent opened.
            st = _status(kid)
            assert st['Uid'].split() == [str(tools.pw_uid)] * 4
            assert st['Gid'].split() == [str(tools.pw_gid)] * 4
            assert st['NoNewPrivs'] == '1'
            for field in ('CapEff', 'CapPrm', 'CapInh', 'CapAmb'):
                assert int(st[field], 16) == 0, field
            assert int(st['CapBnd'], 16) == _mask(
                privileged.CHILD_CAPABILITIES)
    finally:
        for t in ids:
            backend.cancel(t)
        for t in threads:
            t.join(30)
    assert all(type(errors.get(t)) is exception.Cancelled for t in ids)
    assert_nothing_written(env, *dsts)


# -- the production split: a non-root service user starts it through sudo ---
SUDO_SCRIPT = """
import json, os, sys
from oslo_config import cfg
from accel_daemon import exception, privileged
from accel_daemon.manager import backends
from accel_daemon.privileged import start as privileged_start
cfg.CONF(['--config-file', sys.argv[1]], project='accel-daemon')
privileged_start.init(cfg.CONF)
backend = backends.PrivsepBackend()
out = {'helper': cfg.CONF.privsep_accel.helper_command,
       'filters': backend.reload_filters(), 'me': os.geteuid()}
try:
    backend.info('/etc/shadow', 'raw')
except exception.PathNotAllowed as e:
    out['error'] = type(e).__name__
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        cmd = open('/proc/%s/cmdline' % pid, 'rb').read()
        if b'privsep-helper' in cmd and sys.argv[1].encode() in cmd:
            status = open('/proc/%s/status' % pid).read()
            out['daemon_uid'] = status.split('Uid:')[1].split()[0]
    except OSError:
        pass
print(json.dumps(out))
"""

need_sudo = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ('sudo', 'visudo', 'useradd',
                                          'runuser', 'setfacl')),
    reason='needs sudo, visudo, useradd, runuser and setfacl')


@pytest.fixture
def service_user():
    name = 'accel-ft-%s' % os.urandom(3).hex()
    subprocess.run(['useradd', '--system', '--no-create-home', '--shell',
                    '/usr/sbin/nologin', name], check=True)
    try:
        yield name
    finally:
        subprocess.run(['userdel', name], check=False)


@contextlib.contextmanager
def traversable_by(user, path):
    """Let ``user`` reach ``path`` through ancestors others cannot search
    (a checkout under /root, or under a 0700 ``mktemp -d``): an ACL entry
    granting search (x) only, on just those directories, removed after."""
    granted = []
    directory = os.path.dirname(os.path.abspath(path))
    while True:
        if not os.stat(directory).st_mode & 0o001:
            subprocess.run(['setfacl', '-m', 'u:%s:x' % user, directory],
                           check=True)
            granted.append(directory)
        if directory == '/':
            break
        directory = os.path.dirname(directory)
    try:
        yield
    finally:
        for directory in granted:
            subprocess.run(['setfacl', '-x', 'u:%s' % user, directory],
                           check=False)


# What the service user may try through the plain sudoers command rule:
# each must be refused by the helper itself before it reads a thing.
EVIL = (
    ['--config-file', '/tmp/evil.conf'],              # its own filters
    ['--log-file', '/etc/accel-evil'],                 # a file as root
    ['--privsep_context', 'os_brick.privileged.default'],
    ['--version'],
)


def _run_as_service_user(user, venv, conf_path):
    """The script as the service user, and extended helper command lines
    through sudo (which the helper must refuse)."""
    run = subprocess.run(
        ['runuser', '-u', user, '--', os.path.join(venv, 'bin', 'python'),
         '-c', SUDO_SCRIPT, conf_path], capture_output=True, text=True,
        cwd='/', timeout=60)
    evil = [subprocess.run(
        ['runuser', '-u', user, '--', 'sudo', '-n',
         os.path.join(venv, 'bin', 'accel-privsep-helper'), '--config-file',
         conf_path] + extra + [
             '--privsep_context', 'accel_daemon.privileged.context',
             '--privsep_sock_path', '/tmp/tmpabcdefgh/privsep.sock'],
        capture_output=True, text=True, cwd='/', timeout=30)
        for extra in EVIL]
    return run, evil


@contextlib.contextmanager
def helper_policy(venv, conf_path):
    """The installed configuration the helper accepts (what
    tools/install.sh writes into the venv), for the test's config."""
    from accel_daemon.privileged import helper_args
    path = helper_args.policy_path(venv)
    made = not os.path.isdir(os.path.dirname(path))
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with open(path, 'w') as f:
        f.write('config-file %s\n' % conf_path)
    os.chmod(path, 0o644)
    try:
        yield
    finally:
        os.unlink(path)
        if made:
            os.rmdir(os.path.dirname(path))
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(os.path.dirname(path)))


def _install_sudoers(user, venv, conf_path):
    with open(os.path.join(envfixture.ROOT, 'etc', 'accel-daemon',
                           'sudoers.d', 'accel-daemon')) as f:
        text = f.read()
    text = (text.replace('/opt/accel-daemon/venv', venv)
            .replace('\naccel-daemon ', '\n%s ' % user)
            .replace('Defaults:accel-daemon', 'Defaults:%s' % user))
    path = '/etc/sudoers.d/zz-%s' % user
    with open(path + '.new', 'w') as f:
        f.write(text)
    os.chmod(path + '.new', 0o440)
    subprocess.run(['visudo', '-cf', path + '.new'], check=True,
                   capture_output=True)
    os.rename(path + '.new', path)
    return path


@need_sudo
@pytest.mark.slow
def test_service_user_starts_privsep_through_sudo(service_user):
    import json
    import tempfile
    venv = os.path.dirname(os.path.dirname(
        os.path.join(envfixture.ROOT, '.venv', 'bin', 'python')))
    root = tempfile.mkdtemp(prefix='accel-sudo-', dir='/tmp')
    os.chmod(root, 0o755)
    env = envfixture.make_env(root)
    conf_path = os.path.join(root, 'accel-daemon.conf')
    with open(conf_path, 'w') as f:
        f.write('[accel_daemon]\nallowed_dirs = %s\nfilters_path = %s\n'
                % (env.images, env.filters_dir))
    os.chmod(conf_path, 0o644)
    sudoers = _install_sudoers(service_user, venv, conf_path)
    try:
        with traversable_by(service_user, venv), \
                helper_policy(venv, conf_path):
            run, evil = _run_as_service_user(service_user, venv, conf_path)
    finally:
        os.unlink(sudoers)
        shutil.rmtree(root)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out['me'] != 0 and out['daemon_uid'] == '0'
    assert out['helper'].split()[:3] == [
        shutil.which('sudo'), '-n', os.path.join(venv, 'bin',
                                                 'accel-privsep-helper')]
    assert out['filters'] == len(env.policy)
    assert out['error'] == 'PathNotAllowed'
    for extra, attempt in zip(EVIL, evil):
        # sudo ran it (a plain command rule); the helper refused it.
        assert attempt.returncode == 2, (extra, attempt.stderr)
        assert 'accel-privsep-helper: refused' in attempt.stderr, extra
    assert not os.path.exists('/etc/accel-evil')
