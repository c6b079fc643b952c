# SPDX-License-Identifier: Apache-2.0
"""What a benchmark run costs besides its wall time, read from /proc.

* ``own``, ``reaped``, ``tree``: CPU seconds (user + system) of a
  process itself and of its children that already ended (``cutime`` and
  ``cstime``, once reaped), and its live descendants, to add up per
  group of processes.
* ``PeakBytes``: the most bytes allocated at once in a directory's files,
  sampled in a thread (named files only: an unnamed ``O_TMPFILE`` is not
  in any directory).
* ``disk_written()``: bytes written to the host's disks, from
  /proc/diskstats (whole devices, every process).

Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import threading

_TICK = os.sysconf('SC_CLK_TCK')


def _stat(pid: int) -> tuple[float, float] | None:
    """(own CPU seconds, CPU seconds of its reaped children) of ``pid``."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command: state is field 3, utime 14, stime 15, cutime 16,
    # cstime 17 (man 5 proc), so indexes 11-14 here.
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / _TICK, (cutime + cstime) / _TICK


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir('/proc/%d/task' % pid):
            with contextlib.suppress(OSError):
                with open('/proc/%d/task/%s/children' % (pid, task)) as f:
                    found += [int(x) for x in f.read().split()]
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and every live descendant."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def own(pid: int) -> float:
    """CPU seconds ``pid`` used itself (0 when it is gone)."""
    st = _stat(pid)
    return st[0] if st else 0.0


def reaped(pid: int) -> float:
    """CPU seconds of the children of ``pid`` that ended and were reaped."""
    st = _stat(pid)
    return st[1] if st else 0.0


def cpu_of(pids: list[int]) -> float:
    """What ``pids`` used, with their reaped children."""
    return sum(own(p) + reaped(p) for p in pids)


def delta(before: dict[str, float],
          after: dict[str, float]) -> dict[str, float]:
    return {k: max(0.0, after.get(k, 0.0) - before.get(k, 0.0))
            for k in after}


def _cmdline(pid: int) -> bytes:
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return f.read()
    except OSError:
        return b''


def _ppid(pid: int) -> int | None:
    try:
        with open('/proc/%d/stat' % pid) as f:
            return int(f.read().rsplit(')', 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def helpers(config: str) -> list[int]:
    """The privsep helper(s) of the daemon whose configuration file is
    ``config``: the helper daemonizes (its parent becomes init), so it is
    found by its command line; a child it forked keeps that command line
    until it runs its tool, and is left out."""
    found = [int(p) for p in os.listdir('/proc') if p.isdigit()
             and b'privsep-helper' in _cmdline(int(p))
             and config.encode() in _cmdline(int(p))]
    return [p for p in found if _ppid(p) not in found]


def by_group(daemon: int, config: str, glance: list[int],
             caller_config: str | None = None) -> dict[str, float]:
    """CPU seconds so far per group of a caller benchmark: accel-daemon
    itself (pid ``daemon``); its privsep helper(s) (of its configuration
    file ``config``: in-process compression); the tools the helper ran
    (reaped, or still running); glance-api's processes (``glance``, with
    what runs under them); and this process with everything else under it
    (cinder or nova, the qemu-img and gzip they run), with the caller's
    own privsep daemons (of its configuration file ``caller_config``),
    which daemonize too."""
    helpers_ = helpers(config)
    tools = [p for h in helpers_ for p in tree(h)[1:]]
    glance_all = [p for r in glance for p in tree(r)]
    taken = set([daemon] + helpers_ + tools + glance_all)
    mine = [p for p in tree(os.getpid()) if p not in taken]
    if caller_config:
        mine += [p for h in helpers(caller_config) for p in tree(h)
                 if p not in taken and p not in mine]
    return {
        'caller': cpu_of(mine),
        'daemon': own(daemon),
        'helper': sum(own(h) for h in helpers_),
        'tools': sum(reaped(h) for h in helpers_) + cpu_of(tools),
        'glance': cpu_of(glance_all),
    }


def allocated_in(directory: str) -> int:
    total = 0
    todo = [directory]
    while todo:
        d = todo.pop()
        with contextlib.suppress(OSError):
            with os.scandir(d) as it:
                for e in it:
                    with contextlib.suppress(OSError):
                        if e.is_dir(follow_symlinks=False):
                            todo.append(e.path)
                        else:
                            total += e.stat(
                                follow_symlinks=False).st_blocks * 512
    return total


class PeakBytes:
    """The peak of ``allocated_in(directory)`` while it runs (a context
    manager), sampled every ``interval`` seconds."""

    def __init__(self, directory: str, interval: float = 0.02) -> None:
        self.directory = directory
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, allocated_in(self.directory))
            if self._stop.wait(self.interval):
                break
        self.peak = max(self.peak, allocated_in(self.directory))

    def __enter__(self) -> PeakBytes:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def disk_written() -> int:
    """Bytes written so far to the host's whole disks (not partitions,
    loop or device-mapper devices)."""
    total = 0
    with open('/proc/diskstats') as f:
        for line in f:
            parts = line.split()
            name = parts[2]
            if name.startswith(('loop', 'ram', 'dm-', 'sr', 'zram')):
                continue
            if os.path.exists('/sys/block/%s' % name):
                total += int(parts[9]) * 512
    return total
