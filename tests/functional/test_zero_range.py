# SPDX-License-Identifier: Apache-2.0
"""Runs of zeros on a block device that does not read as zeros are zeroed
with fallocate(FALLOC_FL_ZERO_RANGE), not written; a target that refuses
it gets them written.  Either way every byte of the image is there and
nothing past it changes."""

from __future__ import annotations

import io
import os

import pytest

from accel_daemon.engine import sparse
from tests.functional import imagegen as gen

MiB = 1024 * 1024
pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason='loop devices need root')


def image(size: int) -> bytes:
    """Data at the start, in the middle and at an unaligned end; zeros
    between (some of them not 4 KiB aligned)."""
    data = bytearray(size)
    data[:MiB + 1000] = os.urandom(MiB + 1000)
    mid = size // 2 + 512
    data[mid:mid + 3 * 4096] = os.urandom(3 * 4096)
    data[-777:] = os.urandom(777)
    return bytes(data)


def copy(data: bytes, fd: int) -> tuple[int, sparse.ZeroRange]:
    seen = []
    real = sparse.ZeroRange

    class Kept(real):
        def __init__(self, fd):
            super().__init__(fd)
            seen.append(self)
    sparse.ZeroRange = Kept
    try:
        n = sparse.copy_capped(io.BytesIO(data), fd, sparse.Flow(
            len(data), 'test', sparse=False, truncate=False,
            zero_range=True))
    finally:
        sparse.ZeroRange = real
    return n, seen[0]


def test_a_loop_device_gets_its_zeros_by_zero_range(tmp_path):
    backing = str(tmp_path / 'disk.img')
    with open(backing, 'wb') as f:
        f.write(b'\x5a' * 40 * MiB)
    data = image(32 * MiB - 4096 + 777)
    with gen.loop_device(backing) as dev:
        fd = os.open(dev, os.O_RDWR)
        try:
            n, zeroer = copy(data, fd)
        finally:
            os.close(fd)
        with open(dev, 'rb') as f:
            written = f.read(40 * MiB)
    assert n == len(data)
    assert written[:len(data)] == data
    assert written[len(data):] == b'\x5a' * (40 * MiB - len(data))
    assert zeroer.usable and zeroer.zeroed > 28 * MiB


def test_a_target_without_zero_range_gets_its_zeros_written():
    # tmpfs has no FALLOC_FL_ZERO_RANGE.
    path = '/dev/shm/accel-zero-range-%d' % os.getpid()
    with open(path, 'wb') as f:
        f.write(b'\x5a' * 8 * MiB)
    try:
        data = image(6 * MiB + 123)
        fd = os.open(path, os.O_RDWR)
        try:
            n, zeroer = copy(data, fd)
        finally:
            os.close(fd)
        with open(path, 'rb') as f:
            written = f.read()
    finally:
        os.unlink(path)
    assert n == len(data)
    assert written[:len(data)] == data
    assert written[len(data):] == b'\x5a' * (8 * MiB - len(data))
    assert not zeroer.usable and zeroer.zeroed == 0
