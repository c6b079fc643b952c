# SPDX-License-Identifier: Apache-2.0
"""Opens that never leave the allowed tree.

A name inside an allowed directory is looked up *beneath* that directory
(``openat2(2)`` with ``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS |
RESOLVE_NO_XDEV``): a parent directory its owner swapped for a symbolic
link to ``/dev`` or ``/etc``, a ``..`` through a link, a ``/proc`` magic
link or another mount all fail inside the kernel's lookup, before any file
is opened.  Opening a node has effects of its own (a watchdog device arms
on open, a FIFO wakes its writer, a tape rewinds), and the error of an open
tells whether a name exists; neither may reach outside the allowed
directories.

The allowed directory itself is opened by its configured, resolved name
with no symbolic link anywhere on the way (``RESOLVE_NO_SYMLINKS``): its
owner may rename it and put a link in its place.

Python 3.11 has no ``os.openat2``; the syscall goes through ctypes (number
437 on x86-64 and arm64).  A kernel without it (before 5.6) falls back to
``openat`` with the same flags; ``engine.files`` then still judges the
descriptor's own path after the open.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os

from accel_daemon.engine import paths
from accel_daemon import exception

_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
BENEATH = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
AT_FDCWD = -100

_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [('flags', ctypes.c_uint64), ('mode', ctypes.c_uint64),
                ('resolve', ctypes.c_uint64)]


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether this kernel has openat2(2)."""
    how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, 0)
    fd = _libc.syscall(_OPENAT2, AT_FDCWD, b'/', ctypes.byref(how),
                       ctypes.sizeof(how))
    if fd < 0:
        return ctypes.get_errno() != errno.ENOSYS
    os.close(fd)
    return True


def openat2(dir_fd: int, name: str, flags: int, resolve: int,
            mode: int = 0) -> int:
    """``openat2(dir_fd, name, {flags, mode, resolve})``; OSError on
    failure.  Without openat2, ``openat`` with ``flags`` alone."""
    if not available():
        return os.open(name, flags, mode,
                       dir_fd=None if dir_fd == AT_FDCWD else dir_fd)
    creating = flags & (os.O_CREAT | os.O_TMPFILE)
    how = _OpenHow(flags, mode if creating else 0, resolve)
    fd = _libc.syscall(_OPENAT2, ctypes.c_int(dir_fd), os.fsencode(name),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), name)
    return int(fd)


def split(conf: paths.Confinement, path: str) -> tuple[str, str]:
    """(allowed directory, path relative to it) of ``path``, by name alone;
    ``PathNotAllowed`` when it names no place inside one."""
    norm = os.path.normpath(path)
    # A trailing '/' asks for a directory (ENOTDIR on a file): kept.
    slash = os.sep if path.endswith(os.sep) else ''
    for configured, real in zip(conf.configured, conf.dirs):
        for base in {configured, real}:
            if norm == base:
                return real, '.' + slash
            prefix = base.rstrip(os.sep) + os.sep
            if norm.startswith(prefix):
                return real, norm[len(prefix):] + slash
    # The same answer for every name outside, whether it exists or not
    # (nothing was looked up), devices the patterns do not name included.
    raise exception.PathNotAllowed(
        path=path, reason='outside the allowed directories and '
                          'allowed_block_devices')


def open_dir(real: str) -> int:
    """An allowed directory, by its resolved name, through no symbolic
    link (``O_PATH``: a handle for lookups beneath it)."""
    try:
        return openat2(AT_FDCWD, real,
                       os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                       RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
    except OSError as e:
        raise exception.PathNotAllowed(
            path=real, reason='the allowed directory cannot be opened: %s'
            % e.strerror)


def open_beneath(conf: paths.Confinement, path: str, flags: int,
                 mode: int = 0) -> int:
    """Open ``path`` with ``flags``, looked up beneath its allowed
    directory only.  A lookup that would leave it raises ``SymlinkEscape``
    (nothing is opened); other errors are the OSError of the open."""
    real, rel = split(conf, path)
    base = open_dir(real)
    try:
        return openat2(base, rel, flags | os.O_CLOEXEC, BENEATH, mode)
    except OSError as e:
        if e.errno == errno.EXDEV:
            # A link or '..' that leads out, a magic link, another mount.
            raise exception.SymlinkEscape(path=path)
        raise
    finally:
        os.close(base)
