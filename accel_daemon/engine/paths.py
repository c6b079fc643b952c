"""Path confinement and atomic outputs.

Every path a request names is checked here, and checked again inside the
privileged process (it calls the same functions): absolute, resolved with
realpath, under one of the allowed directories (or an allowed block device),
and never a symbolic link in its last component.  Files are opened with
O_NOFOLLOW and the opened descriptor is checked once more through
/proc/self/fd, which closes the window between the check and the open.
"""

from __future__ import annotations

import fnmatch
import os
import re
import secrets
import stat
from collections.abc import Iterable

from accel_daemon import exception

TEMP_PREFIX = '.accel-'
TEMP_SUFFIX = '.part'


def _under(real: str, dirs: Iterable[str]) -> bool:
    for d in dirs:
        root = os.path.realpath(d)
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def _basic_checks(path: str) -> None:
    if not isinstance(path, str) or not path:
        raise exception.PathNotAllowed(path=path, reason='empty path')
    if '\0' in path:
        raise exception.PathNotAllowed(path=path, reason='NUL byte in path')
    if not os.path.isabs(path):
        raise exception.PathNotAllowed(path=path,
                                       reason='path must be absolute')
    if '..' in path.split(os.sep):
        raise exception.PathNotAllowed(path=path, reason="'..' is not allowed")


def allowed_block_device(path: str, patterns: Iterable[str]) -> bool:
    """True if ``path`` matches a pattern and really is a block device."""
    if not any(fnmatch.fnmatchcase(path, p) for p in patterns):
        return False
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def check_input(path: str, allowed_dirs: Iterable[str],
                block_patterns: Iterable[str] = ()) -> str:
    """Validate an existing input; return its real path."""
    _basic_checks(path)
    if allowed_block_device(path, block_patterns):
        return os.path.realpath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise exception.InputNotFound(path=path)
    if stat.S_ISLNK(st.st_mode):
        raise exception.SymlinkEscape(path=path)
    real = os.path.realpath(path)
    if not _under(real, allowed_dirs):
        if real != os.path.abspath(path):
            raise exception.SymlinkEscape(path=path)
        raise exception.PathNotAllowed(
            path=path, reason='outside the allowed directories')
    if not stat.S_ISREG(st.st_mode):
        raise exception.PathNotAllowed(path=path, reason='not a regular file')
    return real


def check_output(path: str, allowed_dirs: Iterable[str],
                 block_patterns: Iterable[str] = ()) -> str:
    """Validate an output that must not exist yet (or an allowed device)."""
    _basic_checks(path)
    if allowed_block_device(path, block_patterns):
        return os.path.realpath(path)
    parent = os.path.dirname(path)
    real_parent = os.path.realpath(parent)
    if not _under(real_parent, allowed_dirs):
        if real_parent != os.path.abspath(parent):
            raise exception.SymlinkEscape(path=path)
        raise exception.PathNotAllowed(
            path=path, reason='outside the allowed directories')
    if not os.path.isdir(real_parent):
        raise exception.PathNotAllowed(path=path,
                                       reason='parent is not a directory')
    if os.path.lexists(path):
        raise exception.OutputExists(path=path)
    return os.path.join(real_parent, os.path.basename(path))


def fd_path(fd: int) -> str:
    return os.readlink('/proc/self/fd/%d' % fd)


def open_input(real: str, allowed_dirs: Iterable[str],
               block_patterns: Iterable[str] = ()) -> int:
    """Open a checked input without following links and re-check it."""
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        actual = fd_path(fd)
        if not (_under(actual, allowed_dirs)
                or allowed_block_device(real, block_patterns)):
            raise exception.SymlinkEscape(path=real)
        return fd
    except BaseException:
        os.close(fd)
        raise


def is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


class AtomicOutput:
    """Write to a temp name beside ``final``; fsync and publish on commit.

    The temp file is created exclusively (O_EXCL|O_NOFOLLOW) with an explicit
    mode (the privsep daemon runs with umask 0) and takes the owner of the
    destination directory, so the unprivileged caller can read its output.
    Publishing uses link(2)+unlink(2) so an output that appeared meanwhile is
    never clobbered.  On any failure the temp file is removed.
    """

    def __init__(self, final: str, mode: int = 0o640) -> None:
        self.final = final
        self.mode = mode
        self.directory = os.path.dirname(final)
        name = '%s%s.%s%s' % (TEMP_PREFIX, os.path.basename(final),
                              secrets.token_hex(4), TEMP_SUFFIX)
        self.path = os.path.join(self.directory, name)
        self.committed = False

    def __enter__(self) -> AtomicOutput:
        flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | os.O_CLOEXEC)
        fd = os.open(self.path, flags, self.mode)
        try:
            os.fchmod(fd, self.mode)
            dst = os.stat(self.directory)
            if os.geteuid() == 0:
                os.fchown(fd, dst.st_uid, dst.st_gid)
        finally:
            os.close(fd)
        return self

    def commit(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(self.path, self.final)
        except FileExistsError:
            raise exception.OutputExists(path=self.final)
        os.unlink(self.path)
        self.committed = True
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def discard(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.discard()


def check_output_dir(path: str, allowed_dirs: Iterable[str]) -> str:
    """Validate where an output goes, whether or not it exists yet."""
    _basic_checks(path)
    real_parent = os.path.realpath(os.path.dirname(path))
    if not _under(real_parent, allowed_dirs):
        raise exception.PathNotAllowed(
            path=path, reason='outside the allowed directories')
    return os.path.join(real_parent, os.path.basename(path))


def temp_files_for(final: str) -> list[str]:
    """The temp files AtomicOutput may have left for ``final``."""
    pattern = re.compile(r'%s%s\.[0-9a-f]{8}%s\Z' % (
        re.escape(TEMP_PREFIX), re.escape(os.path.basename(final)),
        re.escape(TEMP_SUFFIX)))
    directory = os.path.dirname(final)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(directory, n) for n in names
                  if pattern.match(n))


def stray_temp_files(directory: str) -> list[str]:
    """Temp files left in ``directory`` (tests and journal recovery)."""
    return sorted(n for n in os.listdir(directory)
                  if n.startswith(TEMP_PREFIX) and n.endswith(TEMP_SUFFIX))
