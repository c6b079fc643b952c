"""Running external tools: filter check, no shell, cancellable, measured.

``run()`` is the only place the engine starts a process.  The argv is checked
against the command policy first (and the executable resolved from the
filter), the child gets its own process group so a cancel kills the whole
tree, optional resource limits are applied in the child (like prlimit), and
the child's CPU time is read back with wait4(2).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import signal
import subprocess  # nosec B404: the one place that execs, see run()
import threading
import time
from collections.abc import Callable, Sequence

from accel_daemon import exception
from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine.progress import Progress

LOG = logging.getLogger(__name__)

_POLL = 0.05
_STDERR_TAIL = 2000


@dataclasses.dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes
    wall_seconds: float
    cpu_seconds: float


@dataclasses.dataclass(frozen=True)
class Limits:
    cpu_seconds: int | None = None
    address_space: int | None = None

    def apply(self) -> None:  # runs in the child, between fork and exec
        if self.cpu_seconds:
            resource.setrlimit(resource.RLIMIT_CPU,
                               (self.cpu_seconds, self.cpu_seconds))
        if self.address_space:
            resource.setrlimit(resource.RLIMIT_AS,
                               (self.address_space, self.address_space))


def _reader(stream, sink: list[bytes],
            on_output: Callable[[bytes], None] | None) -> None:
    for chunk in iter(lambda: stream.read1(65536), b''):
        sink.append(chunk)
        if on_output is not None:
            on_output(chunk)
    stream.close()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(argv: Sequence[str], policy: CommandPolicy, *,
        progress: Progress | None = None,
        stdin: int | None = None, stdout: int | None = None,
        on_output: Callable[[bytes], None] | None = None,
        limits: Limits | None = None,
        pass_fds: Sequence[int] = (),
        check: bool = True) -> Result:
    """Run ``argv`` after the filter check; raise on failure or cancel.

    ``stdin``/``stdout`` may be file descriptors to connect; otherwise stdout
    is captured (and fed to ``on_output`` as it arrives).
    """
    cmd = policy.check(argv)
    LOG.debug('Running %s', cmd)
    started = time.monotonic()
    # argv list (never a shell), already matched against the filters.
    proc = subprocess.Popen(  # nosec B603
        cmd, stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE, close_fds=True, pass_fds=tuple(pass_fds),
        start_new_session=True,
        preexec_fn=limits.apply if limits else None,
        env={'PATH': '/usr/sbin:/usr/bin:/sbin:/bin', 'LC_ALL': 'C'})
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [threading.Thread(target=_reader, args=(proc.stderr, err, None),
                                daemon=True)]
    if proc.stdout is not None:
        readers.append(threading.Thread(target=_reader,
                                        args=(proc.stdout, out, on_output),
                                        daemon=True))
    for t in readers:
        t.start()
    try:
        status, usage = _wait(proc, progress)
    except BaseException:
        # KeyboardInterrupt, SystemExit, a failing progress callback: the
        # caller is about to remove the output, so the child (possibly
        # writing a device in place) must not outlive this call.
        _kill_group(proc)
        os.waitpid(proc.pid, 0)
        raise
    for t in readers:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = Result(cmd, proc.returncode, b''.join(out), b''.join(err),
                    time.monotonic() - started,
                    usage.ru_utime + usage.ru_stime)
    if progress is not None and progress.cancelled:
        raise exception.Cancelled()
    if check and result.returncode != 0:
        raise exception.ProcessFailed(
            command=' '.join(cmd), exit_code=result.returncode,
            stderr=_tail(result.stderr))
    return result


def _tail(stderr: bytes) -> str:
    return stderr.decode('utf-8', 'replace')[-_STDERR_TAIL:].strip()


def _wait(proc: subprocess.Popen, progress: Progress | None):
    """Reap the child with wait4 (for its CPU time), killing it on cancel."""
    if progress is None:
        _, status, usage = os.wait4(proc.pid, 0)
        return status, usage
    killed = False
    delay = 0.001
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            return status, usage
        if progress.cancelled and not killed:
            _kill_group(proc)
            killed = True
        if killed:
            time.sleep(delay)
        else:
            progress.wait_cancelled(delay)
        # Short commands are reaped within a millisecond or two; long ones
        # are polled at most every 50 ms.
        delay = min(_POLL, delay * 2)
