# SPDX-License-Identifier: Apache-2.0
"""accel-image (the cliff application) in-process: output formats and
columns, global options anywhere on the line, ISO times, relative paths and
one-line errors.  The daemon is either an in-process one on oslo.messaging's
fake:// transport (real endpoint, task manager and fake backend) or a
stand-in engine behind ``--local``'s backend."""

import contextlib
import csv
import io
import json
import os
import re
import socket
import time
import uuid

from oslo_config import cfg
from oslo_messaging import conffixture
import pytest
import yaml

from accel_daemon.cmd.cli import app as cli_app
from accel_daemon.cmd.cli import base
from accel_daemon import conf as accel_conf
from accel_daemon.engine.settings import Settings
from accel_daemon import exception
from accel_daemon.manager.journal import Journal
from accel_daemon.manager.tasks import TaskManager
from accel_daemon.options import Options
from accel_daemon.rpc import endpoint as rpc_endpoint
from accel_daemon.rpc import rpcapi
from accel_daemon.rpc import server as rpc_server
from tests.fakes.backend import FakeBackend

HOST = 'cli-%s' % uuid.uuid4().hex[:8]
ISO = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$')
CAPS = {
    'drivers': [
        {'name': 'isal', 'available': True, 'hardware': False,
         'format': 'gzip', 'version': '1.9.1', 'reason': ''},
        {'name': 'qat', 'available': False, 'hardware': True,
         'format': 'gzip', 'version': None, 'reason': 'no QAT device'}],
    'default_driver': 'isal', 'hardware': False,
    'tools': {'qemu-img': 'qemu-img version 7.2', 'pigz': 'pigz 2.6'},
    'formats': {'input': ['raw', 'qcow2'], 'output': ['raw']},
    'allowed_dirs': ['/srv/images'],
}


class StubEngine:
    """What ``--local`` drives: capabilities, image_info, and a compress
    that reports progress."""

    def __init__(self, fail=None, seconds=0.0):
        self.fail = fail
        self.seconds = seconds
        self.calls = []
        self.cancelled = []

    def capabilities(self):
        return CAPS

    def image_info(self, path, format):
        return {'filename': path, 'format': format,
                'virtual-size': 4096, 'format-specific': {'a': 1}}

    def progress(self, task_id):
        return {'done': 512, 'total': 1024}

    def cancel(self, task_id):
        self.cancelled.append(task_id)
        return True

    @contextlib.contextmanager
    def task(self, task_id):
        yield None

    def decompress(self, progress, src, dst, **kwargs):
        self.calls.append(('decompress', src, dst, kwargs))
        return {'output': dst, 'size': 1024, 'engine': 'isal',
                'hardware': False}

    def compress(self, progress, src, dst, **kwargs):
        self.calls.append(('compress', src, dst, kwargs))
        time.sleep(self.seconds)
        if self.fail:
            raise self.fail
        return {'output': dst, 'size': 1024, 'engine': 'isal',
                'hardware': False}


def run(argv, **kwargs):
    out, err = io.StringIO(), io.StringIO()
    rc = cli_app.main(list(argv), stdout=out, stderr=err, **kwargs)
    return rc, out.getvalue(), err.getvalue()


def local(argv, engine=None, conf=None):
    """accel-image with --local's backend on a stand-in engine."""
    return run(argv, backend=base.Local(engine or StubEngine()),
               conf=conf or _conf())


def _conf():
    conf = cfg.ConfigOpts()
    accel_conf.register_opts(conf)
    conf([], default_config_files=[])
    return conf


# --- an in-process daemon on fake:// ----------------------------------------
class Daemon:
    def __init__(self, root):
        self.images = os.path.join(root, 'images')
        os.makedirs(self.images)
        self.backend = FakeBackend(step=0.002)
        self.manager = TaskManager(
            self.backend, Journal(os.path.join(root, 'tasks.sqlite')),
            workers=2)
        self.fixture = conffixture.ConfFixture(_conf(),
                                               transport_url='fake:/')
        self.fixture.setUp()
        self.conf = self.fixture.conf
        self.conf.set_override('control_exchange', 'test-%s' % HOST)
        self.transport = None


