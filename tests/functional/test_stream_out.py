# SPDX-License-Identifier: Apache-2.0
"""stream_out with the real engine and tools: the engine inspects the
source, converts it if needed (one unnamed stage), compresses it as it
sends and ends with the ``complete`` trailer only once what it sent is
checked; a reader on the task's socket (accel_daemon.streamproto) reads it.

Each failure mode ends with a typed error, an ``abort`` trailer or a
closed connection for the reader, and nothing left (no stage, no temp
name, no socket)."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from accel_daemon.engine.engine import Engine
from accel_daemon.engine import paths
from accel_daemon import exception
from accel_daemon import operations
from accel_daemon import streamproto as proto
from tests.functional import imagegen as gen
from tests.functional.test_streams import raw_image
from tests.functional.test_streams import stream_daemon
from tests.functional.test_streams import stream_env

MiB = 1024 * 1024
pytestmark = [*gen.REQUIRES_QEMU,
              pytest.mark.skipif(os.geteuid() != 0,
                                 reason='the stream directory is root\'s')]


@pytest.fixture
def env(tmp_path):
    yield from stream_env(tmp_path)


@pytest.fixture
def engine(env):
    return Engine(env.settings, env.policy)


@pytest.fixture(scope='module')
def daemon(tmp_path_factory):
    yield from stream_daemon(tmp_path_factory)


class Out:
    """A stream_out task of ``engine`` running in a thread, and its
    reader."""

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
                                         'stream_out', params)
        except BaseException as e:
            self.error = e

    def connect(self, token: str | None = None,
                timeout: float = 30) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
                s.sendall(proto.hello(token or self.token))
                return s
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if not self._thread.is_alive() and self.error:
                    raise self.error
                if time.monotonic() > deadline or \
                        not self._thread.is_alive():
                    raise
                time.sleep(0.02)

    def read(self, stop_after: int | None = None
             ) -> tuple[bytes, bytes | None, bytes]:
        """(the data, the trailer's kind or None when the connection
        ended without one, the trailer's payload)."""
        s = self.connect()
        f = s.makefile('rb')
        data = bytearray()
        try:
            while True:
                header = f.read(proto.HEADER.size)
                if len(header) < proto.HEADER.size:
                    return bytes(data), None, b''
                kind, length = proto.HEADER.unpack(header)
                payload = f.read(length)
                if kind != proto.DATA:
                    return bytes(data), kind, payload
                data += payload
                if stop_after is not None and len(data) >= stop_after:
                    return bytes(data), None, b''
        finally:
            f.close()
            s.close()

    def wait(self, timeout: float = 120):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), 'the task did not end'
        if self.error is not None:
            raise self.error
        return self.result


def left_behind(env) -> None:
    """Nothing named but what the test made; no socket left (the stream
    directory is made by the first stream that gets that far)."""
    assert paths.stray_temp_files(env.images) == []
    if os.path.exists(env.settings.stream_dir):
        assert os.listdir(env.settings.stream_dir) == []


def _sparse_raw(path: str, size: int = 8 * MiB) -> bytes:
    image = raw_image(size)
    with open(path, 'wb') as f:
        f.truncate(size)
        for off in range(0, size, 2 * MiB):
            f.seek(off)
            f.write(image[off:off + 256 * 1024])
    return image


# --- what goes through -------------------------------------------------------
@pytest.mark.parametrize('compression', [None, 'gzip', 'zstd'])
def test_a_raw_volume_is_sent_as_it_is_compressed(env, engine, compression):
    src = env.path('volume.raw')
    image = _sparse_raw(src)
    run = Out(engine, src=src, src_format='raw', disk_format='raw',
              compression=compression)
    data, kind, payload = run.read()
    result = run.wait()
    assert kind == proto.COMPLETE
    assert proto.COUNT.unpack(payload)[0] == len(data)
    if compression == 'gzip':
        got = gzip.decompress(data)
    elif compression == 'zstd':
        got = subprocess.run(['zstd', '-dc'], input=data, check=True,
                             capture_output=True).stdout
    else:
        got = data
    assert got == image                 # holes sent as zeros
    assert result['converted'] is False
    assert result['bytes_out'] == result['size'] == len(data)
    assert result['virtual_size'] == len(image)
    if compression:
        # 1 MiB of random data in 8: the rest packs away.
        assert len(data) < 2 * MiB
    assert os.listdir(env.images) == ['volume.raw']
    left_behind(env)


