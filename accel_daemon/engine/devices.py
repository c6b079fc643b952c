# SPDX-License-Identifier: Apache-2.0
"""Is a block device in use by anybody else?  Asked after the privileged
layer opened it with ``O_EXCL`` (``engine.files``), for reading as well as
for writing.

``O_EXCL`` on a block device is the kernel's own claim: it fails with EBUSY
while the device is mounted (in any mount namespace), active swap, a member
of a device-mapper or md device, or opened exclusively by anybody else.
Only the holders that claim exclusively are seen that way: a running VM's
QEMU opens its volume without ``O_EXCL``, and reading such a device gives
torn data, writing it corrupts the guest.  So after the claim,
``busy_reason`` also looks for:

* holders in ``/sys/dev/block/MAJ:MIN/holders`` (device-mapper, md, bcache),
  of the device and of each of its partitions;
* a mount of the device or a partition in this mount namespace
  (``/proc/self/mountinfo``; the claim covers the others);
* a lock on the device node (``/proc/locks``): QEMU (2.10 and later, and
  so every libvirt guest and ``qemu-img``) takes OFD locks on every image
  it opens, block devices included.  ``/proc/locks`` is readable without
  privilege, unlike other processes' descriptors (``/proc/PID/fd`` needs
  ``CAP_SYS_PTRACE`` for another user's process, which the privileged
  helper does not hold, on purpose).

What this cannot see, and the operator's patterns must therefore exclude:
openers that neither claim nor lock (``dd``, a backup agent, QEMU with
``locking=off``), a lock taken through another device node of the same
numbers, kernel users that claim nothing (an iSCSI target's backstore,
nbd, a loop device backed by the device), and other hosts attached to the
same LUN.

The roots are arguments, so tests build fake /sys and /proc trees.
"""

from __future__ import annotations

import os


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ''


def device_numbers(rdev: int, sys_root: str = '/sys') -> dict[str, str]:
    """{"MAJ:MIN": kernel name} of the device and of its partitions."""
    number = '%d:%d' % (os.major(rdev), os.minor(rdev))
    base = os.path.join(sys_root, 'dev', 'block', number)
    name = os.path.basename(os.path.realpath(base))
    found = {number: name}
    try:
        entries = os.listdir(base)
    except OSError:
        return found
    for entry in entries:
        part = os.path.join(base, entry)
        if os.path.exists(os.path.join(part, 'partition')):
            dev = _read(os.path.join(part, 'dev'))
            if dev:
                found[dev] = entry
    return found


def holders(numbers: dict[str, str], sys_root: str = '/sys') -> list[str]:
    """The kernel names of the devices built on any of ``numbers``."""
    held = []
    for number in numbers:
        path = os.path.join(sys_root, 'dev', 'block', number, 'holders')
        try:
            held += sorted(os.listdir(path))
        except OSError:
            continue
    return held


def mounted(numbers: dict[str, str], proc_root: str = '/proc') -> list[str]:
    """Mount points of any of ``numbers`` in this mount namespace."""
    points = []
    text = _read(os.path.join(proc_root, 'self', 'mountinfo'))
    for line in text.splitlines():
        fields = line.split()
        # mountinfo(5): ID, parent ID, MAJ:MIN, root, mount point, ...
        if len(fields) > 4 and fields[2] in numbers:
            points.append(fields[4])
    return points


def locked(node: os.stat_result, proc_root: str = '/proc') -> bool:
    """Whether anybody holds a lock (POSIX, OFD or flock) on the inode of
    the device node ``node`` (the fstat of the opened device)."""
    # locks(5): "ID: TYPE MODE ACCESS PID MAJ:MIN:INODE START END", with
    # the file system's device numbers in hex.
    inode = '%02x:%02x:%d' % (os.major(node.st_dev), os.minor(node.st_dev),
                              node.st_ino)
    text = _read(os.path.join(proc_root, 'locks'))
    for line in text.splitlines():
        fields = line.split()
        if '->' in fields:          # a waiter, listed under its holder
            continue
        if len(fields) > 5 and fields[5] == inode:
            return True
    return False


def busy_reason(node: os.stat_result, sys_root: str = '/sys',
                proc_root: str = '/proc') -> str | None:
    """Why the block device opened as ``node`` (its fstat) is in use by
    someone else, or None."""
    numbers = device_numbers(node.st_rdev, sys_root)
    held = holders(numbers, sys_root)
    if held:
        return 'held by %s' % ', '.join(held)
    points = mounted(numbers, proc_root)
    if points:
        return 'mounted on %s' % ', '.join(points)
    if locked(node, proc_root):
        return 'locked by another process, as a running guest locks it'
    return None