@pytest.fixture(scope='module')
def daemon(tmp_path_factory):
    d = Daemon(str(tmp_path_factory.mktemp('clidaemon')))
    d.manager.start()
    d.transport = rpcapi.get_transport(d.conf)
    assert type(d.transport._driver).__name__ == 'FakeDriver'
    endpoint = rpc_endpoint.AccelEndpoint(
        d.manager, d.backend, Settings(allowed_dirs=(d.images,)),
        max_wait=0.2)
    server = rpc_server.build(d.transport, 'accel_daemon', HOST, [endpoint])
    server.start()
    yield d
    server.stop()
    d.manager.stop(1.0)
    server.wait()
    d.transport.cleanup()
    d.fixture.cleanUp()


@pytest.fixture
def fake_backend(daemon):
    yield daemon.backend
    daemon.backend.duration = 0.0
    daemon.backend.fail = None


def remote(daemon, *argv):
    return run(('--host', HOST) + argv, conf=daemon.conf,
               transport=daemon.transport)


def _src(daemon):
    path = os.path.join(daemon.images, 'src-%s.raw' % uuid.uuid4().hex[:6])
    with open(path, 'wb') as f:
        f.write(b'data')
    return path


# --- --version, help, bad arguments ----------------------------------------
def test_version_is_one_line_on_stdout(capsys):
    with pytest.raises(SystemExit) as e:
        cli_app.AccelImage().parser.parse_args(['--version'])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert re.match(r'^accel-image \S+\n$', out), out
    assert out.split()[1] == cli_app.version()


def test_version_through_main_returns_zero(capsys):
    rc, _, err = run(['--version'])
    assert rc == 0 and err == ''
    assert capsys.readouterr().out.startswith('accel-image ')


@pytest.mark.parametrize('argv, words', [
    (['frobnicate'], "unknown command 'frobnicate'"),
    (['compress', 'only-src'], 'compress: the following arguments are '
                               'required: dst'),
    (['tasks', 'list', '--state', 'bogus'], "invalid choice: 'bogus'"),
    (['compress', 'a', 'b', '--level', 'high'], "invalid int value"),
    (['-f', 'xml', 'capabilities'], "invalid choice: 'xml'"),
    (['--timeout'], 'expected one argument'),
    ([], 'a command is required'),
    # The image format of info is --image-format: -f is the output's.
    (['info', 'x.img', '--format', 'qcow2'], "invalid choice: 'qcow2'"),
])
def test_bad_arguments_are_one_line_exit_2(argv, words):
    rc, out, err = local(argv)
    assert rc == 2
    assert out == ''
    assert err.count('\n') == 1 and err.endswith('\n'), err
    assert err.startswith('accel-image: error: ')
    assert words in err


def test_shell_format_refused_for_a_list():
    rc, _, err = local(['capabilities', '-f', 'shell'])
    assert rc == 1
    assert err.startswith('accel-image: InvalidRequest: ')
    assert "output format 'shell'" in err and err.count('\n') == 1


def test_help_of_a_command_after_it():
    rc, out, err = local(['tasks', 'list', '--help'])
    assert rc == 0, err
    assert 'usage: accel-image tasks list' in out
    assert '--state' in out


# --- capabilities --------------------------------------------------------
def test_capabilities_table_has_headers_and_one_row_per_driver():
    rc, out, err = local(['capabilities'])
    assert rc == 0, err
    lines = out.splitlines()
    header = [c.strip() for c in lines[1].strip('|').split('|')]
    assert header == ['Name', 'State', 'Type', 'Format', 'Version',
                      'Default', 'Reason']
    rows = [[c.strip() for c in ln.strip('|').split('|')]
            for ln in lines[3:-1]]
    assert rows == [
        ['isal', 'available', 'software', 'gzip', '1.9.1', 'True', ''],
        ['qat', 'missing', 'hardware', 'gzip', '', 'False',
         'no QAT device']]
    # Tool versions are a table of their own.
    assert 'qemu-img' not in out


