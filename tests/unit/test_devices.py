# SPDX-License-Identifier: Apache-2.0
"""engine.devices against fake /sys and /proc trees (the real ones, with
loop devices, in tests/functional/test_block_devices.py)."""

from __future__ import annotations

import os
import types

import pytest

from accel_daemon.engine import devices

DISK = os.makedev(7, 3)          # loop3
PART = os.makedev(259, 1)        # loop3p1


@pytest.fixture
def sys_root(tmp_path):
    """/sys/dev/block/7:3 -> ../../devices/virtual/block/loop3, with one
    partition loop3p1 (259:1), as the kernel lays it out."""
    root = tmp_path / 'sys'
    disk = root / 'devices' / 'virtual' / 'block' / 'loop3'
    part = disk / 'loop3p1'
    for d in (disk / 'holders', part / 'holders'):
        d.mkdir(parents=True)
    (part / 'partition').write_text('1\n')
    (part / 'dev').write_text('259:1\n')
    (disk / 'dev').write_text('7:3\n')
    block = root / 'dev' / 'block'
    block.mkdir(parents=True)
    (block / '7:3').symlink_to(disk)
    (block / '259:1').symlink_to(part)
    return root


@pytest.fixture
def proc_root(tmp_path):
    root = tmp_path / 'proc'
    (root / 'self').mkdir(parents=True)
    (root / 'self' / 'mountinfo').write_text(
        '22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n')
    return root


def test_the_device_and_its_partitions(sys_root):
    assert devices.device_numbers(DISK, str(sys_root)) == {
        '7:3': 'loop3', '259:1': 'loop3p1'}


def test_a_device_nobody_uses(sys_root, proc_root):
    assert devices.busy_reason(_node(), str(sys_root), str(proc_root)) is None


def test_a_holder_of_a_partition(sys_root, proc_root):
    part = sys_root / 'devices' / 'virtual' / 'block' / 'loop3' / 'loop3p1'
    (part / 'holders' / 'dm-4').mkdir()
    assert devices.busy_reason(_node(), str(sys_root), str(proc_root)) == \
        'held by dm-4'


def test_a_mounted_partition(sys_root, proc_root):
    with open(proc_root / 'self' / 'mountinfo', 'a') as f:
        f.write('40 22 259:1 / /srv/data rw - xfs /dev/loop3p1 rw\n')
    assert devices.busy_reason(_node(), str(sys_root), str(proc_root)) == \
        'mounted on /srv/data'


def _node(dev=os.makedev(0, 6), ino=93, rdev=DISK):
    """What busy_reason reads of the fstat of an opened device node in
    devtmpfs."""
    return types.SimpleNamespace(st_dev=dev, st_ino=ino, st_rdev=rdev)


def test_a_device_locked_by_a_guest(sys_root, proc_root):
    (proc_root / 'locks').write_text(
        '1: POSIX  ADVISORY  READ 3814 fe:00:1474572 0 EOF\n'
        '2: OFDLCK ADVISORY  READ -1 00:06:93 100 101\n')
    assert devices.busy_reason(_node(), str(sys_root), str(proc_root)) == \
        'locked by another process, as a running guest locks it'


def test_locks_on_other_inodes_do_not_count(proc_root):
    (proc_root / 'locks').write_text(
        '1: OFDLCK ADVISORY  READ -1 00:06:94 100 101\n'
        '2: OFDLCK ADVISORY  READ -1 00:07:93 100 101\n'
        # A waiter is listed under the lock it waits for.
        '3: POSIX  ADVISORY  WRITE 12 00:06:95 0 EOF\n'
        '3: -> POSIX  ADVISORY  WRITE 13 00:06:93 0 EOF\n')
    assert not devices.locked(_node(), str(proc_root))


def test_lock_inode_numbers_are_hex_devices(proc_root):
    (proc_root / 'locks').write_text(
        '1: FLOCK  ADVISORY  WRITE 99 103:1a3:4096 0 EOF\n')
    assert devices.locked(_node(dev=os.makedev(0x103, 0x1a3), ino=4096),
                          str(proc_root))


def test_a_device_sysfs_does_not_know(tmp_path, proc_root):
    # No /sys entry: no partitions and no holders to see; still judged by
    # mounts and openers.
    assert devices.device_numbers(DISK, str(tmp_path)) == {'7:3': '7:3'}
    assert devices.busy_reason(_node(), str(tmp_path), str(proc_root)) is None
