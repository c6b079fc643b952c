# SPDX-License-Identifier: Apache-2.0
"""Running external tools: filter check, no shell, cancellable, measured.

``run()`` is the only place the engine starts a process.  The argv is checked
against the command policy first (and the executable resolved from the
filter), the child gets its own process group so a cancel kills the whole
tree, optional resource limits are applied in the child (like prlimit), and
the child's CPU time is read back with wait4(2).

A tool that forks, and whose child leaves the process group (``setsid``),
escapes that kill.  In the privileged helper, which is made a child
subreaper (``adopt_orphans()``), such a process becomes the helper's own
child once its parent has exited, and every child of the helper that
``run()`` did not start is such an orphan: ``sweep_orphans()`` kills and
reaps them, as soon as a tool has exited and whenever one was killed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import resource
import signal
import subprocess  # nosec B404: the one place that execs, see run()
import threading
import time
from collections.abc import Callable, Sequence

from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine import landlock
from accel_daemon.engine.progress import Progress
from accel_daemon.engine import tooluser
from accel_daemon import exception

LOG = logging.getLogger(__name__)

_POLL = 0.05
_STDERR_TAIL = 2000
# How long a killed child may take to die, and its pipes to close.
_KILL_GRACE = 5.0
_PIPE_GRACE = 1.0

PR_SET_CHILD_SUBREAPER = 36
# The children run() started and has not reaped; held while one starts, so
# a sweep never takes a tool being started for an orphan.
_spawn_lock = threading.Lock()
_running: set[int] = set()
_adopting = False
# Rounds of sweeping: an orphan killed may leave children of its own,
# which come to us in turn.
_SWEEP_ROUNDS = 64


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


def _reader(stream: io.BufferedIOBase, sink: list[bytes],
            on_output: Callable[[bytes], None] | None) -> None:
    for chunk in iter(lambda: stream.read1(65536), b''):
        sink.append(chunk)
        if on_output is not None:
            on_output(chunk)
    stream.close()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        # The tools run as another user: killing them needs CAP_KILL.
        LOG.error('Cannot kill the process group of %d: no permission',
                  proc.pid)


def _start(cmd: list[str], policy: CommandPolicy, stdin: int | None,
           stdout: int | None, pass_fds: Sequence[int],
           limits: Limits | None) -> subprocess.Popen:
    confine = None
    if policy.sandbox is not None:
        if landlock.abi() < 1:
            raise exception.ConfinementUnavailable(
                command=' '.join(cmd), reason='no Landlock')
        confine = policy.sandbox.child_step(cmd[0], pass_fds)
    with _spawn_lock:
        proc = subprocess.Popen(  # nosec B603
            cmd, stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE, close_fds=True,
            pass_fds=tuple(pass_fds), start_new_session=True,
            preexec_fn=tooluser.child_setup(
                policy.tool_user, limits.apply if limits else None,
                confine=confine),
            env={'PATH': '/usr/sbin:/usr/bin:/sbin:/bin', 'LC_ALL': 'C'})
        _running.add(proc.pid)
    return proc


def adopt_orphans() -> None:
    """Make this process a child subreaper (prctl(2)), once: what a tool
    leaves behind comes to us when the tool exits, not to init, so
    ``sweep_orphans()`` can kill it.  Only the privileged helper does this
    (``privileged.ops``): it starts no process but its tools."""
    global _adopting
    if not _adopting:
        tooluser.prctl(PR_SET_CHILD_SUBREAPER, 1)
        _adopting = True


def _children() -> list[int]:
    """This process's children, from every thread (a child belongs to
    the thread that forked it, or to the one an orphan was given to)."""
    found = []
    for tid in os.listdir('/proc/self/task'):
        with contextlib.suppress(OSError), \
                open('/proc/self/task/%s/children' % tid) as f:
            found += [int(pid) for pid in f.read().split()]
    return found


def sweep_orphans() -> int:
    """Kill and reap every child of this process that ``run()`` did not
    start: processes tools left behind, adopted (``adopt_orphans()``).
    Does nothing in a process that does not adopt orphans.  Returns how
    many were swept."""
    if not _adopting:
        return 0
    swept = 0
    for _ in range(_SWEEP_ROUNDS):
        with _spawn_lock:
            strays = [pid for pid in _children() if pid not in _running]
            for pid in strays:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if not strays:
            break
        for pid in strays:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        swept += len(strays)
    if swept:
        LOG.warning('Killed %d process(es) that tools left running', swept)
    return swept


def run(argv: Sequence[str], policy: CommandPolicy, *,
        progress: Progress | None = None,
        stdin: int | None = None, stdout: int | None = None,
        on_output: Callable[[bytes], None] | None = None,
        limits: Limits | None = None,
        pass_fds: Sequence[int] = (),
        check: bool = True,
        timeout: float | None = None) -> Result:
    """Run ``argv`` after the filter check; raise on failure or cancel.

    ``stdin``/``stdout`` may be file descriptors to connect; otherwise stdout
    is captured (and fed to ``on_output`` as it arrives).

    ``timeout`` (seconds; default: the policy's) bounds the wall-clock time
    until the command has exited *and* closed its output: past it the whole
    process group is killed and ``CommandTimeout`` raised.  A call can set
    its own limit but cannot lift the policy's by passing None.

    The child runs as the policy's tool user (``tooluser.child_setup``)
    with no capability, and dies with the thread that started it.
    """
    cmd = policy.check(argv)
    if timeout is None:
        timeout = policy.timeout
    LOG.debug('Running %s (timeout %s s)', cmd, timeout)
    started = time.monotonic()
    deadline = started + timeout if timeout is not None else None
    # argv list (never a shell), already matched against the filters.
    try:
        proc = _start(cmd, policy, stdin, stdout, pass_fds, limits)
    except exception.AccelError:
        raise
    except (OSError, subprocess.SubprocessError) as e:
        # Nothing ran: the executable vanished, or the child could not
        # take the tool user's identity (tooluser.child_setup).
        raise exception.ProcessFailed(command=' '.join(cmd), exit_code=-1,
                                      stderr='could not start: %s' % e)
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
        exited = _wait_exit(proc, progress, deadline)
        if exited:
            # What the tool left running is an orphan by now: ours.
            sweep_orphans()
        finished = exited and _join(readers, proc, progress, deadline)
    except BaseException:
        # KeyboardInterrupt, SystemExit, a failing progress callback: the
        # caller is about to remove the output, so the child (possibly
        # writing a device in place) must not outlive this call.
        _kill_group(proc)
        _reap(proc, _KILL_GRACE)
        sweep_orphans()
        raise
    if not finished:
        _kill_group(proc)
        _reap(proc, _KILL_GRACE)
        sweep_orphans()
        _join(readers, proc, None, time.monotonic() + _PIPE_GRACE)
        if progress is not None and progress.cancelled:
            raise exception.Cancelled()
        LOG.warning('Killed %s: still running after %s s', cmd, timeout)
        raise exception.CommandTimeout(command=' '.join(cmd),
                                       timeout=timeout)
    reaped = _reap(proc, None)
    assert reaped is not None  # nosec B101: without a grace it always waits
    status, usage = reaped
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


def _exited(proc: subprocess.Popen, block: bool = False) -> bool:
    """Whether the child has exited, *without* reaping it: while it is an
    unreaped zombie its pid, and so its process group id, cannot be reused,
    so killing the group stays safe until ``_reap()``."""
    flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
    return os.waitid(os.P_PID, proc.pid, flags) is not None


def _wait_exit(proc: subprocess.Popen, progress: Progress | None,
               deadline: float | None) -> bool:
    """Wait for the child to exit, killing its group on cancel; False when
    the deadline came first."""
    if progress is None and deadline is None:
        return _exited(proc, block=True)
    killed = False
    delay = 0.001
    while not _exited(proc):
        if progress is not None and progress.cancelled and not killed:
            _kill_group(proc)
            killed = True
        if not _sleep(progress, deadline, delay, killed):
            return False
        # Short commands are reaped within a millisecond or two; long ones
        # are polled at most every 50 ms.
        delay = min(_POLL, delay * 2)
    return True


def _join(readers: list[threading.Thread], proc: subprocess.Popen,
          progress: Progress | None, deadline: float | None) -> bool:
    """Wait for the output pipes to close.  The child has exited, but a
    process it left behind in its group may still hold them: that counts
    against the deadline, and a cancel kills it.  False at the deadline."""
    killed = False
    for t in readers:
        while t.is_alive():
            if progress is not None and progress.cancelled and not killed:
                _kill_group(proc)
                killed = True
            left = _left(deadline)
            if left is not None and left <= 0:
                return False
            step = _POLL if progress is not None else None
            if left is not None:
                step = left if step is None else min(step, left)
            t.join(step)
    return True


def _sleep(progress: Progress | None, deadline: float | None,
           delay: float, killed: bool) -> bool:
    """Sleep up to ``delay`` (waking on cancel); False if the deadline has
    passed."""
    left = _left(deadline)
    if left is not None and left <= 0:
        return False
    delay = delay if left is None else min(delay, left)
    if progress is None or killed:
        time.sleep(delay)
    else:
        progress.wait_cancelled(delay)
    return True


def _tool(proc: subprocess.Popen) -> str:
    """The program ``proc`` runs, for messages (run() passes a list)."""
    args = proc.args
    return str(args[0] if isinstance(args, (list, tuple)) else args)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _reap(proc: subprocess.Popen, grace: float | None
          ) -> tuple[int, resource.struct_rusage] | None:
    """Reap the child with wait4 (for its CPU time).  With ``grace``, give up
    after that long: a process stuck in uninterruptible I/O survives SIGKILL
    until the I/O ends, and must not hold this thread; Popen's own cleanup
    reaps it later since its returncode stays unset."""
    if grace is None:
        _, status, usage = os.wait4(proc.pid, 0)
    else:
        end = time.monotonic() + grace
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.monotonic() >= end:
                LOG.error('Process %d (%s) did not die within %s s of '
                          'SIGKILL; leaving it behind', proc.pid,
                          _tool(proc), grace)
                return None
            time.sleep(0.01)
    # Set, so Popen never waits for this pid again (it may be reused).
    proc.returncode = os.waitstatus_to_exitcode(status)
    with _spawn_lock:
        # Reaped first: a sweep meanwhile still knows it, and no new child
        # can have its pid before pid numbers wrap around.
        _running.discard(proc.pid)
    return status, usage
