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

import ctypes
import dataclasses
import errno
import logging
import os
import queue
import threading
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


_FALLOC_FL_ZERO_RANGE = 0x10
_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                       ctypes.c_int64)
_fallocate.restype = ctypes.c_int
# What a device (or its driver) that cannot zero a range answers.
_NO_ZERO_RANGE = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENODEV,
                  errno.ENOSYS)


class ZeroRange:
    """Zeroes the runs of zeros of a block device's image with
    ``fallocate(FALLOC_FL_ZERO_RANGE)`` instead of writing them: the
    device offloads it (WRITE ZEROES, or a loop device's file system
    allocates nothing), or the kernel writes the zeros without a copy
    from us.  The first refusal (a device or driver without it) turns it
    off: the zeros are written from then on."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.usable = True
        self.zeroed = 0

    def zero(self, out: directio.BlockWriter, view: memoryview,
             offset: int) -> int:
        """Zero ``len(view)`` bytes (zeros in ``view``) at ``offset``;
        returns the bytes written as data."""
        length = len(view)
        # The device takes whole logical blocks: the aligned middle.
        head = -offset % directio.ALIGN
        body = (length - head) // directio.ALIGN * directio.ALIGN \
            if length > head else 0
        if self.usable and body > 0:
            if _fallocate(self.fd, _FALLOC_FL_ZERO_RANGE, offset + head,
                          body) == 0:
                self.zeroed += body
                written = 0
                if head:
                    out.pwrite(view[:head], offset, True)
                    written += head
                if head + body < length:
                    out.pwrite(view[head + body:], offset + head + body,
                               True)
                    written += length - head - body
                return written
            err = ctypes.get_errno()
            if err not in _NO_ZERO_RANGE:
                raise OSError(err, os.strerror(err))
            LOG.info('fallocate(ZERO_RANGE) refused (%s): zeros are '
                     'written', os.strerror(err))
            self.usable = False
        out.pwrite(view, offset, True)
        return length


def _write_nonzero(out: directio.BlockWriter, buf: directio.AlignedBuffer,
                   length: int, offset: int,
                   zeroer: ZeroRange | None = None) -> int:
    """Write the non-zero segments of buf[:length] at ``offset`` (and,
    with ``zeroer``, zero the others with it); return how many bytes were
    written.

    Zero segments are found with memcmp on the buffer in place (no copies);
    adjacent segments of the same kind are coalesced into one write (or
    one zeroing).  The buffer is page-aligned and segments are multiples
    of the page size, so every whole segment can go straight to disk with
    O_DIRECT.
    """
    view = buf.view
    run_start, zero_start = None, None
    written = 0
    for pos in range(0, length, SEGMENT_SIZE):
        end = min(length, pos + SEGMENT_SIZE)
        if buf.is_zero(pos, end):
            if run_start is not None:
                out.pwrite(view[run_start:pos], offset + run_start, True)
                written += pos - run_start
                run_start = None
            if zero_start is None:
                zero_start = pos
        else:
            if zero_start is not None and zeroer is not None:
                written += zeroer.zero(out, view[zero_start:pos],
                                       offset + zero_start)
            zero_start = None
            if run_start is None:
                run_start = pos
    if run_start is not None:
        out.pwrite(view[run_start:length], offset + run_start, True)
        written += length - run_start
    if zero_start is not None and zeroer is not None:
        written += zeroer.zero(out, view[zero_start:length],
                               offset + zero_start)
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
    # Not sparse (a device that does not read as zeros): zero its runs of
    # zeros with fallocate(ZERO_RANGE) where it can (``ZeroRange``).
    zero_range: bool = False


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


class _WriteBehind:
    """Writes the blocks ``copy_capped`` reads in a thread of its own,
    ``depth`` blocks in flight: the next block is read (from a socket, a
    decoder's pipe) while the last ones go to disk, so neither waits for
    the other (a gzip'd 2 GiB image streamed in took 1.6 s with every
    write waited for, 1.0 s this way; ``benchmarks/stream_in.py``).  Blocks are
    written in order by one thread: an extending O_DIRECT write is
    serialised by the file system anyway.  The first error stops the
    writing; ``take`` and ``close`` raise it."""

    def __init__(self, out: directio.BlockWriter, flow: Flow,
                 zeroer: ZeroRange | None, depth: int = 4,
                 size: int = BLOCK_SIZE) -> None:
        self._out = out
        self._flow = flow
        self._zeroer = zeroer
        self._buffers = [directio.AlignedBuffer(size) for _ in range(depth)]
        self._free: queue.SimpleQueue[directio.AlignedBuffer] = \
            queue.SimpleQueue()
        for buf in self._buffers:
            self._free.put(buf)
        self._full: queue.SimpleQueue[
            tuple[directio.AlignedBuffer, int, int] | None] = \
            queue.SimpleQueue()
        self.written = 0
        self.error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='write-behind')
        self._thread.start()

    def take(self) -> directio.AlignedBuffer:
        """A free buffer (waits while every one is being written)."""
        buf = self._free.get()
        if self.error is not None:
            self._free.put(buf)
            raise self.error
        return buf

    def give_back(self, buf: directio.AlignedBuffer) -> None:
        self._free.put(buf)

    def put(self, buf: directio.AlignedBuffer, n: int, offset: int) -> None:
        """Write buf[:n] at ``offset``; the buffer comes back free."""
        self._full.put((buf, n, offset))

    def _run(self) -> None:
        while (item := self._full.get()) is not None:
            buf, n, offset = item
            if self.error is None and not self._stop:
                try:
                    self.written += self._write(buf, n, offset)
                    room = self._flow.room
                    if room is not None and self.written > room:
                        raise out_of_room(room)
                except BaseException as e:   # raised by take() / close()
                    self.error = e
            self._free.put(buf)

    def _write(self, buf: directio.AlignedBuffer, n: int,
               offset: int) -> int:
        if self._zeroer is not None:
            return _write_nonzero(self._out, buf, n, offset, self._zeroer)
        if not self._flow.sparse:
            self._out.pwrite(buf.view[:n], offset, True)
            return n
        if buf.is_zero(0, n):
            return 0
        return _write_nonzero(self._out, buf, n, offset)

    def close(self, failed: bool) -> None:
        """Wait for the blocks in flight (skipped once ``failed``: the
        output is discarded), release the buffers, raise a write's error
        unless the copy already failed."""
        self._stop = failed
        self._full.put(None)
        self._thread.join()
        for buf in self._buffers:
            buf.close()
        if not failed and self.error is not None:
            raise self.error


def copy_capped(stream: Readable, out_fd: int, flow: Flow) -> int:
    """Copy ``stream`` to ``out_fd`` from offset 0; return the bytes copied.

    Raises SizeLimitExceeded as soon as more than ``flow.limit`` bytes
    arrive and Cancelled when ``flow.progress`` is cancelled.  With
    ``flow.sparse`` zero segments become holes (the file must start empty);
    without it every byte is written (block devices).  Runs of zeros the
    stream hands over as a count are holes: not paced.  Blocks are written
    behind the reading (``_WriteBehind``); when this returns, every one is
    written.
    """
    out = directio.BlockWriter(out_fd)
    zeroer = ZeroRange(out_fd) if flow.zero_range and not flow.sparse \
        else None
    try:
        writer = _WriteBehind(out, flow, zeroer)
        failed = True
        try:
            total = _copy(stream, writer, flow)
            failed = False
        finally:
            writer.close(failed)
    finally:
        out.close()
    if flow.sparse and flow.truncate:
        # Trailing zeros were skipped: set the length explicitly.
        os.ftruncate(out_fd, total)
    return total


def _copy(stream: Readable, writer: _WriteBehind, flow: Flow) -> int:
    limit, progress, name = flow.limit, flow.progress, flow.name
    hasher, pacer = flow.hasher, flow.pacer
    # Streams that know a run of zeros is next (members of zeros) hand it
    # over as a count: a hole, with nothing inflated, compared or written.
    take_zeros = getattr(stream, 'take_zeros', None) if (
        flow.sparse and hasher is None) else None
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
        buf = writer.take()
        n = _fill(stream, buf.view)
        if n == 0:
            writer.give_back(buf)
            return total
        if total + n > limit:
            writer.give_back(buf)
            raise exception.SizeLimitExceeded(path=name, limit=limit)
        if hasher is not None:
            hasher.update(buf.view[:n])
        writer.put(buf, n, total)
        total += n
        if progress is not None:
            progress.set_done(total)
        if pacer is not None:
            pacer.pace(n)
