# SPDX-License-Identifier: Apache-2.0
"""The benchmark volume builder with the real mkfs.ext4 and qemu-img."""

import json
import shutil
import subprocess

import pytest

from benchmarks import volume

pytestmark = [
    pytest.mark.functional,
    pytest.mark.skipif(shutil.which('mkfs.ext4') is None
                       or shutil.which('qemu-img') is None,
                       reason='needs mkfs.ext4 and qemu-img'),
]

SIZE_GIB = 0.0625   # 64 MiB
DATA_GB = 0.004     # 4 MB of system files


def _info(path, fmt):
    out = subprocess.run(['qemu-img', 'info', '--output=json', '-f', fmt,
                          path], check=True, capture_output=True).stdout
    return json.loads(out)


def test_build_makes_sparse_ext4_and_qcow2_and_caches(tmp_path):
    vol = volume.build(str(tmp_path), SIZE_GIB, DATA_GB)
    assert vol.size_bytes == 64 << 20
    assert vol.data_bytes >= DATA_GB * 1e9 and vol.files > 1
    assert vol.data_bytes <= vol.allocated_bytes < vol.size_bytes
    fsck = subprocess.run(['e2fsck', '-fn', vol.raw], capture_output=True)
    assert fsck.returncode == 0, fsck.stdout
    assert _info(vol.qcow2, 'qcow2')['virtual-size'] == vol.size_bytes
    assert not (tmp_path / 'staging').exists()

    before = (tmp_path / 'images' / (volume.volume_name(SIZE_GIB, DATA_GB)
                                     + '.raw')).stat().st_mtime_ns
    again = volume.build(str(tmp_path), SIZE_GIB, DATA_GB)
    assert again == vol
    assert (tmp_path / 'images' / 'volume-0.0625g-0.004gb.raw'
            ).stat().st_mtime_ns == before


def test_rebuild_lays_out_the_same_files(tmp_path):
    stamps = []
    for n in range(2):
        volume.build(str(tmp_path), SIZE_GIB, DATA_GB, rebuild=n > 0)
        stamp = tmp_path / 'images' / 'volume-0.0625g-0.004gb.stamp.json'
        stamps.append(json.loads(stamp.read_text()))
    assert stamps[0]['manifest_sha256'] == stamps[1]['manifest_sha256']
    assert stamps[0]['data_bytes'] == stamps[1]['data_bytes']
