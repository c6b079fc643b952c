# SPDX-License-Identifier: Apache-2.0
"""Drivers that run a compression tool: igzip, pigz, gzip, zstd.

The tool never sees a path: its stdin is the opened source and its stdout
the opened destination, so the filters only have to allow fixed option
shapes (no path patterns to get wrong) and a symlink swapped in after our
checks cannot redirect it.  Decompression runs ``TOOL -d -c`` with its
stdout on a pipe that the engine reads, caps and writes sparse.

Argv builders are pure functions; availability asks the command policy, so
an operator who deletes a tool's filter lines disables its driver.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import functools
import logging
import os
import threading
from types import MappingProxyType

from accel_daemon.engine import driver as base
from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine import paths
from accel_daemon.engine import process
from accel_daemon.engine.progress import Progress
from accel_daemon.engine import throttle
from accel_daemon import exception

LOG = logging.getLogger(__name__)

_POSITION_POLL = 0.2


# --- argv builders (pure) ---------------------------------------------------
def igzip_compress_argv(level: int, threads: int) -> list[str]:
    # ISA-L levels are 0..3; higher requests clamp like the isal driver.
    return ['igzip', '-c', '-%d' % max(0, min(3, level)), '-T', str(threads)]


def pigz_compress_argv(level: int, threads: int) -> list[str]:
    return ['pigz', '-c', '-n', '-%d' % _gzip_level(level), '-p', str(threads)]


def gzip_compress_argv(level: int, threads: int) -> list[str]:
    return ['gzip', '-c', '-n', '-%d' % _gzip_level(level)]


def zstd_compress_argv(level: int, threads: int) -> list[str]:
    return ['zstd', '-q', '-c', '-%d' % max(1, min(19, level)),
            '-T%d' % threads]


def decompress_argv(tool: str) -> list[str]:
    if tool == 'zstd':
        return ['zstd', '-q', '-d', '-c']
    return [tool, '-d', '-c']


def version_argv(tool: str) -> list[str]:
    return [tool, '--version']


def _gzip_level(level: int) -> int:
    return max(1, min(9, int(level)))


@functools.lru_cache(maxsize=32)
def _cached_version(argv: tuple[str, ...], executable: str,
                    policy: CommandPolicy) -> str | None:
    """First line of ``TOOL --version`` (cached per resolved executable)."""
    try:
        res = process.run(list(argv), policy, check=False)
    except exception.AccelError:
        return None
    text = (res.stdout or res.stderr).decode('utf-8', 'replace').strip()
    return text.splitlines()[0].strip() if text else None


# --- the drivers ------------------------------------------------------------
class CliCompressor(base.Compressor):
    """A compressor that runs ``tool`` through the filters."""

    tool = ''
    build_compress = staticmethod(gzip_compress_argv)

    def compress_argv(self, level: int | None = None) -> list[str]:
        threads = max(1, int(self.settings.compression_threads))
        return self.build_compress(self.level(level), threads)

    def decompress_argv(self) -> list[str]:
        return decompress_argv(self.tool)

    def version_argv(self) -> list[str]:
        return version_argv(self.tool)

    def availability(self) -> base.Availability:
        for argv in (self.compress_argv(), self.decompress_argv()):
            try:
                resolved = self.policy.check(argv)
            except exception.CommandDenied as e:
                return base.Availability(False, e.message)
        return base.Availability(True, version=self._version(resolved[0]))

    def _version(self, executable: str) -> str | None:
        argv = tuple(self.version_argv())
        if not self.policy.allows(list(argv)):
            return None
        return _cached_version(argv, executable, self.policy)

    def compress(self, src_fd: int, dst_fd: int, progress: Progress, *,
                 level: int | None = None, digest: bool = False,
                 bps_limit: int | None = None) -> base.Stats:
        """The tool reads the source as its stdin and writes the output
        as its stdout: both are our descriptors, it opens nothing.  With
        ``bps_limit`` its stdin is a pipe fed at that rate instead."""
        return self._run_compress(src_fd, dst_fd, progress,
                                  self.compress_argv(level), bps_limit)

    def _run_compress(self, src_fd: int, dst_fd: int, progress: Progress,
                      argv: list[str],
                      bps_limit: int | None = None) -> base.Stats:
        size = os.fstat(src_fd).st_size or os.lseek(src_fd, 0, os.SEEK_END)
        os.lseek(src_fd, 0, os.SEEK_SET)
        progress.set_total(size)
        with _track_position(src_fd, progress), \
                _paced_stdin(src_fd, bps_limit, progress) as stdin:
            res = process.run(argv, self.policy,
                              progress=progress, stdin=stdin, stdout=dst_fd)
        progress.set_done(size)
        return base.Stats(self.name, self.hardware, bytes_in=size,
                          bytes_out=os.fstat(dst_fd).st_size,
                          cpu_seconds=res.cpu_seconds)

    @contextlib.contextmanager
    def open_decompressed(self, src_fd: int,
                          progress: Progress) -> Iterator[DecodingChild]:
        base.rewind(src_fd)
        child = DecodingChild(self.decompress_argv(), self.policy, src_fd,
                              paths.fd_path(src_fd))
        try:
            yield child
        finally:
            child.close()


@contextlib.contextmanager
def _track_position(fd: int, progress: Progress) -> Iterator[None]:
    """Report the child's read offset as progress.

    The child's stdin shares our open file description, so its offset is
    visible to us through lseek(fd, 0, SEEK_CUR).
    """
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(_POSITION_POLL):
            try:
                progress.set_done(os.lseek(fd, 0, os.SEEK_CUR))
            except OSError:
                return

    t = threading.Thread(target=poll, daemon=True, name='position')
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


@contextlib.contextmanager
def _paced_stdin(src_fd: int, bps_limit: int | None,
                 progress: Progress) -> Iterator[int]:
    """The descriptor a compressing tool reads: ``src_fd`` itself without
    a limit (no copy), else a pipe a thread fills from ``src_fd`` at
    ``bps_limit`` bytes per second.

    The thread reads through ``src_fd``'s own offset, so
    ``_track_position`` still reports progress.  It stops at the end of
    the source, on a cancel (its sleeps wait on the cancel event; the tool
    is killed by ``process.run``) or when the tool stops reading (the
    read end is closed once the tool has exited: EPIPE).  A read error is
    raised once the tool has finished.
    """
    if not bps_limit:
        yield src_fd
        return
    pacer = throttle.Pacer(bps_limit, progress)
    block = throttle.step(bps_limit, base.PIPE_SIZE)
    errors: list[BaseException] = []
    r, w = os.pipe2(os.O_CLOEXEC)

    def feed() -> None:
        try:
            while data := os.read(src_fd, block):
                pacer.pace(len(data))
                view = memoryview(data)
                while view:
                    view = view[os.write(w, view):]
        except (BrokenPipeError, exception.Cancelled):
            pass    # the tool ended or is being killed: process.run says
        except BaseException as e:  # raised in the caller's thread
            errors.append(e)
        finally:
            os.close(w)

    feeder = threading.Thread(target=feed, daemon=True, name='paced-stdin')
    feeder.start()
    try:
        yield r
    finally:
        os.close(r)
        feeder.join()
    if errors:
        raise errors[0]


class DecodingChild:
    """A decompressing child whose stdout is read through a pipe; its
    stdin is ``src_fd``, and it inherits ``pass_fds`` besides."""

    def __init__(self, argv: list[str], policy: CommandPolicy, src_fd: int,
                 src: str, pass_fds: tuple[int, ...] = ()) -> None:
        self.src = src
        self.cpu_seconds = 0.0
        self._control = Progress()     # cancelling it kills the child
        self._result: process.Result | None = None
        self._error: BaseException | None = None
        policy.check(argv)             # refuse before creating anything
        self._r, self._w = os.pipe2(os.O_CLOEXEC)
        base.widen_pipe(self._r)
        self._thread = threading.Thread(
            target=self._run, args=(argv, policy, src_fd, pass_fds),
            daemon=True, name='decompress-child')
        self._thread.start()

    def _run(self, argv: list[str], policy: CommandPolicy,
             src_fd: int, pass_fds: tuple[int, ...]) -> None:
        try:
            self._result = process.run(argv, policy, progress=self._control,
                                       stdin=src_fd, stdout=self._w,
                                       pass_fds=pass_fds, check=False)
        except BaseException as e:  # re-raised in the reading thread
            self._error = e
        finally:
            # Our copy of the write end: closing it lets the reader see EOF.
            os.close(self._w)

    def readinto(self, buf: bytearray | memoryview) -> int:
        n = os.readv(self._r, [buf])
        if n == 0:
            self._finish()
        return n

    def _finish(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error
        res = self._result
        # _run stores a result or an error before the thread ends.
        assert res is not None  # nosec B101
        self.cpu_seconds = res.cpu_seconds
        if res.returncode != 0:
            # The tool rejected its input (truncated, bad CRC, not its
            # format): report the tool's own words.
            raise exception.CorruptInput(
                path=self.src, reason=res.stderr.decode(
                    'utf-8', 'replace').strip()[-500:] or
                'exit code %d' % res.returncode)

    def stop(self) -> None:
        """Kill the child if it still runs and wait until it is reaped:
        a reader blocked on the pipe then sees its end."""
        if self._thread.is_alive():
            self._control.cancel()
        self._thread.join()
        if self._result is not None:
            self.cpu_seconds = self._result.cpu_seconds

    def close(self) -> None:
        self.stop()
        os.close(self._r)


class IgzipCompressor(CliCompressor):
    name = tool = 'igzip'
    # The CLI tools decode gzip as fallbacks of the in-process isal.
    decodes = MappingProxyType({base.GZIP: 20})
    build_compress = staticmethod(igzip_compress_argv)


class PigzCompressor(CliCompressor):
    name = tool = 'pigz'
    decodes = MappingProxyType({base.GZIP: 30})
    build_compress = staticmethod(pigz_compress_argv)


class GzipCompressor(CliCompressor):
    name = tool = 'gzip'
    decodes = MappingProxyType({base.GZIP: 40})
    build_compress = staticmethod(gzip_compress_argv)


class ZstdCompressor(CliCompressor):
    """zstd: faster and smaller, but not gzip; used only when asked for."""
    name = tool = 'zstd'
    output_format = base.ZSTD
    decodes = MappingProxyType({base.ZSTD: 10})
    build_compress = staticmethod(zstd_compress_argv)
