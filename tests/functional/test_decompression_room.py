# SPDX-License-Identifier: Apache-2.0
"""Decompression never fills the target's file system: a small archive
of non-zero data (zstd inflates 35 MB to a terabyte) stops while the file
system still has room for everybody else, whatever the size cap says; a
sparse image bigger than the free space still fits (its zeros are holes).

The allowed directory is a small tmpfs of its own, mounted by the test
(root only)."""

from __future__ import annotations

import gzip
import os
import subprocess
import time

import pytest

from accel_daemon.engine.engine import Engine
from accel_daemon.engine import paths
from accel_daemon import exception
from accel_daemon import operations
from tests import envfixture

MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason='mounting a tmpfs needs root')


@pytest.fixture
def small(tmp_path):
    env = envfixture.make_env(tmp_path)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=128m,mode=0755',
                    'accel-test', env.images], check=True)
    try:
        yield env
    finally:
        subprocess.run(['umount', env.images], check=True)


def _free(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_non_zero_data_stops_before_the_file_system_is_full(small):
    packed = small.path('bomb.gz')
    with gzip.open(packed, 'wb', compresslevel=9) as f:
        for _ in range(256):                # 256 MiB of data in ~250 KB
            f.write(b'\x5a' * MiB)
    free = _free(small.images)
    with pytest.raises(exception.NoSpace) as e:
        operations.run(Engine(small.settings, small.policy), 't',
                       'decompress', {'src': packed,
                                      'dst': small.path('out.raw')})
    # The file system, not the size cap (1 TiB by default, no max_bytes
    # given), stopped it; the output is named.
    assert e.value.fields['path'] == small.path('out.raw')
    assert sorted(os.listdir(small.images)) == ['bomb.gz']
    assert paths.stray_temp_files(small.images) == []
    assert _free(small.images) == free


def test_a_sparse_image_larger_than_the_free_space_fits(small):
    packed = small.path('sparse.gz')
    with gzip.open(packed, 'wb', compresslevel=1) as f:
        f.write(b'\x5a' * MiB)
        for _ in range(512):
            f.write(bytes(MiB))
    result = operations.run(Engine(small.settings, small.policy), 't',
                            'decompress', {'src': packed,
                                           'dst': small.path('out.raw')})
    assert result['size'] == 513 * MiB > _free(small.images)
    assert os.stat(result['output']).st_blocks * 512 < 4 * MiB


def test_a_cluster_bomb_stops_before_the_file_system_is_full(small):
    """A qcow2 whose every cluster maps to one host cluster: a few KB
    that qemu-img writes out as a fully allocated 1 GiB, within the 1 TiB
    size cap; the output's file system (512 MiB here) stops it first."""
    from tests.functional.reliability import bombs
    subprocess.run(['mount', '-o', 'remount,size=512m', small.images],
                   check=True)
    src = small.path('bomb.qcow2')
    with open(src, 'wb') as f:
        f.write(bombs.qcow2_cluster_bomb(virtual_size=1024 * MiB))
    free = _free(small.images)
    with pytest.raises(exception.NoSpace):
        operations.run(Engine(small.settings, small.policy), 't',
                       'convert', {'src': src, 'dst': small.path('o.raw'),
                                   'src_format': 'qcow2',
                                   'dst_format': 'raw'})
    assert sorted(os.listdir(small.images)) == ['bomb.qcow2']
    # The killed qemu-img's direct I/O still in flight holds the unnamed
    # output for a moment after it is reaped.
    deadline = time.monotonic() + 10
    while _free(small.images) != free and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _free(small.images) == free
