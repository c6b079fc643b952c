# SPDX-License-Identifier: Apache-2.0
"""The isal reader in its own process: frames, the child, its filter.

The helper trusts the child's output only as far as the framing goes: a
child that an input took over may send anything, and each way of breaking
the protocol must end in ``CorruptInput`` without holding what it
announces.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import subprocess
import sys
import tracemalloc

import pytest

from accel_daemon.drivers import isal as isal_driver
from accel_daemon.drivers import isal_decode
from accel_daemon.engine import compression
from accel_daemon.engine.progress import Progress
from accel_daemon import exception
from tests import envfixture
from tests import fdutil

MiB = 1024 * 1024
FRAME = struct.Struct('>cQ')
# 64 MiB that inflate from a small file: more than a pipe and the read-ahead
# hold, so the child is still there after the first read.
PATTERN = bytes(range(1, 256)) * (64 * MiB // 255)


def frames(*parts: tuple[bytes, int, bytes]) -> bytes:
    return b''.join(FRAME.pack(tag, n) + body for tag, n, body in parts)


def drain(reader: isal_decode.FrameReader) -> list:
    """Everything a reader hands over: bytes, and ints for zero runs."""
    items: list = []
    buf = bytearray(64 * 1024)
    while True:
        zeros = reader.take_zeros()
        if zeros:
            items.append(zeros)
            continue
        n = reader.readinto(buf)
        if not n:
            return items
        items.append(bytes(buf[:n]))


def decoded(blob: bytes) -> list:
    return drain(isal_decode.FrameReader(io.BytesIO(blob), 'x.gz'))


def refused(blob: bytes) -> str:
    with pytest.raises(exception.CorruptInput) as e:
        decoded(blob)
    return e.value.message


@pytest.fixture
def env(tmp_path):
    return envfixture.make_env(str(tmp_path))


# --- frames ------------------------------------------------------------------
def test_frames_round_trip_bytes_and_zero_runs():
    r, w = os.pipe()
    items = [b'abc', 4 * MiB, os.urandom(3 * MiB + 5), 7]
    pid = os.fork()
    if pid == 0:
        os.close(r)
        isal_decode.write_frames(iter(items), w)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, 'rb', buffering=0) as stream:
        got = drain(isal_decode.FrameReader(stream, 'x.gz'))
    os.waitpid(pid, 0)
    # Bytes come in frames of at most MAX_FRAME; runs of zeros as counts.
    assert all(len(g) <= isal_decode.MAX_FRAME for g in got
               if not isinstance(g, int))
    assert [g for g in got if isinstance(g, int)] == [4 * MiB, 7]
    joined = b''.join(bytes(g) for g in got if not isinstance(g, int))
    assert joined == items[0] + items[2]


@pytest.mark.parametrize('blob', [
    b'',                                            # nothing at all
    frames((b'D', 3, b'abc')),                      # no end mark
    frames((b'D', 3, b'abc'))[:-1],                 # cut inside a frame
    frames((b'.', 0, b''))[:5],                     # cut inside a header
])
def test_a_child_that_ends_early_is_corrupt_input(blob):
    message = refused(blob)
    assert 'the decoder ended' in message or 'broke its protocol' in message


@pytest.mark.parametrize('blob', [
    frames((b'?', 1, b'x'), (b'.', 0, b'')),        # unknown tag
    frames((b'D', 0, b''), (b'.', 0, b'')),         # empty data frame
    frames((b'.', 1, b'')),                         # end mark with a length
    frames((b'.', 0, b'')) + b'more',               # bytes after the end
])
def test_a_child_that_breaks_the_framing_is_corrupt_input(blob):
    assert 'broke its protocol' in refused(blob)


@pytest.mark.parametrize('length', [isal_decode.MAX_FRAME + 1, 2 ** 63])
def test_an_oversized_frame_is_refused_before_anything_is_allocated(length):
    tracemalloc.start()
    try:
        assert 'broke its protocol' in refused(
            frames((b'D', length, b'')) + bytes(64))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MiB


# --- the child, through the filters ----------------------------------------
def test_the_reader_inflates_in_a_child_not_in_this_process(env):
    data = os.urandom(2 * MiB) + bytes(6 * MiB) + PATTERN + b'tail' * 1000
    src = env.path('d.gz')
    with open(src, 'wb') as f:
        f.write(gzip.compress(data, 1))
    drv = isal_driver.IsalCompressor(env.settings, env.policy)
    with fdutil.decompressing(drv, src, Progress()) as stream:
        got = bytearray(stream.read(MiB))
        # Still running: its pipe and our read-ahead are full.
        children = _children_with(b'isal_child.py')
        while block := stream.read(MiB):
            got += block
    assert bytes(got) == data
    assert len(children) == 1
    # Its CPU time is counted in the result, as a tool's is.
    assert stream.cpu_seconds > 0


def test_our_own_zero_members_come_back_as_counts(env):
    chunk = env.settings.chunk_size
    src = env.path('z.gz')
    with open(src, 'wb') as f:
        f.write(isal_decode.zero_member(chunk, 1) * 3 +
                gzip.compress(b'end'))
    drv = isal_driver.IsalCompressor(env.settings, env.policy)
    with fdutil.decompressing(drv, src, Progress()) as stream:
        runs = [stream.take_zeros() for _ in range(3)]
        assert runs == [chunk] * 3
        assert stream.read(MiB) == b'end'
        assert stream.read(MiB) == b''


@pytest.mark.parametrize('blob,words', [
    (gzip.compress(b'x' * 100000)[:-20], 'truncated'),
    (gzip.compress(b'data') + b'garbage', ''),
    (b'\x1f\x8b' + bytes(30), ''),
])
def test_bad_gzip_is_refused_with_the_childs_reason(env, blob, words):
    src = env.path('bad.gz')
    with open(src, 'wb') as f:
        f.write(blob)
    drv = isal_driver.IsalCompressor(env.settings, env.policy)
    with pytest.raises(exception.CorruptInput) as e:
        with fdutil.decompressing(drv, src, Progress()) as stream:
            while stream.read(MiB):
                pass
    assert words in e.value.message
    assert _children_with(b'isal_child.py') == []


def test_closing_early_kills_the_child(env):
    src = env.path('big.gz')
    with open(src, 'wb') as f:
        f.write(gzip.compress(PATTERN, 1))
    drv = isal_driver.IsalCompressor(env.settings, env.policy)
    with fdutil.decompressing(drv, src, Progress()) as stream:
        assert len(stream.read(MiB)) > 0
        assert len(_children_with(b'isal_child.py')) == 1
    assert _children_with(b'isal_child.py') == []


def test_without_its_filter_line_the_reader_is_unavailable(env):
    envfixture.copy_filters_without(env, 'python3')   # isal_inflate
    drv = isal_driver.IsalCompressor(env.settings, env.policy)
    assert drv.availability().available         # compression is in-process
    avail = drv.decoder_availability()
    assert not avail.available
    drivers = compression.load_drivers(env.settings, env.policy)
    assert compression.decoder_for(drivers, 'gzip').name == 'igzip'


def test_another_interpreter_is_not_trusted_to_load_isal(env, monkeypatch):
    monkeypatch.setattr(sys, 'executable', '/opt/other/bin/python3')
    avail = isal_driver.IsalCompressor(
        env.settings, env.policy).decoder_availability()
    assert not avail.available
    assert 'not the interpreter' in avail.reason


def test_the_argv_matches_the_shipped_filter(env):
    argv = isal_driver.inflate_argv(7, 8, 4 * MiB)
    assert env.policy.check(argv)[1:] == argv[1:]
    for bad in (['python3', '-I', '-S', '/tmp/evil.py', '/proc/self/fd/7',
                 '/proc/self/fd/8', '1'],
                argv[:1] + ['-c', 'print(1)'] + argv[3:],
                argv[:-1] + ['0']):
        with pytest.raises(exception.CommandDenied):
            env.policy.check(bad)


def _children_with(word: bytes) -> list[int]:
    out = subprocess.run(['ps', '-o', 'pid=,args=', '--ppid',
                          str(os.getpid())], capture_output=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()
            if word in line]
