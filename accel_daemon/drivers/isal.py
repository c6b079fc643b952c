# SPDX-License-Identifier: Apache-2.0
"""ISA-L in-process gzip: the fastest software path.

The source is cut into fixed chunks (``settings.chunk_size``), each chunk is
compressed into an independent gzip member by a pool of threads (ISA-L
releases the GIL), and the members are written in order.  Concatenated
members are a valid gzip file (RFC 1952 section 2.2): stock ``gzip -d``,
``pigz -d`` and ``igzip -d`` read it.

Disk images are mostly holes.  Holes are found with SEEK_DATA/SEEK_HOLE and
never read; a hole chunk (or a read chunk that is all zeros) is written as a
precomputed member of zeros, computed once per length and level.  At most
``2 * threads`` chunks are in flight, so memory stays bounded (a few tens of
MB) whatever the image size.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from types import MappingProxyType
from typing import Any

from accel_daemon.drivers.isal_decode import BackgroundReader
from accel_daemon.drivers.isal_decode import inflate_members
from accel_daemon.engine import directio
from accel_daemon.engine import driver as base
from accel_daemon.engine.extents import data_extents
from accel_daemon.engine import paths
from accel_daemon.engine.progress import Progress
from accel_daemon.engine import throttle
from accel_daemon import exception

try:  # The library is a hard requirement, but say so clearly if missing.
    import isal
    from isal import igzip
    from isal import isal_zlib
except ImportError:  # pragma: no cover - exercised only on broken installs
    # Typed as the modules (see isal_decode): availability() says when
    # they are missing.
    isal = igzip = isal_zlib = None  # type: ignore[assignment]

LOG = logging.getLogger(__name__)

MAX_LEVEL = 3          # ISA-L supports levels 0..3; higher requests clamp.
GZIP_WBITS = 31        # zlib convention: 16 + 15 = gzip wrapper, 32 KiB window


def clamp_level(level: int) -> int:
    return max(0, min(MAX_LEVEL, int(level)))


# --- planning ---------------------------------------------------------------
def chunk_plan(extents: Iterable[tuple[int, int]], size: int,
               chunk: int) -> Iterator[tuple[int, int, bool]]:
    """Yield (offset, length, has_data) for every chunk of the file in order.

    A chunk has data when any extent touches it; the rest are holes.
    """
    pos = 0
    for start, end in extents:
        first = (start // chunk) * chunk
        while pos < first:
            yield pos, min(chunk, size - pos), False
            pos += chunk
        while pos < end:
            yield pos, min(chunk, size - pos), True
            pos += chunk
    while pos < size:
        yield pos, min(chunk, size - pos), False
        pos += chunk


_ZERO_MEMBERS: dict[tuple[int, int], bytes] = {}
_ZERO_LOCK = threading.Lock()


def zero_member(length: int, level: int) -> bytes:
    """The gzip member for ``length`` zero bytes (cached per length/level)."""
    key = (length, level)
    with _ZERO_LOCK:
        member = _ZERO_MEMBERS.get(key)
        if member is None:
            member = isal_zlib.compress(bytes(length), level, wbits=GZIP_WBITS)
            _ZERO_MEMBERS[key] = member
        return member


# --- I/O helpers ------------------------------------------------------------
def read_exact(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` from ``offset``; a short file is an error (it shrank)."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise exception.CorruptInput(
                path=paths.fd_path(fd), reason='file shrank while reading')
        done += n


def source_size(fd: int) -> int:
    size = os.fstat(fd).st_size
    if size == 0:   # block devices report 0; ask the device
        size = os.lseek(fd, 0, os.SEEK_END)
    return size


# --- the driver -------------------------------------------------------------
class IsalCompressor(base.Compressor):
    name = 'isal'
    # First: in-process, any gzip (single or multi-member, from any tool),
    # no pipe copy.
    decodes = MappingProxyType({base.GZIP: 10})
    hardware = False
    output_format = base.GZIP

    def availability(self) -> base.Availability:
        if isal_zlib is None:
            return base.Availability(False, 'the isal Python library is not '
                                            'installed')
        return base.Availability(True, version=isal.__version__)

    def compress(self, src_fd: int, dst_fd: int, progress: Progress, *,
                 level: int | None = None, digest: bool = False,
                 bps_limit: int | None = None) -> base.Stats:
        size = source_size(src_fd)
        progress.set_total(size)
        with contextlib.suppress(OSError):
            os.posix_fadvise(src_fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        chunk = max(64 * 1024, int(self.settings.chunk_size))
        plan = chunk_plan(data_extents(src_fd, size), size, chunk)
        job = _Job(src_fd, dst_fd,
                   _Shape(chunk, clamp_level(self.level(level)),
                          max(1, int(self.settings.compression_threads))),
                   progress, hashlib.sha256() if digest else None,
                   throttle.pacer(bps_limit, progress))
        main_cpu = time.thread_time()
        job.run(plan)
        return base.Stats(
            self.name, self.hardware, bytes_in=size, bytes_out=job.written,
            cpu_seconds=job.worker_cpu + (time.thread_time() - main_cpu),
            sha256=job.hasher.hexdigest() if job.hasher else None)

    @contextlib.contextmanager
    def open_decompressed(self, src_fd: int,
                          progress: Progress) -> Iterator[BackgroundReader]:
        name = paths.fd_path(src_fd)
        # A duplicate, so closing the reader leaves the caller's descriptor
        # open (they share the offset: nothing else reads it meanwhile).
        with os.fdopen(os.dup(src_fd), 'rb', buffering=0) as raw:
            raw.seek(0)
            chunks = inflate_members(
                raw, name, known_zero_members(self.settings.chunk_size))
            reader = BackgroundReader(chunks, name)
            try:
                yield reader
            finally:
                reader.close()


@dataclasses.dataclass(frozen=True)
class _Shape:
    """How one compression run is cut: chunk size, level, threads."""
    chunk: int
    level: int
    threads: int


class _Job:
    """One compression run: ordered writes over a bounded pool of chunks."""

    def __init__(self, src_fd: int, dst_fd: int, shape: _Shape,
                 progress: Progress, hasher: Any = None,
                 pacer: throttle.Pacer | None = None) -> None:
        self.src_fd, self.dst_fd = src_fd, dst_fd
        chunk, threads = shape.chunk, shape.threads
        self.chunk, self.level, self.threads = chunk, shape.level, threads
        self.progress = progress
        self.hasher = hasher
        # Paces the chunk reads (holes are not read, so not paced).
        self.pacer = pacer
        self.out = directio.AppendWriter(dst_fd)
        self.worker_cpu = 0.0
        self._cpu_lock = threading.Lock()
        self._zeros = bytes(chunk)
        # Bounded memory: two chunks per thread (one compressing, one read
        # ahead); results wait in ``pending`` until written in order.
        self._free = [bytearray(chunk) for _ in range(2 * threads)]
        self._pending: collections.deque = collections.deque()

    def run(self, plan: Iterable[tuple[int, int, bool]]) -> None:
        pool = concurrent.futures.ThreadPoolExecutor(
            self.threads, thread_name_prefix='isal')
        try:
            for offset, length, has_data in plan:
                self.progress.check()
                if has_data:
                    while not self._free:
                        self._write_oldest()
                    buf = self._free.pop()
                    if self.pacer is not None:
                        self.pacer.pace(length)
                    fut = pool.submit(self._work, buf, offset, length)
                    self._pending.append((fut, buf, offset + length))
                else:
                    self._pending.append(
                        (zero_member(length, self.level), None,
                         offset + length))
                self._write_ready()
            while self._pending:
                self.progress.check()
                self._write_oldest()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.out.close()

    @property
    def written(self) -> int:
        return self.out.written

    def _work(self, buf: bytearray, offset: int, length: int) -> bytes:
        started = time.thread_time()
        view = memoryview(buf)[:length]
        try:
            read_exact(self.src_fd, view, offset)
            full = length == self.chunk
            if (buf == self._zeros) if full else not any(view):
                return zero_member(length, self.level)
            return isal_zlib.compress(view, self.level, wbits=GZIP_WBITS)
        finally:
            view.release()
            with self._cpu_lock:
                self.worker_cpu += time.thread_time() - started

    def _write_ready(self) -> None:
        while self._pending:
            item = self._pending[0][0]
            if isinstance(item, concurrent.futures.Future) and not item.done():
                return
            self._write_oldest()

    def _write_oldest(self) -> None:
        item, buf, end = self._pending.popleft()
        data = item.result() if buf is not None else item
        if buf is not None:
            self._free.append(buf)
        self.out.write(data)
        if self.hasher is not None:
            self.hasher.update(data)
        self.progress.set_done(end)


def known_zero_members(chunk: int) -> dict[bytes, int]:
    """The zero members our compressor writes for ``chunk``, by level."""
    return {zero_member(chunk, level): chunk for level in range(MAX_LEVEL + 1)}
