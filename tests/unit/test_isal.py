# SPDX-License-Identifier: Apache-2.0
"""The ISA-L driver in-process (the isal library, no external tools)."""

import gzip
import os
import zlib

import pytest

from accel_daemon.drivers import isal as isal_driver
from accel_daemon.drivers import isal_decode
from accel_daemon.engine.progress import Progress
from accel_daemon.engine import sparse
from accel_daemon import exception
from tests import fdutil

MiB = 1024 * 1024


def test_chunk_plan_marks_holes():
    plan = list(isal_driver.chunk_plan([(5, 10), (35, 41)], 50, 10))
    assert plan == [(0, 10, True), (10, 10, False), (20, 10, False),
                    (30, 10, True), (40, 10, True)]


def test_chunk_plan_extent_spanning_chunks_and_short_tail():
    plan = list(isal_driver.chunk_plan([(0, 25)], 25, 10))
    assert plan == [(0, 10, True), (10, 10, True), (20, 5, True)]


def test_chunk_plan_all_hole():
    assert [p[2] for p in isal_driver.chunk_plan([], 30, 10)] == [False] * 3


def test_data_extents_of_sparse_file(tmp_path):
    path = tmp_path / 'f'
    with open(path, 'wb') as f:
        f.truncate(16 * MiB)
        f.seek(8 * MiB)
        f.write(b'x' * 4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = list(isal_driver.data_extents(fd, 16 * MiB))
    finally:
        os.close(fd)
    assert len(extents) == 1
    start, end = extents[0]
    assert start <= 8 * MiB < 8 * MiB + 4096 <= end


@pytest.mark.parametrize('level', [0, 1, 3])
def test_zero_member_is_gzip_of_zeros(level):
    member = isal_driver.zero_member(100000, level)
    assert gzip.decompress(member) == bytes(100000)
    assert isal_driver.zero_member(100000, level) is member   # cached


def test_level_clamps():
    assert [isal_driver.clamp_level(v) for v in (-1, 0, 3, 9)] == [0, 0, 3, 3]


def _image(path, size=24 * MiB):
    with open(path, 'wb') as f:
        f.truncate(size)
        f.seek(MiB + 123)
        f.write(os.urandom(300000) + b'text ' * 200000)
        f.seek(10 * MiB)
        f.write(bytes(4 * MiB))          # allocated zeros
        f.seek(size - 5)
        f.write(b'tail!')


@pytest.mark.parametrize('threads,chunk', [(1, MiB), (2, 4 * MiB),
                                           (3, 64 * 1024)])
def test_round_trip_multi_member(env, threads, chunk):
    src, dst = env.path('img'), env.path('img.gz')
    _image(src)
    open(dst, 'wb').close()
    settings = env.with_settings(compression_threads=threads,
                                 chunk_size=chunk, compression_level=9
                                 ).settings
    drv = isal_driver.IsalCompressor(settings, env.policy)
    progress = Progress()
    stats = fdutil.compress(drv, src, dst, progress)
    data = open(src, 'rb').read()
    packed = open(dst, 'rb').read()
    assert stats.bytes_in == len(data) and stats.bytes_out == len(packed)
    assert stats.sha256 and stats.cpu_seconds > 0
    assert progress.done == progress.total == len(data)
    # Python's own gzip (multi-member aware) agrees with the content.
    assert gzip.decompress(packed) == data
    assert len(packed) < len(data) // 4


def test_decompress_stream_reads_foreign_gzip(env, tmp_path):
    data = os.urandom(1000) + bytes(3 * MiB) + b'end'
    src = env.path('x.gz')
    with open(src, 'wb') as f:
        f.write(gzip.compress(data[:2000]) + gzip.compress(data[2000:]))
    drv = isal_driver.IsalCompressor(env.settings, env.policy)
    out = tmp_path / 'out'
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    with fdutil.decompressing(drv, src, Progress()) as stream:
        sparse.copy_capped(stream, fd, sparse.Flow(len(data)))
    os.close(fd)
    assert out.read_bytes() == data


@pytest.mark.parametrize('payload', [
    gzip.compress(b'x' * 100000)[:-9],             # truncated
    gzip.compress(b'abc')[:-4] + b'\0\0\0\0',       # wrong length field
    b'\x1f\x8b\x08\x00' + b'\xff' * 64,            # garbage after magic
])
def test_bad_gzip_raises_corrupt_input(env, payload):
    src = env.path('bad.gz')
    with open(src, 'wb') as f:
        f.write(payload)
    drv = isal_driver.IsalCompressor(env.settings, env.policy)
    with pytest.raises(exception.CorruptInput):
        with fdutil.decompressing(drv, src, Progress()) as stream:
            while stream.read(65536):
                pass


def test_cancel_stops_compression(env):
    src, dst = env.path('img'), env.path('img.gz')
    _image(src)
    open(dst, 'wb').close()
    progress = Progress()
    progress.cancel()
    drv = isal_driver.IsalCompressor(env.settings, env.policy)
    with pytest.raises(exception.Cancelled):
        fdutil.compress(drv, src, dst, progress)


def test_reads_with_zlib_too(env):
    # Members carry standard headers: plain zlib in gzip mode reads one.
    src, dst = env.path('img'), env.path('img.gz')
    with open(src, 'wb') as f:
        f.write(b'hello' * 1000)
    open(dst, 'wb').close()
    fdutil.compress(isal_driver.IsalCompressor(env.settings, env.policy),
                    src, dst)
    d = zlib.decompressobj(31)
    assert d.decompress(open(dst, 'rb').read()) == b'hello' * 1000


def _members(*parts):
    return b''.join(parts)


def test_zero_members_come_out_as_counts_not_bytes(tmp_path):
    chunk = 1 * MiB
    zero = isal_driver.zero_member(chunk, 1)
    data = isal_driver.isal_zlib.compress(b'abc' * 1000, 1, wbits=31)
    path = tmp_path / 'z.gz'
    path.write_bytes(_members(zero, data, zero, zero))
    with open(path, 'rb') as raw:
        items = list(isal_decode.inflate_members(
            raw, str(path), isal_decode.known_zero_members(chunk)))
    assert items[0] == chunk
    assert b''.join(i for i in items if isinstance(i, bytes)) == \
        b'abc' * 1000
    assert items[-2:] == [chunk, chunk]
    # Stock gzip reads the same file to the same bytes.
    assert gzip.decompress(path.read_bytes()) == \
        bytes(chunk) + b'abc' * 1000 + bytes(2 * chunk)


def test_zero_run_reader_without_take_zeros_gets_bytes(env):
    chunk = MiB
    path = env.path('z.gz')
    with open(path, 'wb') as f:
        f.write(isal_driver.zero_member(chunk, 1) * 2)
    drv = isal_driver.IsalCompressor(
        env.with_settings(chunk_size=chunk).settings, env.policy)
    got = bytearray()
    buf = bytearray(300 * 1024)
    with fdutil.decompressing(drv, path) as reader:
        while n := reader.readinto(buf):
            got += buf[:n]
    assert bytes(got) == bytes(2 * chunk)


def test_bomb_of_zero_members_stops_at_cap_without_inflating(env):
    chunk = 4 * MiB
    path = env.path('bomb.gz')
    # 4096 members of 4 MiB of zeros: 16 GiB once decompressed.
    with open(path, 'wb') as f:
        f.write(isal_driver.zero_member(chunk, 1) * 4096)
    drv = isal_driver.IsalCompressor(
        env.with_settings(chunk_size=chunk).settings, env.policy)
    fd = os.open(env.path('out'), os.O_WRONLY | os.O_CREAT)
    try:
        with fdutil.decompressing(drv, path) as reader:
            with pytest.raises(exception.SizeLimitExceeded):
                sparse.copy_capped(reader, fd, sparse.Flow(64 * MiB))
    finally:
        os.close(fd)
    # Counted, not inflated: nothing was written.
    assert os.stat(env.path('out')).st_size == 0


def test_near_zero_member_is_inflated_not_trusted(tmp_path):
    chunk = 1 * MiB
    zero = isal_driver.zero_member(chunk, 1)
    # Same length, one payload byte different: must not count as zeros.
    other = isal_driver.isal_zlib.compress(bytes(chunk - 1) + b'\x01', 1,
                                           wbits=31)
    path = tmp_path / 'n.gz'
    path.write_bytes(other)
    assert other != zero
    with open(path, 'rb') as raw:
        items = list(isal_decode.inflate_members(
            raw, str(path), isal_decode.known_zero_members(chunk)))
    assert all(isinstance(i, bytes) for i in items)
    assert b''.join(items)[-1:] == b'\x01'
