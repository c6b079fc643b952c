# SPDX-License-Identifier: Apache-2.0
"""stream_in with the real engine and tools: a writer on the task's socket
(accel_daemon.streamproto) streams an image; the engine judges its start
before writing anything and publishes only on the complete trailer.

Each failure mode ends with a typed error, nothing published, nothing
left (no output, no temp name, no socket)."""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib

import pytest

from accel_daemon.engine.engine import Engine
from accel_daemon.engine import paths
from accel_daemon import exception
from accel_daemon import operations
from accel_daemon import streamproto as proto
from tests import envfixture
from tests.functional import imagegen as gen
from tests.functional import test_rpc_daemon as rpcd

MiB = 1024 * 1024
pytestmark = [*gen.REQUIRES_QEMU,
              pytest.mark.skipif(os.geteuid() != 0,
                                 reason='the stream directory is root\'s')]


def stream_env(tmp_path):
    """An engine environment whose streams root may use (a generator: the
    ``env`` fixture of the stream tests)."""
    # A socket's path must fit in sun_path (108 bytes): not under pytest's
    # long temporary directory.
    short = tempfile.mkdtemp(prefix='accel-st-', dir='/tmp')
    yield envfixture.make_env(
        tmp_path, stream_dir=os.path.join(short, 'streams'),
        stream_group='root', stream_users=('root',),
        stream_idle_timeout=3.0)
    shutil.rmtree(short)


@pytest.fixture
def env(tmp_path):
    yield from stream_env(tmp_path)


@pytest.fixture
def engine(env):
    return Engine(env.settings, env.policy)


class Run:
    """A stream_in task of ``engine`` running in a thread."""

    def __init__(self, engine: Engine, **params) -> None:
        self.engine = engine
        self.task_id = str(uuid.uuid4())
        self.path = proto.socket_path(engine.settings.stream_dir,
                                      self.task_id)
        self.token = engine.stream_token(self.task_id)
        self.result = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(params,))
        self._thread.start()

    def _run(self, params) -> None:
        try:
            self.result = operations.run(self.engine, self.task_id,
                                         'stream_in', params)
        except BaseException as e:
            self.error = e

    def connect(self, token: str | None = None) -> socket.socket:
        deadline = time.monotonic() + 10
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
                s.sendall(proto.hello(token or self.token))
                return s
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                assert time.monotonic() < deadline, 'no socket'
                time.sleep(0.02)

    def send(self, data: bytes, complete: bool = True,
             count: int | None = None, chunk: int = 1024 * 1024) -> None:
        s = self.connect()
        try:
            for off in range(0, len(data), chunk):
                s.sendall(proto.frame(proto.DATA, data[off:off + chunk]))
            if complete:
                s.sendall(proto.frame(proto.COMPLETE, proto.COUNT.pack(
                    len(data) if count is None else count)))
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
        except OSError:
            pass        # the engine refused and closed: see its error
        finally:
            s.close()

    def wait(self, timeout: float = 60):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), 'the task did not end'
        if self.error is not None:
            raise self.error
        return self.result


def raw_image(size: int = 8 * MiB) -> bytes:
    data = bytearray(size)
    for off in range(0, size, 2 * MiB):
        block = os.urandom(256 * 1024)
        data[off:off + len(block)] = block
    return bytes(data)


def dropped(sock: socket.socket) -> bool:
    """The engine closed this connection (with or without a reset)."""
    sock.settimeout(10)
    try:
        return sock.recv(16) == b''
    except ConnectionResetError:
        return True


def left_behind(env) -> None:
    """Nothing named but what the test made; no socket left."""
    assert paths.stray_temp_files(env.images) == []
    assert os.listdir(env.settings.stream_dir) == []


# --- what goes through -------------------------------------------------------
@pytest.mark.parametrize('container', [None, 'gzip'])
def test_raw_goes_straight_to_a_sparse_file(env, engine, container):
    image = raw_image()
    dst = env.path('volume.raw')
    run = Run(engine, dst=dst, disk_format='raw', dst_format='raw',
              container=container)
    run.send(gzip.compress(image, 1) if container else image)
    result = run.wait()
    with open(dst, 'rb') as f:
        assert f.read() == image
    assert result['size'] == result['virtual_size'] == len(image)
    assert result['decompress_engine'] == ('none' if container is None
                                           else result['decompress_engine'])
    # 1 MiB of data in 8: the zeros are holes.
    assert os.stat(dst).st_blocks * 512 < 3 * MiB
    assert os.stat(env.settings.stream_dir).st_mode & 0o777 == 0o750
    left_behind(env)


