# SPDX-License-Identifier: Apache-2.0
"""accel-image end to end, as a process: over RPC against a real daemon and
RabbitMQ, and --local.  Output formats and columns, options after the
command, relative paths, ISO times, the one-line errors (configuration,
broker down, broken pipe, bad arguments) and the progress bar."""

import fcntl
import json
import os
import pty
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest
import yaml

from accel_daemon.engine import paths
from tests.functional import test_privsep
from tests.functional.test_rpc_daemon import DaemonProcess
from tests.functional.test_rpc_daemon import make_raw
from tests.functional.test_rpc_daemon import random_file
from tests.functional.test_rpc_daemon import require_broker

pytestmark = pytest.mark.functional
CLI = os.path.join(os.path.dirname(sys.executable), 'accel-image')
MiB = 1024 * 1024
ISO = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$')


@pytest.fixture(scope='module')
def daemon(tmp_path_factory):
    require_broker()
    d = DaemonProcess(str(tmp_path_factory.mktemp('clid')))
    d.start()
    yield d
    d.stop()


def cli(conf, *args, local=False, host=None, cwd=None, timeout=300):
    argv = [CLI, '--config-file', conf]
    if local:
        argv.append('--local')
    if host:
        argv += ['--host', host]
    proc = subprocess.run(argv + list(args), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


def rpc(daemon, *args, **kwargs):
    return cli(daemon.config, *args, host=daemon.host, **kwargs)


def one_line(err):
    return err.endswith('\n') and err.count('\n') == 1


def table_header(out):
    return [c.strip() for c in out.splitlines()[1].strip('|').split('|')]


# --- tasks over RPC ----------------------------------------------------------
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
    assert table_header(out) == ['Field', 'Value']
    assert re.search(r'\| state +\| succeeded +\|', out)
    assert re.search(r'\| +\| engine=isal +\|', out)
    assert open(back, 'rb').read() == open(src, 'rb').read()
    qcow2 = os.path.join(daemon.images, 'cli.qcow2')
    rc, out, err = rpc(daemon, 'convert', src, qcow2, '--src-format',
                       'raw', '--dst-format', 'qcow2', '-f', 'json')
    assert rc == 0, err
    assert json.loads(out)['result']['engine'] == 'qemu-img'
    rc, out, _ = rpc(daemon, 'info', qcow2, '--image-format', 'qcow2',
                     '-f', 'json')
    assert rc == 0 and json.loads(out)['format'] == 'qcow2'


def test_rpc_no_wait_then_tasks_commands(daemon):
    src = make_raw(os.path.join(daemon.images, 'nw.raw'), 8 * MiB)
    dst = os.path.join(daemon.images, 'nw.copy')
    rc, out, err = rpc(daemon, '--json', '--no-wait', 'copy', src, dst)
    assert rc == 0, err
    task_id = json.loads(out)['id']
    rc, out, err = rpc(daemon, 'tasks', 'wait', task_id, '--json')
    assert rc == 0, err
    assert json.loads(out)['state'] == 'succeeded'
    rc, out, _ = rpc(daemon, 'tasks', 'show', task_id, '-f', 'json')
    shown = json.loads(out)
    assert shown['result']['output'] == dst
    assert shown['source'] == src and shown['destination'] == dst
    rc, out, _ = rpc(daemon, 'tasks', 'list', '--limit', '1000', '--json')
    assert task_id in [t['ID'] for t in json.loads(out)]
    rc, out, _ = rpc(daemon, 'tasks', 'list', '--state', 'succeeded')
    assert task_id in out


def test_tasks_list_columns_times_paths_and_errors(daemon):
    src = make_raw(os.path.join(daemon.images, 'tl.raw'), MiB)
    dst = os.path.join(daemon.images, 'tl.out')
    rc, _, err = rpc(daemon, 'decompress', src, dst)     # not gzip: fails
    assert rc == 1 and err.startswith('accel-image: CorruptInput: ')
    rc, out, err = rpc(daemon, 'tasks', 'list', '--limit', '1')
    assert rc == 0, err
    assert table_header(out) == ['ID', 'Kind', 'State', 'Progress',
                                 'Created', 'Finished', 'Source',
                                 'Destination', 'Error']
    row = [c.strip() for c in out.splitlines()[3].strip('|').split('|')]
    assert row[1:3] == ['decompress', 'failed']
    assert ISO.match(row[4]) and ISO.match(row[5]), row
    assert row[6:8] == [src, dst]
    assert row[8].startswith('CorruptInput: ')
    rc, out, _ = rpc(daemon, 'tasks', 'list', '--limit', '1', '-f', 'yaml')
    task = yaml.safe_load(out)[0]
    assert task['Error']['type'] == 'CorruptInput'
    assert ISO.match(task['Created'])


def test_tasks_show_has_iso_times(daemon):
    rc, out, _ = rpc(daemon, 'tasks', 'list', '--limit', '1', '-f',
                     'value', '-c', 'ID')
    task_id = out.strip()
    rc, out, err = rpc(daemon, 'tasks', 'show', task_id)
    assert rc == 0, err
    for key in ('created_at', 'started_at', 'finished_at'):
        m = re.search(r'\| %s +\| (\S+) +\|' % key, out)
        assert m and ISO.match(m.group(1)), out
    assert not re.search(r'\d{10}\.\d+', out)
    rc, out, _ = rpc(daemon, 'tasks', 'show', task_id, '-f', 'json')
    assert ISO.match(json.loads(out)['finished_at'])


def test_output_formats_and_columns(daemon):
    rc, table, _ = rpc(daemon, 'capabilities')
    rc2, js, _ = rpc(daemon, 'capabilities', '-f', 'json')
    rc3, value, _ = rpc(daemon, 'capabilities', '-f', 'value', '-c', 'Name',
                        '-c', 'State')
    rc4, yml, _ = rpc(daemon, 'capabilities', '-f', 'yaml', '-c', 'Name')
    assert (rc, rc2, rc3, rc4) == (0, 0, 0, 0)
    names = [d['Name'] for d in json.loads(js)]
    assert 'isal' in names and 'gzip' in names
    for name in names:
        assert re.search(r'\| %s +\|' % re.escape(name), table)
    assert 'isal available' in value.splitlines()
    assert [d['Name'] for d in yaml.safe_load(yml)] == names
    assert all(list(d) == ['Name'] for d in yaml.safe_load(yml))


def test_capabilities_two_tables(daemon):
    rc, out, err = rpc(daemon, 'capabilities')
    assert rc == 0, err
    assert table_header(out) == ['Name', 'State', 'Type', 'Format',
                                 'Version', 'Default', 'Reason']
    assert re.search(r'\| isal +\| available +\| software +\| gzip +\| '
                     r'[\d.]+ +\| True +\|', out)
    assert re.search(r'\| qat +\| missing +\| hardware +\| gzip +\|', out)
    assert 'qemu-img' not in out
    rc, out, _ = rpc(daemon, 'capabilities', 'tools')
    assert table_header(out) == ['Tool', 'Version']
    assert re.search(r'\| qemu-img +\| qemu-img version ', out)


def test_global_options_after_the_command(daemon):
    rc, out, err = cli(daemon.config, 'tasks', 'list', '--limit', '2',
                       '--json', '--host', daemon.host, '--timeout', '10')
    assert rc == 0, err
    assert len(json.loads(out)) == 2
    proc = subprocess.run(
        [CLI, 'capabilities', 'tools', '-f', 'json', '--config-file',
         daemon.config, '--host', daemon.host], capture_output=True,
        text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 'qemu-img' in [t['Tool'] for t in json.loads(proc.stdout)]


def test_relative_paths_are_resolved_against_the_cwd(daemon):
    make_raw(os.path.join(daemon.images, 'rel.raw'), MiB)
    sub = os.path.join(daemon.images, 'sub')
    os.makedirs(sub, exist_ok=True)
    rc, out, err = rpc(daemon, 'compress', '../rel.raw', 'rel.gz', '-f',
                       'json', cwd=sub)
    assert rc == 0, err
    task = json.loads(out)
    assert task['source'] == os.path.join(daemon.images, 'rel.raw')
    assert task['result']['output'] == os.path.join(sub, 'rel.gz')
    # Still confined by the daemon: a relative path that leaves the
    # allowed directory is refused.
    rc, _, err = rpc(daemon, 'copy', 'rel.raw', '../../stolen.raw',
                     cwd=daemon.images)
    assert rc == 1 and one_line(err)
    assert err.startswith('accel-image: PathNotAllowed: ')


def test_rpc_refusal_is_one_line_and_nothing_written(daemon, tmp_path):
    outside = tmp_path / 'outside.raw'
    outside.write_bytes(b'x' * 4096)
    dst = os.path.join(daemon.images, 'stolen.gz')
    rc, out, err = rpc(daemon, 'compress', str(outside), dst)
    assert rc == 1
    assert one_line(err)
    assert err.startswith('accel-image: PathNotAllowed: ')
    assert not os.path.exists(dst)
    assert paths.stray_temp_files(daemon.images) == []
    rc, _, err = rpc(daemon, 'tasks', 'show', '00000000-0000-0000-0000-'
                     '000000000000')
    assert rc == 1 and 'TaskNotFound' in err and one_line(err)


def test_rpc_failed_task_exit_code(daemon):
    not_gzip = make_raw(os.path.join(daemon.images, 'plain.bin'), MiB)
    dst = os.path.join(daemon.images, 'plain.out')
    rc, out, err = rpc(daemon, 'decompress', not_gzip, dst)
    assert rc == 1 and out == ''
    assert err.startswith('accel-image: CorruptInput: ') and one_line(err)
    assert not os.path.exists(dst)


def test_unreachable_host_is_one_line(daemon):
    started = time.monotonic()
    rc, _, err = cli(daemon.config, '--timeout', '3', 'capabilities',
                     host='no-such-host')
    elapsed = time.monotonic() - started
    assert rc == 1 and one_line(err)
    assert err.startswith('accel-image: ServiceUnavailable: ')
    assert 'no-such-host' in err
    assert elapsed < 3 + 1.0, elapsed


# --- version, bad arguments --------------------------------------------------
def test_version():
    proc = subprocess.run([CLI, '--version'], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == ''
    assert re.match(r'^accel-image \d+\.\d+\S*\n$', proc.stdout)


@pytest.mark.parametrize('args, words', [
    (('convert', '/x'), 'convert: the following arguments are required'),
    (('frobnicate',), "unknown command 'frobnicate'"),
    (('tasks', 'list', '--limit', 'many'), "invalid int value: 'many'"),
])
def test_bad_arguments_are_one_line(daemon, args, words):
    rc, out, err = rpc(daemon, *args)
    assert rc == 2 and out == ''
    assert one_line(err) and err.startswith('accel-image: error: ')
    assert words in err


# --- configuration files -----------------------------------------------------
def test_missing_config_file(tmp_path):
    path = str(tmp_path / 'missing.conf')
    rc, out, err = cli(path, 'capabilities')
    assert rc == 1 and out == ''
    assert err == ('accel-image: ConfigError: cannot read config file %s: '
                   'not found\n' % path)


def test_malformed_config_file(tmp_path):
    path = tmp_path / 'bad.conf'
    path.write_text('[DEFAULT]\n[accel_daemon_client\ntimeout = 2\n')
    rc, out, err = cli(str(path), 'capabilities')
    assert rc == 1 and out == ''
    assert err.startswith('accel-image: ConfigError: cannot parse config '
                          'file %s: at %s:2, ' % (path, path))
    assert one_line(err)


def test_unreadable_config_file(tmp_path):
    """As an unprivileged user (nobody), who cannot read the file."""
    if os.geteuid() != 0 or not shutil.which('setpriv'):
        pytest.skip('needs root and setpriv to become nobody')
    if not shutil.which('setfacl'):
        pytest.skip('needs setfacl (a checkout under a 0700 directory)')
    as_nobody = ['setpriv', '--reuid=65534', '--regid=65534',
                 '--clear-groups']
    path = tmp_path / 'secret.conf'
    path.write_text('[DEFAULT]\n')
    path.chmod(0o600)
    # nobody must reach the checkout's accel-image and the file's folder,
    # wherever they are (/root, a 0700 mktemp -d): search rights only.
    with test_privsep.traversable_by('nobody', CLI), \
            test_privsep.traversable_by('nobody', str(path)):
        probe = subprocess.run(as_nobody + [CLI, '--version'],
                               capture_output=True, timeout=60)
        assert probe.returncode == 0, probe.stderr
        proc = subprocess.run(as_nobody + [CLI, '--config-file', str(path),
                                           'capabilities'],
                              capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and proc.stdout == ''
    assert proc.stderr == ('accel-image: ConfigError: cannot read config '
                           'file %s: permission denied\n' % path)


# --- the broker --------------------------------------------------------------
def _port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _conf(tmp_path, port):
    path = tmp_path / 'broker.conf'
    path.write_text('[DEFAULT]\ntransport_url = rabbit://guest:guest@'
                    '127.0.0.1:%d/\n' % port)
    return str(path)


# 4 s: more than the command's own start-up (imports, configuration) takes
# on a loaded machine, which no timeout can undercut.
@pytest.mark.parametrize('timeout', [None, '4'])
def test_broker_down_fails_within_the_timeout(tmp_path, timeout):
    args = ('--timeout', timeout) if timeout else ()
    started = time.monotonic()
    rc, out, err = cli(_conf(tmp_path, _port()), *args, 'tasks', 'list',
                       timeout=60)
    elapsed = time.monotonic() - started
    assert rc == 1 and out == '' and one_line(err), err
    assert err.startswith('accel-image: ServiceUnavailable: accel-daemon '
                          'is not reachable: cannot reach the message '
                          'broker at 127.0.0.1:')
    assert 'Connection refused' in err
    limit = float(timeout) if timeout else 20.0
    print('broker down (--timeout %s): failed in %.2f s'
          % (timeout or 'default', elapsed))
    # The command's clock starts with its process; half a second for
    # spawning it and collecting its exit under a loaded machine.
    assert elapsed < limit + 0.5, elapsed
    if not timeout:
        # Three attempts a second apart: about 2 s, well within 20.
        assert '(3 attempts in ' in err
        assert elapsed < 10, elapsed


def test_silent_broker_fails_within_the_timeout(tmp_path):
    """A broker port that accepts connections and never speaks AMQP: the
    messaging driver would retry for ever; the command ends at --timeout."""
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(16)
    conns = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(listener.accept()[0])
            except OSError:
                pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        started = time.monotonic()
        rc, out, err = cli(_conf(tmp_path, listener.getsockname()[1]),
                           '--timeout', '4', 'capabilities', timeout=60)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        t.join()
        for c in conns:
            c.close()
        listener.close()
    assert rc == 1 and out == '' and one_line(err), err
    assert err.startswith('accel-image: ServiceUnavailable: no answer from ')
    assert 'within 4 s' in err
    print('silent broker (--timeout 4): failed in %.2f s' % elapsed)
    assert 3.0 < elapsed < 4.5, elapsed


# --- broken pipe -------------------------------------------------------------
def test_broken_pipe_into_head(daemon):
    cmd = ('set -o pipefail; "%s" --config-file "%s" --host %s tasks list '
           '--limit 1000 -f json | head -1'
           % (CLI, daemon.config, daemon.host))
    proc = subprocess.run(['bash', '-c', cmd], capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout == '[\n'
    assert proc.stderr == ''
    assert proc.returncode in (0, 141)


def test_reader_gone_before_the_output(daemon):
    proc = subprocess.Popen([CLI, '--config-file', daemon.config, '--host',
                             daemon.host, 'tasks', 'list', '-f', 'json'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    proc.stdout.close()         # before the command has printed anything
    err = proc.stderr.read()
    assert proc.wait(60) == 141
    assert err == b''


# --- progress bar ------------------------------------------------------------
BAR = re.compile(r'^(compress|copy): 100%\|[^|]+\| ([\d.]+[kMG]?)/\2 '
                 r'\[\d\d:\d\d<00:00, +[\d.]+[kMG]?B/s\]\n$')


def _run_with_pty_stderr(argv, cols=100):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 24, cols,
                                                       0, 0))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:         # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out = proc.stdout.read()
    rc = proc.wait(60)
    return rc, out.decode(), b''.join(chunks).decode()


def test_progress_bar_on_a_terminal(daemon):
    # Random bytes (no holes) at 4 MiB/s: about 3 s.
    src = random_file(os.path.join(daemon.images, 'bar.raw'), 12 * MiB)
    dst = os.path.join(daemon.images, 'bar.gz')
    rc, out, err = _run_with_pty_stderr(
        [CLI, '--config-file', daemon.config, '--host', daemon.host,
         'compress', src, dst, '--bps-limit', str(4 * MiB), '-f', 'json'])
    assert rc == 0, err
    assert json.loads(out)['state'] == 'succeeded'
    frames = err.replace('\r\n', '\n').split('\r')
    frames = [f for f in frames if f]
    assert len(frames) >= 2, frames
    assert BAR.match(frames[-1]), repr(frames[-1])
    # A frame before the end shows the rate and the time left.
    running = [f for f in frames[:-1] if '100%' not in f]
    assert any(re.search(r'\[\d\d:\d\d<\d\d:\d\d, +[\d.]+[kMG]?B/s\]', f)
               for f in running), frames
    # Every frame fills the terminal's width less one column.
    assert {len(f.rstrip('\n')) for f in frames} == {99}


def test_progress_bar_forced_without_a_terminal(daemon):
    src = random_file(os.path.join(daemon.images, 'bar2.raw'), 6 * MiB)
    dst = os.path.join(daemon.images, 'bar2.copy')
    base = [CLI, '--config-file', daemon.config, '--host', daemon.host]
    # Bytes, not text: text mode would turn the bar's \r into \n.
    proc = subprocess.run(base + ['copy', src, dst, '--bps-limit',
                                  str(4 * MiB), '--progress', '-c', 'state',
                                  '-f', 'value'],
                          capture_output=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert proc.stdout == b'succeeded\n'
    frames = err.split('\r')
    assert frames[0] == '' and '\n' not in ''.join(frames[:-1])
    assert BAR.match(frames[-1]), repr(err[-200:])
    assert {len(f.rstrip('\n')) for f in frames[1:]} == {79}
    # Not forced, not a terminal: nothing on stderr.
    rc, _, err = rpc(daemon, 'copy', src, dst + '.2', '--bps-limit',
                     str(4 * MiB))
    assert rc == 0 and err == ''


def test_no_bar_for_a_short_task(daemon):
    src = make_raw(os.path.join(daemon.images, 'short.raw'), MiB)
    rc, _, err = rpc(daemon, '--progress', 'copy', src,
                     os.path.join(daemon.images, 'short.copy'))
    assert rc == 0 and err == ''


# --- --local -----------------------------------------------------------------
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
    task = json.loads(out)
    assert task['result']['engine'] == 'isal' and task['result']['size'] > 0
    rc, out, _ = cli(local_conf, 'capabilities', '-f', 'json', local=True)
    assert rc == 0
    default = [d['Name'] for d in json.loads(out) if d['Default']]
    assert default == ['isal']


def test_local_bad_format_is_one_line(env, local_conf):
    src = make_raw(env.path('f.raw'), MiB)
    rc, _, err = cli(local_conf, 'convert', src, env.path('f.out'),
                     '--src-format', 'qcow2', '--dst-format', 'raw',
                     local=True)
    assert rc == 1
    assert err.startswith('accel-image: FormatMismatch: ')
    assert one_line(err)
    assert os.listdir(env.images) == ['f.raw']


def test_local_has_no_task_list(env, local_conf):
    rc, _, err = cli(local_conf, 'tasks', 'list', local=True)
    assert rc == 1 and 'InvalidRequest' in err


def test_interrupt_is_one_line(daemon):
    src = random_file(os.path.join(daemon.images, 'int.raw'), 16 * MiB)
    proc = subprocess.Popen(
        [CLI, '--config-file', daemon.config, '--host', daemon.host, 'copy',
         src, os.path.join(daemon.images, 'int.copy'), '--bps-limit',
         str(MiB)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, stdin=subprocess.DEVNULL)
    time.sleep(2.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err == 'accel-image: interrupted\n'
    assert not os.path.exists(os.path.join(daemon.images, 'int.copy'))
