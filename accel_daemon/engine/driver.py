# SPDX-License-Identifier: Apache-2.0
"""The interface every compression driver implements (engine side).

Drivers (``accel_daemon.drivers.*``, entry points ``accel_daemon.compressors``)
import this module; the engine never imports a driver module, it loads them
by entry point (``engine.compression.load_drivers``).

A driver works on descriptors the engine opened and checked
(``engine.files``): it never sees a path, so it has nothing to re-check and
nothing a directory owner could swap.  Everything about one run (bytes,
CPU seconds, the digest of the output) is returned in ``Stats`` or kept on
the stream a decompression yields; nothing is kept on the driver, which is
shared by concurrent tasks.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
import dataclasses
import errno
import fcntl
import os
from types import MappingProxyType
from typing import Any, ContextManager, Protocol

from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine.progress import Progress
from accel_daemon.engine.settings import Settings

GZIP = 'gzip'
ZSTD = 'zstd'


@dataclasses.dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ''
    version: str | None = None


@dataclasses.dataclass
class Stats:
    """What a driver reports about one compression run."""
    engine: str
    hardware: bool
    bytes_in: int = 0
    bytes_out: int = 0
    cpu_seconds: float = 0.0
    # sha256 of the output when the driver computed it while writing.
    sha256: str | None = None


class Decompressed(Protocol):
    """A stream of decompressed bytes; ``cpu_seconds`` (helper threads and
    children) is final once the stream's context has exited."""

    cpu_seconds: float

    def readinto(self, buf: Any) -> int: ...


class Compressor(abc.ABC):
    """One compression engine.

    ``compress`` writes a complete stream of ``output_format`` from the
    descriptor ``src_fd`` (read from offset 0) to the empty file
    ``dst_fd``.  ``open_decompressed`` yields a ``Decompressed`` stream of
    the bytes of ``src_fd``; the engine caps and writes them.
    """

    name: str = ''
    hardware: bool = False
    output_format: str = GZIP
    # What ``open_decompressed`` reads, {format: rank}: the engine decodes
    # a format with the available driver of the lowest rank
    # (``engine.compression.decoder_for``).  Empty: it decodes nothing.
    decodes: Mapping[str, int] = MappingProxyType({})

    def __init__(self, settings: Settings, policy: CommandPolicy) -> None:
        self.settings = settings
        self.policy = policy

    def level(self, requested: int | None = None) -> int:
        """The compression level of one run (the request's or the
        configured one); drivers clamp it to what they support."""
        return int(self.settings.compression_level
                   if requested is None else requested)

    @abc.abstractmethod
    def availability(self) -> Availability:
        """Whether this engine can run here, and if not, why."""

    def decoder_availability(self) -> Availability:
        """Whether ``open_decompressed`` can run here; by default the same
        as ``availability()``.  A driver whose decoding runs another
        command than its compression says so here."""
        return self.availability()

    @abc.abstractmethod
    def compress(self, src_fd: int, dst_fd: int, progress: Progress, *,
                 level: int | None = None, digest: bool = False,
                 bps_limit: int | None = None) -> Stats:
        """Compress ``src_fd`` into ``dst_fd``; with ``digest`` a driver
        that can hash while writing sets ``Stats.sha256``.  With
        ``bps_limit`` it reads at most that many bytes of the source per
        second (``engine.throttle``); the engine passes it only when set."""

    @abc.abstractmethod
    def open_decompressed(self, src_fd: int, progress: Progress
                          ) -> ContextManager[Decompressed]:
        """A context manager yielding the decompressed bytes of src_fd."""


def rewind(fd: int) -> None:
    """Read ``fd`` from its start: a file is rewound, a pipe (an image
    stream, ``engine.streams``) is read from where it is."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError as e:
        if e.errno != errno.ESPIPE:
            raise


_F_SETPIPE_SZ = 1031     # fcntl.F_SETPIPE_SZ (Python >= 3.10 names it)
PIPE_SIZE = 1024 * 1024


def widen_pipe(fd: int) -> None:
    """A 1 MiB pipe instead of 64 KiB: 16x fewer wake-ups between a
    decoding child and us while gigabytes go through."""
    try:
        fcntl.fcntl(fd, getattr(fcntl, 'F_SETPIPE_SZ', _F_SETPIPE_SZ),
                    PIPE_SIZE)
    except OSError:
        pass     # above /proc/sys/fs/pipe-max-size: keep the default
