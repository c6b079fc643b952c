# SPDX-License-Identifier: Apache-2.0
"""Sparse-aware copy of an image file, in-process (no external tool).

Only the data extents are copied (SEEK_DATA/SEEK_HOLE), with
copy_file_range(2) so the kernel moves the bytes (or shares them, on file
systems with reflinks); holes stay holes.  The bytes are not interpreted, so
no format inspection is needed: nothing here hands the file to qemu-img.
"""

from __future__ import annotations

import hashlib
import os
import time

from accel_daemon.engine.context import Context
from accel_daemon.engine import extents
from accel_daemon.engine.progress import Progress
from accel_daemon.engine import throttle
from accel_daemon.options import Options
from accel_daemon import records


def copy_fd(src: int, dst: int, progress: Progress,
            bps_limit: int | None = None) -> int:
    """Copy the data of ``src`` into the empty regular file ``dst``, at
    most ``bps_limit`` bytes of data per second (holes are free)."""
    size = os.fstat(src).st_size or os.lseek(src, 0, os.SEEK_END)
    progress.set_total(size)
    pacer = throttle.pacer(bps_limit, progress)

    def each(copied: int) -> None:
        progress.add(copied)
        if pacer is not None:
            pacer.pace(copied)
        progress.check()

    progress.check()
    extents.copy_data(src, dst, size,
                      throttle.step(bps_limit, extents.COPY_STEP), each)
    progress.set_done(size)
    return size


def copy_fd_to_pipe(src: int, pipe: int, progress: Progress,
                    bps_limit: int | None = None) -> int:
    """Every byte of ``src`` (holes as zeros) into the pipe ``pipe``, moved
    by the kernel (splice(2)), at most ``bps_limit`` bytes per second."""
    size = os.fstat(src).st_size or os.lseek(src, 0, os.SEEK_END)
    progress.set_total(size)
    pacer = throttle.pacer(bps_limit, progress)
    offset = 0
    while offset < size:
        progress.check()
        n = os.splice(src, pipe, min(SPLICE_STEP, size - offset),
                      offset_src=offset)
        if n == 0:
            break     # the source shrank: its check says so
        offset += n
        progress.set_done(offset)
        if pacer is not None:
            pacer.pace(n)
    return offset


SPLICE_STEP = 1024 * 1024


def sha256_fd(fd: int, progress: Progress | None = None) -> str:
    """Hash the file open as ``fd`` from offset 0 (positional reads: the
    descriptor's offset is left alone); holes read as zeros, cheaply."""
    h = hashlib.sha256()
    buf = bytearray(4 * 1024 * 1024)
    view = memoryview(buf)
    offset = 0
    while n := os.preadv(fd, [buf], offset):
        if progress is not None:
            progress.check()
        h.update(view[:n])
        offset += n
    return h.hexdigest()


def copy_file(ctx: Context, progress: Progress, src: str, dst: str,
              opts: Options = Options()) -> records.Result:
    """Sparse copy of ``src`` to the new file ``dst`` (``opts.replace``:
    over an existing one)."""
    cpu = time.thread_time()
    with ctx.open_source(src) as source, \
            ctx.output(dst, replace=opts.replace) as out:
        size = copy_fd(source.fd, out.fd, progress, opts.bps_limit)
        digest = sha256_fd(out.fd, progress) if opts.checksum else None
        out.commit(progress)
    return {'output': dst, 'size': size, 'bytes_in': size, 'sha256': digest,
            'engine': 'copy_file_range', 'hardware': False,
            'cpu_seconds': time.thread_time() - cpu}
