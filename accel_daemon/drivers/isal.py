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
import queue
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from accel_daemon import exception
from accel_daemon.drivers import base
from accel_daemon.engine import directio
from accel_daemon.engine.extents import data_extents
from accel_daemon.engine import paths
from accel_daemon.engine.progress import Progress

try:  # The library is a hard requirement, but say so clearly if missing.
    import isal
    from isal import igzip
    from isal import isal_zlib
except ImportError:  # pragma: no cover - exercised only on broken installs
    isal = igzip = isal_zlib = None

LOG = logging.getLogger(__name__)

MAX_LEVEL = 3          # ISA-L supports levels 0..3; higher requests clamp.
GZIP_WBITS = 31        # zlib convention: 16 + 15 = gzip wrapper, 32 KiB window


@dataclasses.dataclass
class HashedStats(base.Stats):
    """Stats plus the sha256 of the output, computed while writing it."""
    sha256: str | None = None


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
    hardware = False
    output_format = base.GZIP

    def availability(self) -> base.Availability:
        if isal_zlib is None:
            return base.Availability(False, 'the isal Python library is not '
                                            'installed')
        return base.Availability(True, version=isal.__version__)

    @property
    def level(self) -> int:
        return clamp_level(self.settings.compression_level)

    def compress(self, src: str, dst: str, progress: Progress) -> HashedStats:
        stats = HashedStats(self.name, self.hardware)
        src_fd = paths.open_input(src, self.settings.allowed_dirs,
                                  self.settings.allowed_block_devices)
        try:
            dst_fd = paths.open_ref(dst, os.O_WRONLY)
            try:
                self._compress_fds(src_fd, dst_fd, progress, stats)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
        return stats

    def _compress_fds(self, src_fd: int, dst_fd: int, progress: Progress,
                      stats: HashedStats) -> None:
        size = source_size(src_fd)
        progress.set_total(size)
        with contextlib.suppress(OSError):
            os.posix_fadvise(src_fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        chunk = max(64 * 1024, int(self.settings.chunk_size))
        plan = chunk_plan(data_extents(src_fd, size), size, chunk)
        job = _Job(src_fd, dst_fd, chunk, self.level,
                   max(1, int(self.settings.compression_threads)), progress)
        main_cpu = time.thread_time()
        job.run(plan)
        stats.bytes_in = size
        stats.bytes_out = job.written
        stats.sha256 = job.hasher.hexdigest()
        stats.cpu_seconds = job.worker_cpu + (time.thread_time() - main_cpu)

    @contextlib.contextmanager
    def open_decompressed(self, src: str,
                          progress: Progress) -> Iterator[BinaryIO]:
        fd = paths.open_input(src, self.settings.allowed_dirs,
                              self.settings.allowed_block_devices)
        with os.fdopen(fd, 'rb', buffering=0) as raw:
            chunks = inflate_members(
                raw, src, known_zero_members(self.settings.chunk_size))
            reader = BackgroundReader(chunks, src)
            try:
                yield reader
            finally:
                reader.close()
                self._helper_cpu = reader.cpu_seconds

    def child_cpu_seconds(self) -> float:
        """CPU of the last decompression's decoding thread."""
        return getattr(self, '_helper_cpu', 0.0)


class _Job:
    """One compression run: ordered writes over a bounded pool of chunks."""

    def __init__(self, src_fd: int, dst_fd: int, chunk: int, level: int,
                 threads: int, progress: Progress) -> None:
        self.src_fd, self.dst_fd = src_fd, dst_fd
        self.chunk, self.level, self.threads = chunk, level, threads
        self.progress = progress
        self.hasher = hashlib.sha256()
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
        self.hasher.update(data)
        self.progress.set_done(end)


# Errors the gzip reader raises for bad input (never for our own I/O errors).
DECODE_ERRORS = (EOFError, zlib.error) + (
    (isal_zlib.error, igzip.BadGzipFile) if isal_zlib is not None else ())


_IN_BLOCK = 1024 * 1024
_OUT_BLOCK = 1024 * 1024


def known_zero_members(chunk: int) -> dict[bytes, int]:
    """The zero members our compressor writes for ``chunk``, by level."""
    return {zero_member(chunk, level): chunk for level in range(MAX_LEVEL + 1)}


_PEEK = 64 * 1024     # enough input to compare a whole zero member


def inflate_members(raw: BinaryIO, path: str,
                    zero_members: dict[bytes, int] | None = None
                    ) -> Iterator[bytes | int]:
    """Yield the decompressed bytes of every gzip member in ``raw``.

    One zlib stream per member (the gzip wrapper checks each member's CRC32
    and length); what follows a member starts the next one.  Input that
    ends inside a member is truncated: CorruptInput.

    A member that is byte for byte one of ``zero_members`` (the members of
    zeros our compressor writes for holes) decodes, by construction, to
    that many zero bytes: it is yielded as that count (an int) without
    being inflated, so the writer can leave a hole.
    """
    zero_members = zero_members or {}
    longest = max(map(len, zero_members), default=0)
    d = isal_zlib.decompressobj(GZIP_WBITS)
    in_member = False
    data = b''
    ended = False
    while True:
        if not in_member and zero_members and not ended \
                and len(data) < max(longest, _PEEK):
            more = raw.read(_IN_BLOCK)
            ended = not more
            data += more
        if not data:
            data = raw.read(_IN_BLOCK)
            if not data:
                if in_member:
                    raise exception.CorruptInput(
                        path=path, reason='compressed data ends inside a '
                                          'gzip member (truncated)')
                return
        if not in_member and zero_members:
            run = _zero_run(data, zero_members)
            if run:
                member, length = run
                yield length
                data = data[len(member):]
                continue
        in_member = True
        while True:     # drain: input left over, or output held back
            out = d.decompress(data, _OUT_BLOCK)
            if out:
                yield out
            data = d.unconsumed_tail
            if d.eof or (not data and len(out) < _OUT_BLOCK):
                break
        if d.eof:
            data = d.unused_data
            d = isal_zlib.decompressobj(GZIP_WBITS)
            in_member = False


def _zero_run(data: bytes, zero_members: dict[bytes, int]):
    for member, length in zero_members.items():
        if data.startswith(member):
            return member, length
    return None


class BackgroundReader:
    """Decodes in its own thread so decoding overlaps the engine's writes.

    The queue hands the writer ready blocks, so reading ahead and writing
    overlap (the writer's memcmp and pwrite release the GIL).  Items are
    bytes, or an int for a run of zeros that needs no inflating.  At most
    ``depth`` items wait in the queue.  Bad input surfaces in the reading
    thread as CorruptInput.
    """

    def __init__(self, chunks: Iterator[bytes], path: str, depth: int = 4,
                 block_size: int = 1024 * 1024) -> None:
        self._chunks, self._path = chunks, path
        self._block_size = block_size
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._current = memoryview(b'')
        self._zeros = 0
        self._eof = False
        self.cpu_seconds = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='isal-decode')
        self._thread.start()

    def _run(self) -> None:
        started = time.thread_time()
        try:
            for data in self._chunks:
                if self._stop.is_set():
                    return
                self._put(data)
            self._put(b'')
        except DECODE_ERRORS as e:
            self._put(exception.CorruptInput(
                path=self._path, reason=str(e) or type(e).__name__))
        except BaseException as e:  # re-raised in the reading thread
            self._put(e)
        finally:
            self.cpu_seconds = time.thread_time() - started

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def _next(self) -> None:
        """Make the next queued item current (bytes or a zero run)."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        if isinstance(item, int):
            self._zeros = item
        elif not item:
            self._eof = True
        else:
            self._current = memoryview(item)

    def take_zeros(self) -> int:
        """Consume and return a run of zeros that comes next, else 0.

        The sparse writer calls this between reads so that members of
        zeros become holes without being inflated or compared.
        """
        if not self._current and not self._zeros and not self._eof:
            self._next()
        n, self._zeros = self._zeros, 0
        return n

    def readinto(self, buf) -> int:
        if not self._current and not self._zeros:
            if self._eof:
                return 0
            self._next()
            if self._eof:
                return 0
        if self._zeros:     # a reader that does not ask for zero runs
            n = min(len(buf), self._zeros)
            buf[:n] = bytes(n)
            self._zeros -= n
            return n
        n = min(len(buf), len(self._current))
        buf[:n] = self._current[:n]
        self._current = self._current[n:]
        return n

    def zeros_pending(self) -> bool:
        return bool(self._zeros)

    def read(self, size: int = -1) -> bytes:
        buf = bytearray(size if size > 0 else self._block_size)
        n = self.readinto(buf)
        return bytes(buf[:n])

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