def test_capabilities_tools_table():
    rc, out, _ = local(['capabilities', 'tools', '-f', 'json'])
    assert rc == 0
    assert json.loads(out) == [
        {'Tool': 'pigz', 'Version': 'pigz 2.6'},
        {'Tool': 'qemu-img', 'Version': 'qemu-img version 7.2'}]


def test_capabilities_show():
    rc, out, _ = local(['capabilities', 'show', '-f', 'yaml'])
    assert rc == 0
    assert yaml.safe_load(out) == {
        'default_driver': 'isal', 'hardware': False,
        'input_formats': ['raw', 'qcow2'], 'output_formats': ['raw'],
        'allowed_dirs': ['/srv/images']}


@pytest.mark.parametrize('argv', [
    ['capabilities', '-f', 'json'],
    ['-f', 'json', 'capabilities'],
    ['capabilities', '--json'],
    ['--json', 'capabilities'],
])
def test_json_before_or_after_the_command(argv):
    rc, out, err = local(argv)
    assert rc == 0, err
    assert [d['Name'] for d in json.loads(out)] == ['isal', 'qat']


def test_value_yaml_csv_and_columns():
    rc, out, _ = local(['capabilities', '-f', 'value', '-c', 'Name',
                        '-c', 'State'])
    assert rc == 0
    assert out == 'isal available\nqat missing\n'
    rc, out, _ = local(['-c', 'name', 'capabilities', '-f', 'yaml'])
    assert yaml.safe_load(out) == [{'Name': 'isal'}, {'Name': 'qat'}]
    rc, out, _ = local(['capabilities', '-f', 'csv', '-c', 'Type'])
    assert list(csv.reader(io.StringIO(out))) == [
        ['Type'], ['software'], ['hardware']]


def test_unknown_column_is_one_line():
    rc, _, err = local(['capabilities', '-c', 'Colour'])
    assert rc == 1
    assert err.count('\n') == 1 and 'Colour' in err


# --- info, --local tasks ------------------------------------------------
def test_info_resolves_a_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = local(['info', 'disk.img', '--image-format', 'raw',
                          '-f', 'json'])
    assert rc == 0, err
    info = json.loads(out)
    assert info['filename'] == str(tmp_path / 'disk.img')
    assert info['format-specific'] == {'a': 1}