def test_qcow2_is_staged_once_and_converted(env, engine, tmp_path):
    src = gen.qcow2_with_data(str(tmp_path / 'in.qcow2'), size=16 * MiB)
    with open(src, 'rb') as f:
        qcow2 = f.read()
    dst = env.path('volume.raw')
    run = Run(engine, dst=dst, disk_format='qcow2', dst_format='raw',
              container='gzip')
    run.send(gzip.compress(qcow2, 1))
    result = run.wait()
    assert gen.compare(src, 'qcow2', dst, 'raw')
    assert result['virtual_size'] == 16 * MiB
    assert os.listdir(env.images) == ['volume.raw']
    left_behind(env)


def test_a_device_written_in_place(env, tmp_path):
    backing = str(tmp_path / 'disk.img')
    with open(backing, 'wb') as f:
        f.write(b'\x5a' * 16 * MiB)
    with gen.loop_device(backing) as dev:
        engine = Engine(env.with_settings(
            allowed_block_devices=(dev,)).settings, env.policy)
        image = raw_image(8 * MiB)
        run = Run(engine, dst=dev, disk_format='raw', dst_format='raw')
        run.send(image)
        result = run.wait()
        with open(dev, 'rb') as f:
            written = f.read(16 * MiB)
    assert written[:8 * MiB] == image
    # Every byte of the image, zeros too; nothing past it.
    assert written[8 * MiB:] == b'\x5a' * 8 * MiB
    assert result['size'] == 8 * MiB


# --- what is refused ---------------------------------------------------------
def _refused(env, engine, payload: bytes, error, complete=True, count=None,
             **params):
    dst = env.path('volume.raw')
    params.setdefault('disk_format', 'raw')
    run = Run(engine, dst=dst, dst_format='raw', **params)
    run.send(payload, complete=complete, count=count)
    with pytest.raises(error) as caught:
        run.wait()
    assert type(caught.value) is error, caught.value
    assert os.listdir(env.images) == []
    left_behind(env)
    return caught.value


def test_a_truncated_stream_publishes_nothing(env, engine):
    err = _refused(env, engine, raw_image(), exception.StreamFailed,
                   complete=False)
    assert 'before its trailer' in err.message


def test_a_wrong_count_publishes_nothing(env, engine):
    image = raw_image()
    err = _refused(env, engine, image, exception.StreamFailed,
                   count=len(image) + 1)
    assert 'counted' in err.message


def _started(engine, env) -> tuple[Run, socket.socket]:
    """A raw stream_in task whose writer has sent 2 MiB."""
    run = Run(engine, dst=env.path('v.raw'), disk_format='raw',
              dst_format='raw')
    s = run.connect()
    s.sendall(proto.frame(proto.DATA, raw_image(2 * MiB)))
    return run, s


def test_an_abort_publishes_nothing(env, engine):
    run, s = _started(engine, env)
    s.sendall(proto.frame(proto.ABORT, b'glance checksum mismatch'))
    s.close()
    with pytest.raises(exception.StreamFailed) as caught:
        run.wait()
    assert 'glance checksum mismatch' in caught.value.message
    assert os.listdir(env.images) == []
    left_behind(env)


def test_an_idle_writer_times_out(env, engine):
    run, s = _started(engine, env)
    with pytest.raises(exception.StreamFailed) as caught:
        run.wait(timeout=30)
    s.close()
    assert 'sent nothing' in caught.value.message
    assert os.listdir(env.images) == []
    left_behind(env)


def test_nobody_connecting_times_out(env, engine):
    run = Run(engine, dst=env.path('v.raw'), disk_format='raw',
              dst_format='raw')
    with pytest.raises(exception.StreamFailed) as caught:
        run.wait(timeout=30)
    assert 'no writer connected' in caught.value.message
    left_behind(env)


def test_a_wrong_token_is_dropped_and_the_right_writer_still_served(
        env, engine):
    image = raw_image()
    run = Run(engine, dst=env.path('v.raw'), disk_format='raw',
              dst_format='raw')
    intruder = run.connect(token='A' * proto.TOKEN_LEN)
    intruder.sendall(proto.frame(proto.DATA, b'intruder bytes'))
    assert dropped(intruder)
    intruder.close()
    run.send(image)
    run.wait()
    with open(env.path('v.raw'), 'rb') as f:
        assert f.read() == image


