"""accel-image end to end: over RPC against a real daemon, and --local."""

import json
import os
import subprocess
import sys

import pytest

from accel_daemon.engine import paths
from tests.functional.test_rpc_daemon import DaemonProcess
from tests.functional.test_rpc_daemon import make_raw
from tests.functional.test_rpc_daemon import require_broker

pytestmark = pytest.mark.functional
CLI = os.path.join(os.path.dirname(sys.executable), 'accel-image')
MiB = 1024 * 1024


@pytest.fixture(scope='module')
def daemon(tmp_path_factory):
    require_broker()
    d = DaemonProcess(str(tmp_path_factory.mktemp('clid')))
    d.start()
    yield d
    d.stop()


def cli(conf, *args, local=False, host=None):
    argv = [CLI, '--config-file', conf]
    if local:
        argv.append('--local')
    if host:
        argv += ['--host', host]
    proc = subprocess.run(argv + list(args), capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def rpc(daemon, *args):
    return cli(daemon.config, *args, host=daemon.host)


def test_rpc_compress_decompress_convert(daemon):
    src = make_raw(os.path.join(daemon.images, 'cli.raw'), 16 * MiB)
    gz = os.path.join(daemon.images, 'cli.raw.gz')
    rc, out, err = rpc(daemon, '--json', 'compress', src, gz)
    assert rc == 0, err
    task = json.loads(out)
    assert task['state'] == 'succeeded'
    assert task['result']['output'] == gz
    assert task['result']['engine'] == 'isal'
    assert task['result']['hardware'] is False
    assert len(task['result']['sha256']) == 64
    back = os.path.join(daemon.images, 'cli.back.raw')
    rc, out, err = rpc(daemon, 'decompress', gz, back)
    assert rc == 0, err
    assert out.startswith('decompress: done in ')
    assert open(back, 'rb').read() == open(src, 'rb').read()
    qcow2 = os.path.join(daemon.images, 'cli.qcow2')
    rc, out, err = rpc(daemon, '--json', 'convert', src, qcow2,
                       '--src-format', 'raw', '--dst-format', 'qcow2')
    assert rc == 0, err
    assert json.loads(out)['result']['engine'] == 'qemu-img'
    rc, out, _ = rpc(daemon, '--json', 'info', qcow2, '--format', 'qcow2')
    assert rc == 0 and json.loads(out)['format'] == 'qcow2'


def test_rpc_no_wait_then_tasks_commands(daemon):
    src = make_raw(os.path.join(daemon.images, 'nw.raw'), 8 * MiB)
    dst = os.path.join(daemon.images, 'nw.copy')
    rc, out, err = rpc(daemon, '--json', '--no-wait', 'copy', src, dst)
    assert rc == 0, err
    task_id = json.loads(out)['id']
    rc, out, err = rpc(daemon, '--json', 'tasks', 'wait', task_id)
    assert rc == 0, err
    assert json.loads(out)['state'] == 'succeeded'
    rc, out, _ = rpc(daemon, '--json', 'tasks', 'show', task_id)
    assert json.loads(out)['result']['output'] == dst
    rc, out, _ = rpc(daemon, '--json', 'tasks', 'list', '--limit', '1000')
    assert task_id in [t['id'] for t in json.loads(out)]
    rc, out, _ = rpc(daemon, 'tasks', 'list', '--state', 'succeeded')
    assert task_id in out


def test_rpc_refusal_is_one_line_and_nothing_written(daemon, tmp_path):
    outside = tmp_path / 'outside.raw'
    outside.write_bytes(b'x' * 4096)
    dst = os.path.join(daemon.images, 'stolen.gz')
    rc, out, err = rpc(daemon, 'compress', str(outside), dst)
    assert rc == 1
    assert err.strip().count('\n') == 0
    assert err.startswith('accel-image: PathNotAllowed: ')
    assert not os.path.exists(dst)
    assert paths.stray_temp_files(daemon.images) == []
    rc, _, err = rpc(daemon, 'tasks', 'show', '00000000-0000-0000-0000-'
                     '000000000000')
    assert rc == 1 and 'TaskNotFound' in err


def test_rpc_failed_task_exit_code(daemon):
    not_gzip = make_raw(os.path.join(daemon.images, 'plain.bin'), MiB)
    dst = os.path.join(daemon.images, 'plain.out')
    rc, _, err = rpc(daemon, 'decompress', not_gzip, dst)
    assert rc == 1
    assert err.startswith('accel-image: CorruptInput: ')
    assert not os.path.exists(dst)


def test_unreachable_host_is_one_line(daemon):
    conf = daemon.config + '.short'
    with open(daemon.config) as f, open(conf, 'w') as g:
        g.write(f.read().replace('timeout = 30', 'timeout = 2'))
    rc, _, err = cli(conf, 'capabilities', host='no-such-host')
    assert rc == 1
    assert err.startswith('accel-image: ServiceUnavailable: ')


# --- --local --------------------------------------------------------------
@pytest.fixture
def local_conf(env):
    path = os.path.join(env.root, 'local.conf')
    with open(path, 'w') as f:
        f.write('[accel_daemon]\nallowed_dirs = %s\nfilters_path = %s\n'
                % (env.images, env.filters_dir))
    return path


def test_local_compress_and_capabilities(env, local_conf):
    src = make_raw(env.path('l.raw'), 8 * MiB)
    rc, out, err = cli(local_conf, '--json', 'compress', src,
                       env.path('l.gz'), local=True)
    assert rc == 0, err
    result = json.loads(out)
    assert result['engine'] == 'isal' and result['size'] > 0
    rc, out, _ = cli(local_conf, 'capabilities', local=True)
    assert rc == 0
    assert 'default driver: isal' in out


def test_local_bad_format_is_one_line(env, local_conf):
    src = make_raw(env.path('f.raw'), MiB)
    rc, _, err = cli(local_conf, 'convert', src, env.path('f.out'),
                     '--src-format', 'qcow2', '--dst-format', 'raw',
                     local=True)
    assert rc == 1
    assert err.startswith('accel-image: FormatMismatch: ')
    assert err.strip().count('\n') == 0
    assert os.listdir(env.images) == ['f.raw']


def test_local_has_no_task_list(env, local_conf):
    rc, _, err = cli(local_conf, 'tasks', 'list', local=True)
    assert rc == 1 and 'InvalidRequest' in err


def test_usage_error_exit_code(local_conf):
    rc, _, err = cli(local_conf, 'convert', '/x', local=True)
    assert rc == 2 and 'usage:' in err