def test_gzip_output_reads_with_gzip_d(env, engine):
    src = env.path('volume.raw')
    image = _sparse_raw(src)
    run = Out(engine, src=src, src_format='raw', disk_format='raw',
              compression='gzip')
    data, _, _ = run.read()
    run.wait()
    out = subprocess.run(['gzip', '-dc'], input=data, check=True,
                         capture_output=True).stdout
    assert out == image


@pytest.mark.parametrize('src_format', ['raw', 'qcow2'])
def test_a_qcow2_image_is_staged_once_and_deflated_once(env, engine,
                                                        tmp_path,
                                                        src_format):
    if src_format == 'qcow2':
        src = gen.qcow2_with_data(env.path('volume.qcow2'), size=16 * MiB)
    else:
        src = env.path('volume.raw')
        _sparse_raw(src, 16 * MiB)
    run = Out(engine, src=src, src_format=src_format, disk_format='qcow2',
              compression='gzip')
    data, kind, _ = run.read()
    result = run.wait()
    assert kind == proto.COMPLETE
    got = str(tmp_path / 'got.qcow2')
    with open(got, 'wb') as f:
        f.write(gzip.decompress(data))
    assert gen.compare(src, src_format, got, 'qcow2')
    assert result['converted'] is True
    # Not deflated twice: the qcow2 inside has no compressed cluster
    # (qemu-img map gives no host offset for one).
    extents = json.loads(subprocess.run(
        ['qemu-img', 'map', '--output=json', got], capture_output=True,
        text=True, check=True).stdout)
    data_extents = [e for e in extents if e['data']]
    assert data_extents and all('offset' in e for e in data_extents)
    assert os.listdir(env.images) == [os.path.basename(src)]
    left_behind(env)


# --- what is refused ---------------------------------------------------------
def test_a_qcow2_claimed_as_raw_is_refused_before_any_byte(env, engine):
    src = gen.qcow2_with_data(env.path('claimed.raw'), size=16 * MiB)
    run = Out(engine, src=src, src_format='raw', disk_format='raw',
              compression='gzip')
    with pytest.raises(exception.AccelError) as caught:
        run.wait()
    assert isinstance(caught.value, (exception.FormatMismatch,
                                     exception.ImageInspectionError))
    assert not os.path.exists(run.path)
    left_behind(env)


def test_a_backing_file_is_refused(env, engine, tmp_path):
    base = gen.qemu_create(env.path('base.qcow2'), 'qcow2', '16M')
    src = gen.qcow2_with_backing(env.path('top.qcow2'), base)
    run = Out(engine, src=src, src_format='qcow2', disk_format='qcow2',
              compression='gzip')
    with pytest.raises(exception.UnsafeImage):
        run.wait()
    assert not os.path.exists(run.path)
    left_behind(env)


def test_a_reader_gone_mid_stream_fails_the_task(env, engine):
    src = env.path('volume.raw')
    with open(src, 'wb') as f:
        f.write(os.urandom(64 * MiB))
    run = Out(engine, src=src, src_format='raw', disk_format='raw')
    data, kind, _ = run.read(stop_after=4 * MiB)
    assert kind is None and len(data) >= 4 * MiB
    with pytest.raises(exception.StreamFailed) as caught:
        run.wait()
    assert 'reader went away' in str(caught.value)
    assert os.listdir(env.images) == ['volume.raw']
    left_behind(env)


def test_an_idle_reader_times_out(env, engine):
    src = env.path('volume.raw')
    with open(src, 'wb') as f:
        f.write(os.urandom(32 * MiB))
    run = Out(engine, src=src, src_format='raw', disk_format='raw')
    sock = run.connect()
    try:
        with pytest.raises(exception.StreamFailed) as caught:
            run.wait(60)
    finally:
        sock.close()
    assert 'took nothing' in str(caught.value)
    left_behind(env)


def test_a_wrong_token_is_dropped_and_the_reader_still_served(env, engine):
    src = env.path('volume.raw')
    image = _sparse_raw(src)
    run = Out(engine, src=src, src_format='raw', disk_format='raw',
              compression='gzip')
    intruder = run.connect(token=proto.token(b'k' * 32, run.task_id))
    intruder.settimeout(10)
    assert intruder.recv(16) == b''      # dropped, nothing sent to it
    intruder.close()
    data, kind, _ = run.read()
    run.wait()
    assert kind == proto.COMPLETE and gzip.decompress(data) == image


