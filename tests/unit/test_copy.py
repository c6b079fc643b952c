# SPDX-License-Identifier: Apache-2.0
import os

import pytest

from accel_daemon.engine import copy
from accel_daemon.engine import extents
from accel_daemon.engine.progress import Progress
from accel_daemon import exception

MiB = 1024 * 1024


def _sparse(path, size, writes):
    with open(path, 'wb') as f:
        f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)


def test_copy_preserves_data_and_holes(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    _sparse(src, 64 * MiB, [(0, b'a' * MiB), (40 * MiB, b'b' * 3 * MiB)])
    dst.write_bytes(b'')
    progress = Progress()
    with open(src, 'rb') as s, open(dst, 'r+b') as d:
        size = copy.copy_fd(s.fileno(), d.fileno(), progress)
    assert size == 64 * MiB
    assert dst.read_bytes() == src.read_bytes()
    # Holes stayed holes: far fewer blocks than the apparent size.
    assert os.stat(dst).st_blocks * 512 < 8 * MiB
    assert progress.snapshot() == {'done': 64 * MiB, 'total': 64 * MiB}


def test_extents_of_empty_and_full_files(tmp_path):
    empty, full = tmp_path / 'e', tmp_path / 'f'
    _sparse(empty, 10 * MiB, [])
    full.write_bytes(b'x' * MiB)
    with open(empty, 'rb') as f:
        assert list(extents.data_extents(f.fileno(), 10 * MiB)) == []
    with open(full, 'rb') as f:
        assert list(extents.data_extents(f.fileno(), MiB)) == [(0, MiB)]


def test_copy_cancelled(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    _sparse(src, 4 * MiB, [(0, b'a' * MiB)])
    dst.write_bytes(b'')
    progress = Progress()
    progress.cancel()
    with open(src, 'rb') as s, open(dst, 'r+b') as d:
        with pytest.raises(exception.Cancelled):
            copy.copy_fd(s.fileno(), d.fileno(), progress)


def test_sha256_matches_hashlib(tmp_path):
    import hashlib
    f = tmp_path / 'x'
    _sparse(f, 9 * MiB, [(5 * MiB, b'z' * 100)])
    expected = hashlib.sha256(f.read_bytes()).hexdigest()
    fd = os.open(f, os.O_RDONLY)
    try:
        assert copy.sha256_fd(fd) == expected
    finally:
        os.close(fd)
