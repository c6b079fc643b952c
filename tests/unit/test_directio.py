# SPDX-License-Identifier: Apache-2.0
import os

import pytest

from accel_daemon.engine import directio


def test_aligned_buffer_zero_test():
    buf = directio.AlignedBuffer(64 * 1024)
    try:
        assert buf.is_zero(0, buf.size)
        buf.view[70] = 1
        assert not buf.is_zero(0, 4096)
        assert buf.is_zero(4096, buf.size)
        assert buf.is_zero(0, 70)
    finally:
        buf.close()


def test_aligned_buffer_close_with_live_slice():
    buf = directio.AlignedBuffer(4096)
    keep = buf.view[10:20]      # e.g. referenced from a traceback
    buf.close()                  # must not raise
    del keep


@pytest.mark.parametrize('direct', [True, False])
@pytest.mark.parametrize('sizes', [[1], [4096], [5000, 3, 8 * 1024 * 1024],
                                   [3 * 1024 * 1024] * 7])
def test_append_writer_round_trip(tmp_path, direct, sizes):
    path = tmp_path / 'out'
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    parts = [os.urandom(n) for n in sizes]
    w = directio.AppendWriter(fd, block_size=1024 * 1024, direct=direct)
    try:
        for p in parts:
            w.write(p)
        assert w.written == sum(sizes)
    finally:
        w.close()
        w.close()                # idempotent
        os.close(fd)
    assert path.read_bytes() == b''.join(parts)


def test_append_writer_write_after_close(tmp_path):
    # Found by mypy: the staging buffer is None once closed; a late write
    # must say so, not fail on a None attribute.
    fd = os.open(tmp_path / 'out', os.O_WRONLY | os.O_CREAT)
    w = directio.AppendWriter(fd, block_size=4096)
    try:
        w.write(b'data')
        w.close()
        with pytest.raises(ValueError, match='closed'):
            w.write(b'more')
    finally:
        os.close(fd)
    assert (tmp_path / 'out').read_bytes() == b'data'


def test_block_writer_direct_and_tail(tmp_path):
    path = tmp_path / 'out'
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    buf = directio.AlignedBuffer(3 * 4096)
    data = os.urandom(3 * 4096 - 100)
    buf.view[:len(data)] = data
    w = directio.BlockWriter(fd)
    try:
        w.pwrite(buf.view[:len(data)], 8192, aligned_memory=True)
        w.pwrite(memoryview(b'head'), 0)          # unaligned: buffered
    finally:
        w.close()
        buf.close()
        os.close(fd)
    got = path.read_bytes()
    assert got[:4] == b'head'
    assert got[8192:] == data
    assert got[4:8192] == bytes(8188)
