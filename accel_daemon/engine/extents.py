# SPDX-License-Identifier: Apache-2.0
"""Where a file's data is: SEEK_DATA/SEEK_HOLE, shared by copy and isal."""

from __future__ import annotations

from collections.abc import Iterator
import errno
import os


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """Yield (start, end) of the allocated ranges of ``fd``.

    Falls back to one extent covering everything where SEEK_DATA is not
    supported (block devices, some file systems).
    """
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:      # no data after pos
                return
            if pos == 0:                    # not supported at all
                yield 0, size
                return
            raise
        end = min(size, os.lseek(fd, start, os.SEEK_HOLE))
        if start >= end:
            return
        yield start, end
        pos = end
