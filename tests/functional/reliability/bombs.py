# SPDX-License-Identifier: Apache-2.0
"""Hand-built malicious qcow2 images (struct only)."""

from __future__ import annotations

import struct

GiB = 1024 ** 3


def qcow2_cluster_bomb(virtual_size: int = 4 * GiB,
                       cluster_bits: int = 16,
                       fill: bytes = b'BOMB') -> bytes:
    """A valid-looking qcow2 v3 whose every L2 entry points at the SAME
    data cluster: under 1 MiB on disk (a few KB gzip'd), ``virtual_size``
    bytes of non-zero data once converted to raw."""
    cs = 1 << cluster_bits
    clusters = virtual_size // cs
    per_l2 = cs // 8
    n_l2 = -(-clusters // per_l2)
    refcount_table, refcount_block, l1 = 1, 2, 3
    first_l2 = 4
    data = first_l2 + n_l2
    total = data + 1
    header = struct.pack(
        '>4sIQIIQIIQQIIQQQQII', b'QFI\xfb', 3, 0, 0, cluster_bits,
        virtual_size, 0, n_l2, l1 * cs, refcount_table * cs, 1, 0, 0,
        0, 0, 0, 4, 104)
    image = bytearray(total * cs)
    image[:len(header)] = header
    # header extension end marker follows the header (zeros already)
    struct.pack_into('>Q', image, refcount_table * cs, refcount_block * cs)
    for c in range(total):
        struct.pack_into('>H', image, refcount_block * cs + 2 * c,
                         0xffff if c == data else 1)
    for i in range(n_l2):
        struct.pack_into('>Q', image, l1 * cs + 8 * i,
                         (1 << 63) | ((first_l2 + i) * cs))
        base = (first_l2 + i) * cs
        for j in range(min(per_l2, clusters - i * per_l2)):
            struct.pack_into('>Q', image, base + 8 * j, data * cs)
    image[data * cs:] = (fill * (cs // len(fill) + 1))[:cs]
    return bytes(image)


def qcow2_huge_l1(qcow2: bytes, l1_size: int = 0x10000000) -> bytes:
    """A copy of a real qcow2 with an absurd L1 table size in its header:
    qemu-img refuses to open it ("Active L1 table too large")."""
    image = bytearray(qcow2)
    struct.pack_into('>I', image, 36, l1_size)
    return bytes(image)
