# SPDX-License-Identifier: Apache-2.0
"""Builders of test images, good and malicious.

The ``*_bytes``/``write_*`` builders use only Python's struct module (the
unit tests use them too); the ``qemu_*`` builders call qemu-img/qemu-io
directly (never through the engine: these are the test's own tools).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess

import pytest

MiB = 1024 * 1024

# Functional tests that build images with the real qemu tools.
REQUIRES_QEMU = [
    pytest.mark.functional,
    pytest.mark.skipif(shutil.which('qemu-img') is None
                       or shutil.which('qemu-io') is None,
                       reason='qemu-img/qemu-io are not installed'),
]

QCOW2_MAGIC = b'QFI\xfb'
QCOW2_INCOMPAT_DATA_FILE = 1 << 2


# --- struct builders ------------------------------------------------------
def qcow2_header(size: int = 64 * MiB, backing: bytes = b'',
                 incompatible: int = 0, version: int = 3) -> bytes:
    """A qcow2 v3 header (104 bytes) padded to 512, optional backing name."""
    backing_offset = 512 if backing else 0
    header = struct.pack(
        '>4sIQIIQIIQQIIQQQQII', QCOW2_MAGIC, version, backing_offset,
        len(backing), 16, size, 0, 0, 0, 0, 0, 0, 0,
        incompatible, 0, 0, 4, 104)
    return header.ljust(512, b'\0') + backing


def write(path: str, data: bytes, size: int | None = None) -> str:
    with open(path, 'wb') as f:
        f.write(data)
        if size is not None and size > len(data):
            f.truncate(size)
    return path


def mbr(partition_type: int = 0x83, protective: bool = False) -> bytes:
    """512-byte MBR with one partition entry (0xEE = GPT protective)."""
    if protective:
        entry = struct.pack('<B3BB3BII', 0, 0, 2, 0, 0xEE, 0xff, 0xff, 0xff,
                            1, 0xffffffff)
    else:
        entry = struct.pack('<B3BB3BII', 0x80, 0, 33, 0, partition_type,
                            0xfe, 0xff, 0xff, 2048, 4096)
    return (b'\0' * 446 + entry + b'\0' * 48 + b'\x55\xaa')


def qcow2_behind_gpt() -> bytes:
    """A qcow2 header that also carries a protective MBR (two formats)."""
    head = bytearray(qcow2_header())
    head[:512] = head[:446] + mbr(protective=True)[446:]
    return bytes(head)


def iso_pvd(blocks: int = 64) -> bytes:
    """An ISO 9660 primary volume descriptor (the 2 KiB sector at 32 KiB)."""
    pvd = bytearray(2048)
    pvd[0] = 1
    pvd[1:6] = b'CD001'
    pvd[6] = 1
    pvd[80:88] = struct.pack('<I', blocks) + struct.pack('>I', blocks)
    pvd[128:132] = struct.pack('<H', 2048) + struct.pack('>H', 2048)
    return bytes(pvd)


def iso_bytes(system_area: bytes = b'', blocks: int = 64) -> bytes:
    """An ISO image; ``system_area`` goes into its first 32 KiB."""
    data = system_area.ljust(32 * 1024, b'\0') + iso_pvd(blocks)
    return data.ljust(blocks * 2048, b'\0')


def vmdk_descriptor(create_type: str, extent: str) -> bytes:
    return ('# Disk DescriptorFile\nversion=1\nCID=12345678\n'
            'parentCID=ffffffff\ncreateType="%s"\n\n%s\n\n'
            'ddb.virtualHWVersion = "4"\n' % (create_type, extent)).encode()


def vmdk_flat_descriptor(target: str = '/etc/shadow') -> bytes:
    """CVE-2022-47951: a text descriptor whose extent is a host file."""
    return vmdk_descriptor('monolithicFlat', 'RW 2048 FLAT "%s" 0' % target)


def vmdk_sparse_with_flat_extent(name: str = 'neighbour.raw') -> bytes:
    """A KDMV sparse header (capacity 0) whose embedded descriptor names a
    relative FLAT extent: no '/', so format_inspector's own checks pass."""
    header = struct.pack('<4sIIQQQQIQQ', b'KDMV', 1, 3, 0, 128, 1, 20, 512,
                         0, 0).ljust(512, b'\0')
    desc = vmdk_descriptor('monolithicSparse', 'RW 2048 FLAT "%s" 0' % name)
    return header + desc.ljust(20 * 512, b'\0')


# --- qemu builders --------------------------------------------------------
def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True)


def qemu_create(path: str, fmt: str, size: str, *options: str) -> str:
    opts = []
    for o in options:
        opts += ['-o', o]
    run('qemu-img', 'create', '-q', '-f', fmt, *opts, path, size)
    return path


def qemu_write(path: str, fmt: str, *writes: tuple[int, int, int]) -> str:
    """qemu-io 'write -P pattern offset length' per (pattern, off, len)."""
    cmds = []
    for pattern, offset, length in writes:
        cmds += ['-c', 'write -P 0x%02x %d %d' % (pattern, offset, length)]
    run('qemu-io', '-f', fmt, *cmds, path)
    return path


def qcow2_with_data(path: str, size: int = 64 * MiB,
                    written: int = 8 * MiB) -> str:
    """A qcow2 with a few written ranges (patterns) and holes between."""
    qemu_create(path, 'qcow2', str(size))
    step = max(written // 4, 64 * 1024)
    writes = [(0xab + i, i * (size // 4), step) for i in range(4)]
    return qemu_write(path, 'qcow2', *writes)


def qcow2_with_backing(path: str, base: str) -> str:
    qemu_create(base, 'raw', '1M')
    run('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw',
        path)
    return path


def qcow2_with_data_file(path: str, data_file: str) -> str:
    """CVE-2024-32498: the guest's bytes live in another host file."""
    return qemu_create(path, 'qcow2', '1M', 'data_file=%s' % data_file,
                       'data_file_raw=on')


def compare(a: str, fa: str, b: str, fb: str) -> bool:
    result = subprocess.run(['qemu-img', 'compare', '-q', '-f', fa, '-F', fb,
                             a, b], capture_output=True)
    if result.returncode not in (0, 1):
        raise RuntimeError(result.stderr.decode())
    return result.returncode == 0


@contextlib.contextmanager
def loop_device(backing: str):
    """Attach ``backing`` as a loop device (root and losetup needed; the
    test is skipped where the sandbox has no loop devices)."""
    if os.geteuid() != 0 or shutil.which('losetup') is None:
        pytest.skip('needs root and losetup')
    try:
        dev = subprocess.run(['losetup', '--find', '--show', backing],
                             check=True, capture_output=True,
                             text=True).stdout.strip()
    except subprocess.CalledProcessError as e:
        pytest.skip('no loop device: %s' % e.stderr)
    try:
        yield dev
    finally:
        subprocess.run(['losetup', '-d', dev], check=False)