def test_local_compress_shows_the_task(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    engine = StubEngine()
    rc, out, err = local(['compress', 'in.raw', '../out.gz', '--level', '3',
                          '--compression', 'zstd', '-f', 'json'], engine)
    assert rc == 0, err
    task = json.loads(out)
    assert engine.calls == [('compress', str(tmp_path / 'in.raw'),
                             str(tmp_path.parent / 'out.gz'),
                             {'options': Options(level=3, format='zstd',
                                                 checksum=True,
                                                 replace=False)})]
    assert task['state'] == 'succeeded'
    assert task['result']['engine'] == 'isal'
    assert task['source'] == str(tmp_path / 'in.raw')
    for key in ('created_at', 'started_at', 'finished_at'):
        assert ISO.match(task[key]), task[key]
    assert task['progress'] == {'done': 1024, 'total': 1024}


def test_local_failure_is_the_typed_error():
    engine = StubEngine(fail=exception.CorruptInput(path='/x', reason='bad'))
    rc, out, err = local(['compress', '/x', '/y'], engine)
    assert rc == 1 and out == ''
    assert err == 'accel-image: CorruptInput: Input /x is corrupt: bad\n'


def test_local_has_no_tasks():
    rc, _, err = local(['tasks', 'list'])
    assert rc == 1
    assert err.startswith('accel-image: InvalidRequest: ')


# --- against the daemon on fake:// ---------------------------------------
def test_tasks_list_columns_and_iso_times(daemon, fake_backend):
    src = _src(daemon)
    dst = os.path.join(daemon.images, 'ok.gz')
    rc, out, err = remote(daemon, 'compress', src, dst, '-f', 'json')
    assert rc == 0, err
    done = json.loads(out)
    fake_backend.fail = 'CorruptInput'
    rc, _, err = remote(daemon, 'decompress', src, dst + '.raw')
    assert rc == 1
    assert err.startswith('accel-image: CorruptInput: ')
    assert err.count('\n') == 1
    rc, out, err = remote(daemon, 'tasks', 'list', '--json')
    assert rc == 0, err
    tasks = json.loads(out)
    assert list(tasks[0]) == ['ID', 'Kind', 'State', 'Progress', 'Created',
                              'Finished', 'Source', 'Destination', 'Error']
    failed, ok = tasks[0], next(t for t in tasks if t['ID'] == done['id'])
    assert failed['State'] == 'failed'
    assert failed['Error']['type'] == 'CorruptInput'
    assert ok['Source'] == src and ok['Destination'] == dst
    assert ISO.match(ok['Created']) and ISO.match(ok['Finished'])
    assert ok['Error'] is None
    # The table: headers, and the failed task's error as "Type: message".
    rc, out, _ = remote(daemon, 'tasks', 'list', '--limit', '1')
    assert 'CorruptInput: ' in out
    assert re.search(r'\| ID +\| Kind +\| State +\| Progress +\| Created',
                     out)


def test_tasks_show_has_iso_times_not_epoch(daemon, fake_backend):
    rc, out, _ = remote(daemon, '--no-wait', 'copy', _src(daemon),
                        os.path.join(daemon.images, 'c-%s' % HOST), '-c',
                        'id')
    assert rc == 0
    task_id = out.split('|')[-2].strip() if '|' in out else out.strip()
    rc, out, err = remote(daemon, 'tasks', 'wait', task_id, '-f', 'json')
    assert rc == 0, err
    rc, out, err = remote(daemon, 'tasks', 'show', task_id, '-f', 'yaml')
    assert rc == 0, err
    task = yaml.safe_load(out)
    for key in ('created_at', 'started_at', 'finished_at'):
        assert ISO.match(task[key]), task[key]
    rc, out, _ = remote(daemon, 'tasks', 'show', task_id)
    assert not re.search(r'\d{10}\.\d', out)      # no epoch floats
    assert re.search(r'\| created_at +\| \d{4}-\d\d-\d\dT', out)


def test_relative_paths_reach_the_daemon_absolute(daemon, fake_backend,
                                                  monkeypatch):
    monkeypatch.chdir(daemon.images)
    src = os.path.basename(_src(daemon))
    rc, out, err = remote(daemon, 'copy', src, 'rel.copy', '-f', 'json')
    assert rc == 0, err
    params = json.loads(out)['params']
    assert params['src'] == os.path.join(daemon.images, src)
    assert params['dst'] == os.path.join(daemon.images, 'rel.copy')


def test_options_after_the_command(daemon, fake_backend):
    rc, out, err = run(['tasks', 'list', '--limit', '1', '--host', HOST,
                        '--json', '--timeout', '5'], conf=daemon.conf,
                       transport=daemon.transport)
    assert rc == 0, err
    assert len(json.loads(out)) == 1


def test_unknown_task_is_one_line(daemon):
    rc, out, err = remote(daemon, 'tasks', 'show',
                          '00000000-0000-0000-0000-000000000000')
    assert rc == 1 and out == ''
    assert err.startswith('accel-image: TaskNotFound: ')


def test_wait_timeout_leaves_the_task_running(daemon, fake_backend):
    fake_backend.duration = 3.0
    rc, _, err = remote(daemon, '--wait-timeout', '0.3', 'copy',
                        _src(daemon), os.path.join(daemon.images, 'slow'))
    assert rc == 1
    assert err.startswith('accel-image: TaskWaitTimeout: ')
    assert 'goes on in the daemon' in err
    assert fake_backend.cancelled == []


def test_broken_pipe_is_quiet(daemon):
    class Closed(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, 'Broken pipe')

    err = io.StringIO()
    rc = cli_app.main(['--host', HOST, 'tasks', 'list', '-f', 'json'],
                      conf=daemon.conf, transport=daemon.transport,
                      stdout=Closed(), stderr=err)
    assert rc == cli_app.EXIT_BROKEN_PIPE
    assert err.getvalue() == ''


# --- configuration files ----------------------------------------------
def test_missing_config_file_is_one_line(tmp_path):
    rc, out, err = run(['--config-file', str(tmp_path / 'nope.conf'),
                        'capabilities'])
    assert rc == 1 and out == ''
    assert err == ('accel-image: ConfigError: cannot read config file %s: '
                   'not found\n' % (tmp_path / 'nope.conf'))


def test_malformed_config_file_is_one_line(tmp_path):
    path = tmp_path / 'bad.conf'
    path.write_text('[DEFAULT]\nthis is not an option line\n')
    rc, _, err = run(['--config-file', str(path), 'capabilities'])
    assert rc == 1
    assert err.startswith('accel-image: ConfigError: cannot parse config '
                          'file %s: ' % path)
    assert err.count('\n') == 1


def test_unreadable_config_file_is_one_line(tmp_path, monkeypatch):
    path = str(tmp_path / 'secret.conf')

    def denied(self, *args, **kwargs):
        raise cfg.ConfigFilesPermissionDeniedError([path])
    monkeypatch.setattr(cfg.ConfigOpts, '__call__', denied)
    rc, _, err = run(['--config-file', path, 'capabilities'])
    assert rc == 1
    assert err == ('accel-image: ConfigError: cannot read config file %s: '
                   'permission denied\n' % path)


def test_invalid_value_in_config_is_one_line(tmp_path):
    path = tmp_path / 'value.conf'
    path.write_text('[accel_daemon]\nmax_image_gib = lots\n')
    rc, _, err = run(['--config-file', str(path), '--local',
                      'capabilities'])
    assert rc == 1
    assert err.startswith('accel-image: ConfigError: ')
    assert 'max_image_gib' in err and err.count('\n') == 1


# --- the broker --------------------------------------------------------
def _closed_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_broker_down_fails_within_the_timeout(tmp_path):
    path = tmp_path / 'down.conf'
    path.write_text('[DEFAULT]\ntransport_url = rabbit://guest:guest@'
                    '127.0.0.1:%d/\n' % _closed_port())
    started = time.monotonic()
    rc, out, err = run(['--config-file', str(path), '--timeout', '3',
                        'capabilities'])
    elapsed = time.monotonic() - started
    assert rc == 1 and out == ''
    assert err.startswith('accel-image: ServiceUnavailable: ')
    assert 'cannot reach the message broker at 127.0.0.1:' in err
    assert err.count('\n') == 1
    assert elapsed < 3.0, elapsed


class NoisyEngine(StubEngine):
    """Logs a warning, as the engine or a library may, then fails."""

    def compress(self, progress, src, dst, **kwargs):
        import logging
        logging.getLogger('oslo_messaging.test').warning('retrying...')
        raise exception.NoSpace(path=dst)


def test_library_log_lines_stay_quiet_unless_verbose():
    rc, _, err = local(['compress', '/a', '/b'], NoisyEngine())
    assert rc == 1
    assert err == ('accel-image: NoSpace: No space left on the device '
                   'holding /b\n')
    rc, _, err = local(['-v', 'compress', '/a', '/b'], NoisyEngine())
    assert 'retrying...' in err
    assert err.splitlines()[-1].startswith('accel-image: NoSpace: ')


def test_debug_shows_the_traceback():
    rc, _, err = local(['compress', '/a', '/b', '--debug'], NoisyEngine())
    assert rc == 1
    assert 'Traceback (most recent call last)' in err
    assert err.splitlines()[-1].startswith('accel-image: NoSpace: ')


@pytest.mark.parametrize('container', ['gzip', 'zstd'])
def test_container_is_a_name(tmp_path, monkeypatch, container):
    monkeypatch.chdir(tmp_path)
    engine = StubEngine()
    rc, out, err = local(['decompress', 'in.gz', 'out.raw', '--container',
                          container, '-f', 'json'], engine)
    assert rc == 0, err
    assert engine.calls[0][3]['options'].container == container
    rc, out, err = local(['decompress', 'in.gz', 'out.raw', '--container',
                          'bzip2'], engine)
    assert rc == 2 and 'invalid choice' in err


def test_stream_in_needs_the_daemon(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = local(['stream-in', '--disk-format', 'raw',
                          '--dst-format', 'raw', 'out.raw'])
    assert rc == 1 and 'needs the daemon' in err
