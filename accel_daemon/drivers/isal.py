# SPDX-License-Identifier: Apache-2.0
"""ISA-L gzip: the fastest software path.

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

Compression runs in this process: its input is a disk image, read as
bytes, never parsed.  Decompression parses a caller's deflate stream, so
it runs in an unprivileged child (``isal_child``, through the filters, as
the tool user), which sends back what it decoded (``isal_decode``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from types import MappingProxyType
from typing import Any

import accel_daemon
from accel_daemon.drivers.cli import DecodingChild
from accel_daemon.drivers.isal_decode import FrameReader
from accel_daemon.drivers.isal_decode import GZIP_WBITS
from accel_daemon.drivers.isal_decode import MAX_LEVEL
from accel_daemon.drivers.isal_decode import zero_member
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

    def decoder_availability(self) -> base.Availability:
        avail = self.availability()
        if not avail.available:
            return avail
        try:
            resolved = self.policy.check(inflate_argv(0, 0, 1))
        except exception.CommandDenied as e:
            return base.Availability(False, e.message)
        ours = os.path.realpath(sys.executable)
        if os.path.realpath(resolved[0]) != ours:
            # The child imports isal's extension built for our interpreter.
            return base.Availability(
                False, '%s is not the interpreter accel-daemon runs on (%s)'
                % (resolved[0], ours))
        return avail

    @contextlib.contextmanager
    def open_decompressed(self, src_fd: int,
                          progress: Progress) -> Iterator[FrameReader]:
        """The caller's gzip is inflated by ``isal_child`` in a child that
        runs as a tool (tool user, no capability, Landlock), never in this
        process; it reads ``src_fd`` from offset 0 as its stdin."""
        name = paths.fd_path(src_fd)
        base.rewind(src_fd)
        dirs = [os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                for d in package_dirs()]
        try:
            child = DecodingChild(
                inflate_argv(dirs[0], dirs[1], self.settings.chunk_size),
                self.policy, src_fd, name, tuple(dirs))
            reader = _ChildReader(child, name)
            try:
                yield reader
            finally:
                reader.close()
        finally:
            for fd in dirs:
                os.close(fd)


def package_dirs() -> tuple[str, str]:
    """The directories that hold the ``accel_daemon`` and ``isal``
    packages: the decoding child's whole import path."""
    def parent(module: Any) -> str:
        return os.path.dirname(os.path.dirname(os.path.abspath(
            module.__file__)))
    return parent(accel_daemon), parent(isal)


def inflate_argv(code_fd: int, lib_fd: int, chunk: int) -> list[str]:
    """``isal_child`` run by the system's python3 (the interpreter of our
    venv), reading its code through the directories ``code_fd`` and
    ``lib_fd`` (``package_dirs``)."""
    return ['python3', '-I', '-S',
            '/proc/self/fd/%d/accel_daemon/drivers/isal_child.py' % code_fd,
            '/proc/self/fd/%d' % code_fd, '/proc/self/fd/%d' % lib_fd,
            str(int(chunk))]


class _ChildReader(FrameReader):
    """``FrameReader`` of a ``DecodingChild``, which it ends."""

    def __init__(self, child: DecodingChild, path: str) -> None:
        super().__init__(child, path)
        self._child = child

    def close(self) -> None:
        self._child.close()
        self.cpu_seconds = self._child.cpu_seconds


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
        self.out = directio.appender(dst_fd)
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
