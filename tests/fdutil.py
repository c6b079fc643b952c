# SPDX-License-Identifier: Apache-2.0
"""Drivers take descriptors; tests that hold file names open them here."""

from __future__ import annotations

import contextlib
import os

from accel_daemon.engine.progress import Progress


def compress(drv, src: str, dst: str, progress: Progress | None = None,
             **kwargs):
    """``drv.compress`` from the file ``src`` into the existing file
    ``dst`` (digest on, as the engine asks by default)."""
    kwargs.setdefault('digest', True)
    src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CLOEXEC)
        try:
            return drv.compress(src_fd, dst_fd, progress or Progress(),
                                **kwargs)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


@contextlib.contextmanager
def decompressing(drv, src: str, progress: Progress | None = None):
    """``drv.open_decompressed`` of the file ``src``."""
    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with drv.open_decompressed(fd, progress or Progress()) as stream:
            yield stream
    finally:
        os.close(fd)


def engine_compress(src: str, dst: str, settings, policy,
                    progress: Progress | None = None, **kwargs) -> dict:
    """The compress operation of a fresh Engine (paths first, like the
    functions the tests were written against)."""
    from accel_daemon.engine.engine import Engine
    from accel_daemon.options import Options
    kwargs.setdefault('checksum', True)      # compress's default
    return Engine(settings, policy).compress(progress or Progress(), src,
                                             dst, Options(**kwargs))


def engine_decompress(src: str, dst: str, settings, policy,
                      progress: Progress | None = None, max_bytes=None,
                      checksum: bool = False) -> dict:
    from accel_daemon.engine.engine import Engine
    from accel_daemon.options import Options
    return Engine(settings, policy).decompress(
        progress or Progress(), src, dst,
        Options(max_bytes=max_bytes, checksum=checksum))
