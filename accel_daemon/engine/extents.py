# SPDX-License-Identifier: Apache-2.0
"""Where a file's data is (SEEK_DATA/SEEK_HOLE), and copying only that:
shared by copy, isal and the outputs staged outside their directory."""

from __future__ import annotations

from collections.abc import Callable
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


COPY_STEP = 64 * 1024 * 1024


def _pread_pwrite(src: int, dst: int, offset: int, n: int) -> int:
    data = os.pread(src, n, offset)
    os.pwrite(dst, data, offset)
    return len(data)


def copy_data(src: int, dst: int, size: int, step: int = COPY_STEP,
              each: Callable[[int], None] | None = None) -> None:
    """Copy the data extents of ``src`` (``size`` bytes) into the empty
    regular file ``dst`` at the same offsets, with copy_file_range(2) (the
    kernel moves or shares the bytes; read and write where it cannot, as
    across file systems of different kinds), and make ``dst`` ``size``
    bytes long: holes stay holes.  ``each(n)`` is called after every chunk
    of ``n`` bytes (progress, pacing, cancellation)."""
    for start, end in data_extents(src, size):
        done = start
        while done < end:
            n = min(step, end - done)
            try:
                copied = os.copy_file_range(src, dst, n, done, done)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS,
                                   errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                copied = _pread_pwrite(src, dst, done, n)
            if copied == 0:
                break
            done += copied
            if each is not None:
                each(copied)
    os.ftruncate(dst, size)
