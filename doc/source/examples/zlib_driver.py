# SPDX-License-Identifier: Apache-2.0
"""An example accel-daemon compression driver: gzip from Python's zlib.

The worked example of doc/source/drivers.rst.  It runs in the daemon's
process, like the ``isal`` driver, but one thread and no hole detection:
short enough to read in one sitting, complete enough to plug into a real
daemon.  tests/unit/test_example_driver.py tests it, so this file keeps
working as the interface changes.

A package that ships it registers it under the entry point namespace the
engine loads drivers from (see examples/setup.cfg next to this file)::

    [entry_points]
    accel_daemon.compressors =
        zlib = zlib_driver:ZlibCompressor
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import hashlib
import os
import time
from typing import Any
import zlib

from accel_daemon.engine import driver as base
from accel_daemon.engine import paths
from accel_daemon.engine.progress import Progress
from accel_daemon.engine import throttle
from accel_daemon import exception

# zlib's window bits for a gzip wrapper (RFC 1952) around a 32 KiB window:
# 16 selects the gzip header and trailer, 15 the window size.
GZIP_WBITS = 16 + 15
# Bytes read from the source per step, and the most one readinto() of the
# decompressed stream asks zlib for.
BLOCK = 1024 * 1024


class ZlibCompressor(base.Compressor):
    """gzip through the zlib library Python links against."""

    name = 'zlib'
    hardware = False
    output_format = base.GZIP

    # -- capability -------------------------------------------------------
    def probe(self) -> str | None:
        """Why this engine cannot run here, or None when it can.

        A hardware driver looks for its device here (``qat`` reads sysfs
        under ``settings.sysfs_root``); this one checks that the library
        really writes and reads the gzip wrapper.
        """
        sample = b'accel-daemon zlib probe ' * 64
        try:
            packed = zlib.compress(sample, 1, GZIP_WBITS)
            if zlib.decompress(packed, GZIP_WBITS) != sample:
                return 'zlib gzip round trip gave other bytes'
        except zlib.error as e:
            return 'zlib cannot write gzip: %s' % e
        return None

    def availability(self) -> base.Availability:
        reason = self.probe()
        if reason is not None:
            return base.Availability(False, reason)
        return base.Availability(
            True, version='zlib %s' % zlib.ZLIB_RUNTIME_VERSION)

    def level(self, requested: int | None = None) -> int:
        # zlib takes 0..9, where 0 stores without compressing: the daemon
        # is asked to compress, so 1 is the lowest level it uses.
        return max(1, min(9, super().level(requested)))

    # -- compression ------------------------------------------------------
    def compress(self, src_fd: int, dst_fd: int, progress: Progress, *,
                 level: int | None = None, digest: bool = False,
                 bps_limit: int | None = None) -> base.Stats:
        started = time.thread_time()
        # A block device has no st_size: its size is where its end is.
        size = os.fstat(src_fd).st_size or os.lseek(src_fd, 0, os.SEEK_END)
        progress.set_total(size)
        packer = zlib.compressobj(self.level(level), zlib.DEFLATED,
                                  GZIP_WBITS)
        hasher = hashlib.sha256() if digest else None
        pacer = throttle.pacer(bps_limit, progress)
        step = throttle.step(bps_limit, BLOCK)
        offset = written = 0
        while True:
            progress.check()          # a cancelled task stops here
            data = os.pread(src_fd, step, offset)
            if not data:
                break
            if pacer is not None:
                pacer.pace(len(data))
            offset += len(data)
            written += _write_all(dst_fd, packer.compress(data), hasher)
            progress.set_done(offset)
        written += _write_all(dst_fd, packer.flush(), hasher)
        return base.Stats(self.name, self.hardware, bytes_in=offset,
                          bytes_out=written,
                          cpu_seconds=time.thread_time() - started,
                          sha256=hasher.hexdigest() if hasher else None)

    # -- decompression ----------------------------------------------------
    @contextlib.contextmanager
    def open_decompressed(self, src_fd: int,
                          progress: Progress) -> Iterator[GzipStream]:
        yield GzipStream(src_fd, progress, paths.fd_path(src_fd))


class GzipStream:
    """The decompressed bytes of a gzip file of one or more members.

    Each ``readinto`` returns at most ``len(buf)`` bytes, however well the
    input compresses: the engine counts them against the size cap, so a
    gzip bomb never gets more than one buffer ahead of it.
    """

    def __init__(self, fd: int, progress: Progress, name: str) -> None:
        self.cpu_seconds = 0.0
        self._fd = fd
        self._progress = progress
        self._name = name
        self._offset = 0
        self._unpacker = zlib.decompressobj(GZIP_WBITS)
        self._input = b''         # read, not yet handed to the unpacker
        self._in_member = False   # the current member has begun

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast('B')
        started = time.thread_time()
        try:
            return self._inflate(view)
        except zlib.error as e:
            raise exception.CorruptInput(path=self._name, reason=str(e))
        finally:
            self.cpu_seconds += time.thread_time() - started

    def _inflate(self, view: memoryview) -> int:
        while True:
            self._progress.check()
            if self._unpacker.eof:
                # One member ended; the bytes after it start the next one
                # (concatenated members are one gzip file, RFC 1952 2.2).
                self._input = self._unpacker.unused_data + self._input
                self._unpacker = zlib.decompressobj(GZIP_WBITS)
                self._in_member = False
            data = self._unpacker.unconsumed_tail
            if not data:
                if not self._input:
                    self._input = os.pread(self._fd, BLOCK, self._offset)
                    self._offset += len(self._input)
                if not self._input:
                    if self._in_member:
                        raise exception.CorruptInput(
                            path=self._name, reason='truncated gzip member')
                    return 0
                data, self._input = self._input, b''
            self._in_member = True
            out = self._unpacker.decompress(data, len(view))
            if out:
                view[:len(out)] = out
                return len(out)


def _write_all(fd: int, data: bytes, hasher: Any) -> int:
    """Write all of ``data`` (os.write may write less than asked)."""
    if hasher is not None:
        hasher.update(data)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return len(data)
