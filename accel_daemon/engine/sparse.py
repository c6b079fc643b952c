# SPDX-License-Identifier: Apache-2.0
"""Copy a decompressed stream into a file: capped, sparse, cancellable.

Every decompression goes through ``copy_capped``.  It counts the bytes as
they come and raises SizeLimitExceeded the moment the cap is passed, before
those bytes are written, so a gzip bomb costs at most one block of work past
the limit (Glance does not inspect ``compressed`` uploads, so the content
is untrusted).  Runs of zeros are not written: the file keeps holes
there and its final length is set with ftruncate, so a mostly-empty volume
image stays mostly unallocated.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
from typing import Any, Protocol

from accel_daemon.engine import directio
from accel_daemon.engine.progress import Progress
from accel_daemon.engine import throttle
from accel_daemon import exception

LOG = logging.getLogger(__name__)

BLOCK_SIZE = 1024 * 1024
# Zero detection granularity: a multiple of common filesystem block sizes,
# small enough to find the holes of an ext4 image, large enough that the
# per-segment Python work stays negligible.
SEGMENT_SIZE = 64 * 1024


class Readable(Protocol):
    def readinto(self, buf: Any) -> int: ...


def _fill(stream: Readable, view: memoryview) -> int:
    """Read until ``view`` is full, the stream ends or a run of zeros
    comes next (streams that offer ``zeros_pending``); return bytes read."""
    pending = getattr(stream, 'zeros_pending', None)
    got = 0
    while got < len(view):
        if got and pending is not None and pending():
            break
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _write_nonzero(out: directio.BlockWriter, buf: directio.AlignedBuffer,
                   length: int, offset: int) -> int:
    """Write the non-zero segments of buf[:length] at ``offset``; return
    how many bytes were written.

    Zero segments are found with memcmp on the buffer in place (no copies);
    adjacent data segments are coalesced into one write.  The buffer is
    page-aligned and segments are multiples of the page size, so every
    whole segment can go straight to disk with O_DIRECT.
    """
    view = buf.view
    run_start = None
    written = 0
    for pos in range(0, length, SEGMENT_SIZE):
        end = min(length, pos + SEGMENT_SIZE)
        if buf.is_zero(pos, end):
            if run_start is not None:
                out.pwrite(view[run_start:pos], offset + run_start, True)
                written += pos - run_start
                run_start = None
        elif run_start is None:
            run_start = pos
    if run_start is not None:
        out.pwrite(view[run_start:length], offset + run_start, True)
        written += length - run_start
    return written


@dataclasses.dataclass(frozen=True)
class Flow:
    """How bytes flow from a stream into an output (``copy_capped``):
    at most ``limit`` bytes (``SizeLimitExceeded`` naming ``name``
    beyond) of which at most ``room`` written as data, cancelled through
    ``progress``, holes where zeros arrive unless ``sparse`` is False,
    every byte shown to ``hasher`` (hashlib-like), the bytes read paced by
    ``pacer``."""
    limit: int
    name: str = ''
    progress: Progress | None = None
    sparse: bool = True
    hasher: Any = None
    pacer: throttle.Pacer | None = None
    # Bytes of data (not holes) the output may take: the room its file
    # system has (``room``); None: no such cap.
    room: int | None = None
    # Set the length of a sparse output at the end (a file); a device
    # that reads as zeros has its length already.
    truncate: bool = True


def room(fd: int, margin: int = 64 * 1024 * 1024) -> int:
    """What the file system holding ``fd`` can still take, less a margin
    for everything else on it: ``margin``, or a twentieth of the file
    system where that is less (a small one must still be usable)."""
    st = os.fstatvfs(fd)
    margin = min(margin, st.f_blocks * st.f_frsize // 20)
    return max(0, st.f_bavail * st.f_frsize - margin)


def out_of_room(room: int) -> OSError:
    """The error of an output that would leave its file system without
    its margin: ENOSPC, which ``accel_daemon.operations.run`` reports as
    ``NoSpace`` naming the output."""
    return OSError(errno.ENOSPC, 'the output would take more than the %d '
                   'bytes its file system can spare' % room)


def copy_capped(stream: Readable, out_fd: int, flow: Flow) -> int:
    """Copy ``stream`` to ``out_fd`` from offset 0; return the bytes copied.

    Raises SizeLimitExceeded as soon as more than ``flow.limit`` bytes
    arrive and Cancelled when ``flow.progress`` is cancelled.  With
    ``flow.sparse`` zero segments become holes (the file must start empty);
    without it every byte is written (block devices).  Runs of zeros the
    stream hands over as a count are holes: not paced.
    """
    buf = directio.AlignedBuffer(BLOCK_SIZE)
    out = directio.BlockWriter(out_fd)
    try:
        total = _copy(stream, out, buf, flow)
    finally:
        out.close()
        buf.close()
    if flow.sparse and flow.truncate:
        # Trailing zeros were skipped: set the length explicitly.
        os.ftruncate(out_fd, total)
    return total


def _copy(stream: Readable, out: directio.BlockWriter,
          buf: directio.AlignedBuffer, flow: Flow) -> int:
    limit, progress, name = flow.limit, flow.progress, flow.name
    sparse, hasher, pacer = flow.sparse, flow.hasher, flow.pacer
    written = 0
    view = buf.view
    # Streams that know a run of zeros is next (members of zeros) hand it
    # over as a count: a hole, with nothing inflated, compared or written.
    take_zeros = getattr(stream, 'take_zeros', None) if (
        sparse and hasher is None) else None
    total = 0
    while True:
        if progress is not None:
            progress.check()
        zeros = take_zeros() if take_zeros is not None else 0
        if zeros:
            if total + zeros > limit:
                raise exception.SizeLimitExceeded(path=name, limit=limit)
            total += zeros
            if progress is not None:
                progress.set_done(total)
            continue
        n = _fill(stream, view)
        if n == 0:
            return total
        if total + n > limit:
            raise exception.SizeLimitExceeded(path=name, limit=limit)
        if hasher is not None:
            hasher.update(view[:n])
        if not sparse:
            out.pwrite(view[:n], total, True)
            written += n
        elif not buf.is_zero(0, n):
            written += _write_nonzero(out, buf, n, total)
        if flow.room is not None and written > flow.room:
            raise out_of_room(flow.room)
        total += n
        if progress is not None:
            progress.set_done(total)
        if pacer is not None:
            pacer.pace(n)