def test_a_cancel_ends_a_stream_with_an_abort(env, engine):
    src = env.path('volume.raw')
    with open(src, 'wb') as f:
        f.write(os.urandom(32 * MiB))
    run = Out(engine, src=src, src_format='raw', disk_format='raw')
    sock = run.connect()
    f = sock.makefile('rb')
    kind, length = proto.HEADER.unpack(f.read(proto.HEADER.size))
    assert kind == proto.DATA
    f.read(length)
    engine.cancel(run.task_id)
    with pytest.raises(exception.Cancelled):
        run.wait()
    # What is still buffered, then the abort trailer.
    seen = None
    while True:
        header = f.read(proto.HEADER.size)
        if len(header) < proto.HEADER.size:
            break
        kind, length = proto.HEADER.unpack(header)
        f.read(length)
        if kind != proto.DATA:
            seen = kind
            break
    f.close()
    sock.close()
    assert seen in (proto.ABORT, None)
    assert seen != proto.COMPLETE
    left_behind(env)


# --- through a real daemon: RPC, privsep, the client's StreamReader ----------
@pytest.mark.rpc
@pytest.mark.privsep
def test_client_reads_a_stream_through_the_daemon(daemon, tmp_path):
    src = os.path.join(daemon.images, 'out-volume.raw')
    image = _sparse_raw(src)
    try:
        with daemon.client() as client:
            # What a caller checks before it streams.
            caps = client.capabilities()
            assert caps['api_version'] == operations.API_VERSION
            assert caps['streams'] == daemon.streams
            assert os.path.isdir(daemon.streams)
            reader = client.stream_out(src, 'raw', 'raw',
                                       compression='gzip')
            assert 'stream' not in reader.task.task
            assert 'token' not in str(client.task(reader.task.id).task)
            reader.open()
            chunks = []
            while chunk := reader.read(64 * 1024):
                assert len(chunk) <= 64 * 1024
                chunks.append(chunk)
            result = reader.close()
            assert gzip.decompress(b''.join(chunks)) == image
            assert result['bytes_out'] == reader.received

            # Refused before the first byte: the reader gets the typed
            # error.
            bad = gen.qcow2_with_data(os.path.join(daemon.images,
                                                   'out-claimed.raw'),
                                      size=16 * MiB)
            reader = client.stream_out(bad, 'raw', 'raw')
            with pytest.raises(exception.AccelError) as caught:
                reader.open()
                reader.read()
            assert isinstance(caught.value, (exception.FormatMismatch,
                                             exception.ImageInspectionError))
            os.unlink(bad)

            # A reader that stops early: the task fails, typed; the daemon
            # serves on.
            big = os.path.join(daemon.images, 'out-big.raw')
            with open(big, 'wb') as f:
                f.write(os.urandom(32 * MiB))
            reader = client.stream_out(big, 'raw', 'raw')
            assert len(reader.open().read(1024)) > 0
            assert reader.close() is None
            with pytest.raises(exception.StreamFailed):
                reader.task.wait(60)
            os.unlink(big)
            assert client.tasks(limit=1)
    finally:
        os.unlink(src)
    assert os.listdir(daemon.streams) == []


@pytest.mark.rpc
@pytest.mark.privsep
def test_accel_image_stream_out_writes_standard_output(
        daemon, tmp_path):
    src = os.path.join(daemon.images, 'cli-out.raw')
    image = _sparse_raw(src)
    cli = os.path.join(os.path.dirname(sys.executable), 'accel-image')
    base = [cli, '--config-file', daemon.config, '--host', daemon.host,
            '--json', 'stream-out']
    try:
        formats = ['--src-format', 'raw', '--disk-format', 'raw']
        proc = subprocess.run(base + formats + ['--compression', 'gzip',
                                                src, '-'],
                              capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert gzip.decompress(proc.stdout) == image
        assert b'"state": "succeeded"' in proc.stderr
        out = str(tmp_path / 'copy.raw')
        proc = subprocess.run(base + formats + [src, out],
                              capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        with open(out, 'rb') as f:
            assert f.read() == image
        # A refusal: one typed line, no output file left.
        refused = str(tmp_path / 'refused.qcow2')
        proc = subprocess.run(base + ['--src-format', 'qcow2',
                                      '--disk-format', 'qcow2', src,
                                      refused],
                              capture_output=True, timeout=120)
        assert proc.returncode == 1
        assert proc.stderr.decode().startswith('accel-image: ')
        assert not os.path.exists(refused)
    finally:
        os.unlink(src)