def test_a_second_writer_cannot_connect(env, engine):
    run = Run(engine, dst=env.path('v.raw'), disk_format='raw',
              dst_format='raw')
    first = run.connect()
    # The name went when the first writer was admitted.
    deadline = time.monotonic() + 5
    while os.path.exists(run.path):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(OSError):
        second.connect(run.path)
    second.close()
    image = raw_image(1 * MiB)
    first.sendall(proto.frame(proto.DATA, image))
    first.sendall(proto.frame(proto.COMPLETE, proto.COUNT.pack(len(image))))
    first.shutdown(socket.SHUT_WR)
    first.recv(1)
    first.close()
    run.wait()


def test_a_user_outside_the_allowed_ones_is_refused(env, tmp_path):
    # root may enter the directory, but only "nobody" may stream: root's
    # connection is dropped by SO_PEERCRED, and the task times out.
    engine = Engine(env.with_settings(stream_users=('nobody',)).settings,
                    env.policy)
    run = Run(engine, dst=env.path('v.raw'), disk_format='raw',
              dst_format='raw')
    s = run.connect()
    s.sendall(proto.frame(proto.DATA, b'x' * 4096))
    assert dropped(s)
    s.close()
    with pytest.raises(exception.StreamFailed):
        run.wait(timeout=30)
    assert os.listdir(env.images) == []
    left_behind(env)


def test_qcow2_claimed_as_raw_is_refused_before_any_write(env, engine,
                                                          tmp_path):
    src = gen.qcow2_with_data(str(tmp_path / 'in.qcow2'), size=16 * MiB)
    with open(src, 'rb') as f:
        data = f.read()
    _refused(env, engine, data, exception.FormatMismatch)


def test_a_backing_file_is_refused(env, engine, tmp_path):
    _refused(env, engine, gen.qcow2_header(backing=b'/etc/shadow'),
             exception.UnsafeImage, disk_format='qcow2')


def test_a_gzip_bomb_stops_at_the_cap(env, engine):
    pack = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = b'\x01' * (4 * MiB)
    bomb = b''.join(pack.compress(chunk) for _ in range(16)) + pack.flush()
    _refused(env, engine, bomb, exception.SizeLimitExceeded,
             container='gzip', max_bytes=16 * MiB)


def test_zstd_where_gzip_was_said_is_refused(env, engine):
    if subprocess.run(['which', 'zstd'], capture_output=True).returncode:
        pytest.skip('no zstd')
    packed = subprocess.run(['zstd', '-c', '-q'], input=raw_image(1 * MiB),
                            capture_output=True, check=True).stdout
    _refused(env, engine, packed, exception.CorruptInput, container='gzip')


def test_a_cancel_ends_a_stream(env, engine):
    run, s = _started(engine, env)
    deadline = time.monotonic() + 5
    while not engine.cancel(run.task_id):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(exception.Cancelled):
        run.wait()
    s.close()
    assert os.listdir(env.images) == []
    left_behind(env)


# --- through a real daemon: RPC, privsep, the client's StreamWriter ----------
def stream_daemon(tmp_path_factory):
    """A real daemon (RPC, privsep) whose streams the tests may use (a
    generator: the ``daemon`` fixture of the stream tests)."""
    rpcd.require_broker()
    d = rpcd.DaemonProcess(str(tmp_path_factory.mktemp('streams')))
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope='module')
def daemon(tmp_path_factory):
    yield from stream_daemon(tmp_path_factory)


@pytest.mark.rpc
@pytest.mark.privsep
def test_client_streams_through_the_daemon(daemon, tmp_path):
    image = raw_image()
    dst = os.path.join(daemon.images, 'volume.raw')
    with daemon.client() as client:
        writer = client.stream_in(dst, 'raw', 'raw', container='gzip')
        # The token went to us, in the answer only: the task keeps none.
        assert 'stream' not in writer.task.task
        assert 'token' not in str(client.task(writer.task.id).task)
        packed = gzip.compress(image, 1)
        for off in range(0, len(packed), 300 * 1024):
            writer.write(packed[off:off + 300 * 1024])
        result = writer.close()
        assert result['size'] == len(image)
        with open(dst, 'rb') as f:
            assert f.read() == image

        # Refused before the first byte is written: typed, from write()
        # or close(), nothing published.
        src = gen.qcow2_with_data(str(tmp_path / 'in.qcow2'), size=16 * MiB)
        with open(src, 'rb') as f:
            qcow2 = f.read()
        bad = os.path.join(daemon.images, 'claimed-raw.raw')
        writer = client.stream_in(bad, 'raw', 'raw')
        with pytest.raises(exception.FormatMismatch):
            writer.write(qcow2)
            writer.close()
        assert not os.path.exists(bad)

        # An abort: nothing published, the task failed, typed.
        writer = client.stream_in(os.path.join(daemon.images, 'ab.raw'),
                                  'raw', 'raw')
        writer.write(image[:2 * MiB])
        writer.abort('checksum mismatch')
        with pytest.raises(exception.StreamFailed):
            writer.task.wait(30)
        assert sorted(os.listdir(daemon.images)) == ['volume.raw']
        assert client.tasks(limit=1)        # still serving


