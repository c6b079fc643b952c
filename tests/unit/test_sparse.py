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
