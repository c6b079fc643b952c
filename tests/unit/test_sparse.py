# SPDX-License-Identifier: Apache-2.0
"""The capped sparse writer, fed from in-memory streams."""

import hashlib
import io
import os

import pytest

from accel_daemon.engine.progress import Progress
from accel_daemon.engine import sparse
from accel_daemon import exception

MiB = 1024 * 1024


class Trickle(io.RawIOBase):
    """A stream returning at most ``step`` bytes per read (like a pipe)."""

    def __init__(self, data, step=7000):
        self._data = memoryview(data)
        self._step = step

    def readinto(self, buf):
        n = min(len(buf), self._step, len(self._data))
        buf[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


def _image():
    data = bytearray(8 * MiB)
    data[100:200] = b'a' * 100                  # small data in block 0
    data[3 * MiB:3 * MiB + 70000] = os.urandom(70000)
    data[-1] = 1                               # data in the last byte
    return bytes(data)


def _copy(tmp_path, stream, **kw):
    path = tmp_path / 'out'
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        n = sparse.copy_capped(stream, fd, sparse.Flow(**kw))
    finally:
        os.close(fd)
    return path, n


@pytest.mark.parametrize('stream_of', [io.BytesIO, Trickle])
def test_copy_is_exact_and_sparse(tmp_path, stream_of):
    data = _image()
    path, n = _copy(tmp_path, stream_of(data), limit=len(data))
    assert n == len(data)
    assert path.read_bytes() == data
    st = os.stat(path)
    assert st.st_size == len(data)
    # About 200 KiB of data in 8 MiB: most of it must be holes.
    assert st.st_blocks * 512 < MiB


def test_trailing_zeros_become_a_hole_with_the_right_length(tmp_path):
    data = b'x' * 10 + bytes(5 * MiB)
    path, n = _copy(tmp_path, io.BytesIO(data), limit=10 * MiB)
    assert os.stat(path).st_size == len(data) == n
    assert path.read_bytes() == data


def test_unaligned_tail_segment(tmp_path):
    data = bytes(MiB + 1000) + b'tail' + bytes(3)
    path, _ = _copy(tmp_path, io.BytesIO(data), limit=10 * MiB)
    assert path.read_bytes() == data


def test_empty_stream(tmp_path):
    path, n = _copy(tmp_path, io.BytesIO(b''), limit=1)
    assert n == 0 and os.stat(path).st_size == 0


def test_cap_exceeded_stops_early(tmp_path):
    progress = Progress()
    with pytest.raises(exception.SizeLimitExceeded) as e:
        _copy(tmp_path, io.BytesIO(b'z' * (4 * MiB)), limit=2 * MiB + 1,
              progress=progress, name='/x/bomb.gz')
    assert e.value.fields == {'path': '/x/bomb.gz', 'limit': 2 * MiB + 1}
    # Nothing past the limit was written.
    assert os.stat(tmp_path / 'out').st_size <= 2 * MiB + 1
    assert progress.done <= 2 * MiB + 1


def test_exactly_at_cap_is_allowed(tmp_path):
    _, n = _copy(tmp_path, io.BytesIO(b'z' * MiB), limit=MiB)
    assert n == MiB


def test_cancel_raises(tmp_path):
    progress = Progress()
    progress.cancel()
    with pytest.raises(exception.Cancelled):
        _copy(tmp_path, io.BytesIO(b'z' * MiB), limit=MiB, progress=progress)


def test_progress_and_hash(tmp_path):
    data = _image()
    progress = Progress()
    h = hashlib.sha256()
    _copy(tmp_path, io.BytesIO(data), limit=len(data), progress=progress,
          hasher=h)
    assert progress.done == len(data)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()


def test_non_sparse_writes_every_byte(tmp_path):
    path = tmp_path / 'dev'
    path.write_bytes(b'\xff' * (2 * MiB))      # stale data, like a device
    fd = os.open(path, os.O_WRONLY)
    try:
        sparse.copy_capped(io.BytesIO(bytes(2 * MiB)), fd,
                           sparse.Flow(2 * MiB, sparse=False))
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(2 * MiB)


def test_reading_goes_on_while_a_write_is_slow(tmp_path, monkeypatch):
    # A write that takes long (a slow disk) must not stop the next blocks
    # from being read: the reader fills the other buffers meanwhile.
    import threading
    gate = threading.Event()
    in_first_write = threading.Event()
    reads_while_blocked = []
    real = sparse._WriteBehind._write

    def slow_write(self, buf, n, offset):
        if offset == 0:
            in_first_write.set()
            gate.wait(10)
            in_first_write.clear()
        return real(self, buf, n, offset)

    class Stream(io.BytesIO):
        def readinto(self, b):
            if self.tell() == sparse.BLOCK_SIZE:
                in_first_write.wait(5)
            if in_first_write.is_set():
                reads_while_blocked.append(self.tell())
                if len(reads_while_blocked) == 3:
                    gate.set()
            return super().readinto(b)

    monkeypatch.setattr(sparse._WriteBehind, '_write', slow_write)
    data = os.urandom(8 * sparse.BLOCK_SIZE)
    path, n = _copy(tmp_path, Stream(data), limit=len(data))
    assert n == len(data)
    assert path.read_bytes() == data
    # Three further blocks were read while the first was being written.
    assert reads_while_blocked[:3] == [sparse.BLOCK_SIZE * i
                                       for i in (1, 2, 3)]


def test_a_write_error_ends_the_copy_with_it(tmp_path, monkeypatch):
    # A failed write (EIO on a dying disk) is raised by the copy, which
    # reads no further than the blocks already in flight.
    import errno
    real = sparse._WriteBehind._write
    read = []

    def failing(self, buf, n, offset):
        if offset == 2 * sparse.BLOCK_SIZE:
            raise OSError(errno.EIO, 'I/O error')
        return real(self, buf, n, offset)

    class Stream(io.BytesIO):
        def readinto(self, b):
            read.append(self.tell())
            return super().readinto(b)

    monkeypatch.setattr(sparse._WriteBehind, '_write', failing)
    data = os.urandom(64 * sparse.BLOCK_SIZE)
    with pytest.raises(OSError) as err:
        _copy(tmp_path, Stream(data), limit=len(data))
    assert err.value.errno == errno.EIO
    assert len(read) < 64


def test_a_failed_read_waits_for_the_writes_in_flight(tmp_path,
                                                      monkeypatch):
    # When the stream fails, no write may still be running after the copy
    # returns (the caller closes and discards the output next).
    import threading
    import time
    running = threading.Event()
    finished = []
    real = sparse._WriteBehind._write

    def slow(self, buf, n, offset):
        running.set()
        time.sleep(0.2)
        finished.append(offset)
        return real(self, buf, n, offset)

    class Broken(io.BytesIO):
        def readinto(self, b):
            if self.tell() >= sparse.BLOCK_SIZE:
                running.wait(5)
                raise exception.StreamFailed(task_id='t', reason='cut')
            return super().readinto(b)

    monkeypatch.setattr(sparse._WriteBehind, '_write', slow)
    data = os.urandom(4 * sparse.BLOCK_SIZE)
    with pytest.raises(exception.StreamFailed):
        _copy(tmp_path, Broken(data), limit=len(data))
    assert finished == [0]
    assert not [t for t in threading.enumerate()
                if t.name == 'write-behind']