@pytest.mark.rpc
@pytest.mark.privsep
def test_a_writer_killed_mid_stream_publishes_nothing(daemon):
    # A separate process streams half an image, then is SIGKILLed.
    dst = os.path.join(daemon.images, 'killed.raw')
    script = '''
import os, sys, time
from oslo_config import cfg
from accel_daemon.client import AccelClient
conf = cfg.ConfigOpts()
from accel_daemon.conf import client as c
c.register_opts(conf)
conf(['--config-file', sys.argv[1]], project='accel-test-client')
client = AccelClient(conf, host=sys.argv[3])
w = client.stream_in(sys.argv[2], 'raw', 'raw')
w.write(os.urandom(4 * 1024 * 1024))
print(w.task.id, flush=True)
time.sleep(600)
'''
    proc = subprocess.Popen([sys.executable, '-c', script, daemon.config,
                             dst, daemon.host],
                            stdout=subprocess.PIPE, text=True)
    task_id = proc.stdout.readline().strip()
    proc.kill()
    proc.wait()
    with daemon.client() as client:
        with pytest.raises(exception.StreamFailed):
            client.task(task_id).wait(60)
    assert not os.path.exists(dst)
    assert paths.stray_temp_files(daemon.images) == []


@pytest.mark.rpc
@pytest.mark.privsep
def test_accel_image_stream_in_reads_standard_input(daemon):
    image = raw_image()
    dst = os.path.join(daemon.images, 'cli.raw')
    cli = os.path.join(os.path.dirname(sys.executable), 'accel-image')
    argv = [cli, '--config-file', daemon.config, '--host', daemon.host,
            '--json', 'stream-in', '--disk-format', 'raw', '--dst-format',
            'raw', '--container', 'gzip', dst]
    proc = subprocess.run(argv, input=gzip.compress(image, 1),
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with open(dst, 'rb') as f:
        assert f.read() == image
    # A refusal is one typed line, nothing written.
    bad = os.path.join(daemon.images, 'cli-bad.raw')
    argv[-1] = bad
    proc = subprocess.run(argv, input=b'not gzip at all' * 1000,
                          capture_output=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith('accel-image: CorruptInput: ')
    assert not os.path.exists(bad)
    local = subprocess.run(argv[:3] + ['--local'] + argv[5:],
                           input=b'', capture_output=True, timeout=120)
    assert local.returncode == 1 and b'needs the daemon' in local.stderr


@pytest.mark.rpc
@pytest.mark.privsep
def test_the_helper_killed_mid_stream_leaves_nothing(daemon):
    from tests.functional import procwatch
    dst = os.path.join(daemon.images, 'helper-killed.raw')
    with daemon.client() as client:
        writer = client.stream_in(dst, 'raw', 'raw')
        writer.write(raw_image(2 * MiB))
        writer._flush()
        helpers = procwatch.daemon_pids(daemon.config)
        assert helpers, 'no privsep helper'
        for pid in helpers:
            os.kill(pid, 9)
        with pytest.raises(exception.AccelError) as caught:
            for _ in range(64):
                writer.write(raw_image(1 * MiB))
            writer.close()
        assert isinstance(caught.value, (exception.HelperUnavailable,
                                         exception.StreamFailed))
        assert not os.path.exists(dst)
        # The next stream's helper removes the dead one's socket, and works.
        image = raw_image(1 * MiB)
        again = client.stream_in(os.path.join(daemon.images, 'after.raw'),
                                 'raw', 'raw')
        again.write(image)
        again.close()
    assert os.listdir(daemon.streams) == []
    assert sorted(n for n in os.listdir(daemon.images)
                  if n.startswith(('helper-killed', 'after'))) == [
        'after.raw']
