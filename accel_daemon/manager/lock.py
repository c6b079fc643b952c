# SPDX-License-Identifier: Apache-2.0
"""One accel-daemon per state directory: an exclusive lock file.

Two daemons sharing ``[accel_daemon] state_dir`` would share the task
journal, and the second one's recovery (``TaskManager.recover``) would mark
the first one's running tasks interrupted and delete their temp outputs.
The daemon therefore takes ``flock(LOCK_EX)`` on ``<state_dir>/LOCK_NAME``
before it opens the journal, and keeps the descriptor open for its life.

Why flock: the kernel drops the lock when the last descriptor of the open
file description is closed, which includes the process dying by SIGKILL, so
a stale file never blocks a restart and nothing has to be cleaned up.  The
file is never unlinked: unlinking a lock file lets a third process lock a
new inode while the second still holds the old one.  ``O_CLOEXEC`` keeps
the descriptor (and so the lock) out of the privsep helper and the tools it
starts, which could otherwise outlive us and hold the lock.  ``O_NOFOLLOW``
and the regular-file check refuse a symlink or FIFO planted in its place.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import stat
import time
from typing import Any

LOG = logging.getLogger(__name__)

LOCK_NAME = 'accel-daemon.lock'
_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_MAX_HOLDER_BYTES = 4096
# The holder writes its name just after taking the lock: a reader that
# comes in between sees an empty file for a moment.
_HOLDER_READ_WAIT = 1.0


class StateDirLocked(RuntimeError):
    """Another live process holds the state directory lock."""

    def __init__(self, state_dir: str, holder: dict[str, Any]) -> None:
        self.state_dir = state_dir
        self.holder = holder
        super().__init__('state_dir %s is in use by another accel-daemon (%s)'
                         % (state_dir, describe(holder)))


def describe(holder: dict[str, Any]) -> str:
    """'pid 12, server name x, host y' from whatever the holder wrote."""
    parts = ['%s %s' % (label, holder[key]) for key, label in
             (('pid', 'pid'), ('server', 'server name'), ('host', 'host'))
             if holder.get(key) not in (None, '')]
    return ', '.join(parts) or 'holder unknown'


def holder_info(server: str | None = None) -> dict[str, Any]:
    """What this process writes into the lock file it holds."""
    return {'pid': os.getpid(), 'host': socket.gethostname(),
            'server': server, 'started_at': time.time()}


class StateLock:
    """The held lock; ``release()`` (or process exit) gives it up."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: str,
                holder: dict[str, Any] | None = None) -> StateLock:
        """Lock ``state_dir`` (which must exist) or raise StateDirLocked."""
        path = os.path.join(state_dir, LOCK_NAME)
        fd = _open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _read_holder(fd)
            os.close(fd)
            raise StateDirLocked(state_dir, other) from None
        except BaseException:
            os.close(fd)
            raise
        lock = cls(path, fd)
        _write_holder(fd, holder if holder is not None else holder_info())
        return lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        # Closing the only descriptor drops the flock; the file stays.
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _write_holder(fd: int, holder: dict[str, Any]) -> None:
    data = (json.dumps(holder, sort_keys=True) + '\n').encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _open(path: str) -> int:
    try:
        fd = os.open(path, _FLAGS, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(e.errno, 'lock file is a symbolic link', path) \
                from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, 'lock file is not a regular file',
                          path)
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_holder(fd: int) -> dict[str, Any]:
    deadline = time.monotonic() + _HOLDER_READ_WAIT
    while True:
        raw = os.pread(fd, _MAX_HOLDER_BYTES, 0)
        if raw.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    try:
        holder = json.loads(raw.decode())
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}
