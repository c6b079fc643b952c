"""Path confinement and atomic outputs.

Every path a request names is checked here, and checked again inside the
privileged process (it calls the same functions): absolute, resolved with
realpath, under one of the allowed directories (or an allowed block device),
and never a symbolic link in its last component.  Files are opened with
O_NOFOLLOW and the opened descriptor is checked once more through
/proc/self/fd, which closes the window between the check and the open.
"""

from __future__ import annotations

import errno
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


def _confined(path: str, name: str, allowed_dirs: Iterable[str]) -> str:
    """realpath(name), which must be under an allowed directory; a link
    that leads out is a SymlinkEscape, anything else PathNotAllowed."""
    real = os.path.realpath(name)
    if not _under(real, allowed_dirs):
        if real != os.path.abspath(name):
            raise exception.SymlinkEscape(path=path)
        raise exception.PathNotAllowed(
            path=path, reason='outside the allowed directories')
    return real


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
    real = _confined(path, path, allowed_dirs)
    if not stat.S_ISREG(st.st_mode):
        raise exception.PathNotAllowed(path=path, reason='not a regular file')
    return real


def check_output(path: str, allowed_dirs: Iterable[str],
                 block_patterns: Iterable[str] = ()) -> str:
    """Validate an output that must not exist yet (or an allowed device)."""
    _basic_checks(path)
    if allowed_block_device(path, block_patterns):
        return os.path.realpath(path)
    real_parent = _confined(path, os.path.dirname(path), allowed_dirs)
    if not os.path.isdir(real_parent):
        raise exception.PathNotAllowed(path=path,
                                       reason='parent is not a directory')
    if os.path.lexists(path):
        raise exception.OutputExists(path=path)
    return os.path.join(real_parent, os.path.basename(path))


_FD_REF = '/proc/self/fd/'


def fd_ref(fd: int) -> str:
    """A name for an open descriptor that code wanting a path can open.

    Opening it reopens the descriptor's own inode, whatever its name in
    the directory has been renamed to since: the engine hands its drivers
    this instead of an output's temp name, which the directory's owner
    could replace (e.g. by a hard link to another file).
    """
    return '%s%d' % (_FD_REF, fd)


def open_ref(path: str, flags: int) -> int:
    """Open an engine-made output: an ``fd_ref`` as that inode, any other
    path without following a symlink in its last component."""
    flags |= os.O_CLOEXEC
    if not path.startswith(_FD_REF):
        flags |= os.O_NOFOLLOW
    return os.open(path, flags)


def fd_path(fd: int) -> str:
    return os.readlink('/proc/self/fd/%d' % fd)


def open_input(real: str, allowed_dirs: Iterable[str],
               block_patterns: Iterable[str] = ()) -> int:
    """Open a checked input without following links and re-check it."""
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        actual = fd_path(fd)
        if not (_under(actual, allowed_dirs)
                or _checked_device(fd, actual, block_patterns)):
            raise exception.SymlinkEscape(path=real)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _checked_device(fd: int, actual: str, patterns: Iterable[str]) -> bool:
    """A device input: check_input matched the name the caller gave (say
    /dev/mapper/vg-vol) against the patterns and returned its real path
    (/dev/dm-3), which the patterns need not name.  Accept the opened file
    when devices are allowed at all, it is a block device, and it lives in
    /dev (callers cannot create device nodes)."""
    patterns = tuple(patterns)
    return (bool(patterns) and stat.S_ISBLK(os.fstat(fd).st_mode)
            and actual.startswith('/dev/'))


def is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


class AtomicOutput:
    """Write to a temp name beside ``final``; fsync and publish on commit.

    The destination directory is opened once and must still be the checked
    real directory (``fd_path``); every later step is relative to that
    descriptor (``dir_fd``), so a parent directory renamed or replaced by a
    symlink after the check cannot move the output elsewhere.  The owner of
    an allowed directory can rename any entry in it: ``fd`` (the temp file,
    kept open) is what in-process writers and children (``/dev/fd/N``) must
    use, never ``path``, which is only a name.

    The temp file is created exclusively (O_EXCL|O_NOFOLLOW), private to
    its creator (mode 0600) while it is written, so the directory's owner
    cannot read a partial output, e.g. one a conversion is about to discard
    because the source changed under it.  On commit it takes its explicit
    final mode (the privsep daemon runs with umask 0) and the owner of the
    destination directory, so the unprivileged caller can read it.
    Publishing uses link(2)+unlink(2) so an output that appeared meanwhile is
    never clobbered.  On any failure the temp file is removed.
    """

    def __init__(self, final: str, mode: int = 0o640) -> None:
        self.final = final
        self.mode = mode
        self.directory = os.path.dirname(final)
        self.name = '%s%s.%s%s' % (TEMP_PREFIX, os.path.basename(final),
                                   secrets.token_hex(4), TEMP_SUFFIX)
        self.path = os.path.join(self.directory, self.name)
        self.committed = False
        self.fd = -1
        self.dir_fd = -1

    def __enter__(self) -> AtomicOutput:
        self.dir_fd = _open_dir(self.directory)
        flags = (os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | os.O_CLOEXEC)
        try:
            self.fd = os.open(self.name, flags, 0o600, dir_fd=self.dir_fd)
            os.fchmod(self.fd, 0o600)
        except BaseException:
            self._cleanup()
            raise
        return self

    def commit(self) -> None:
        if os.path.dirname(self.final) != self.directory:
            raise exception.PathNotAllowed(
                path=self.final,
                reason='not in the directory of its temp file')
        # Mode first: after the chown only CAP_FOWNER could change it, and
        # the privileged threads do not hold that capability.
        os.fchmod(self.fd, self.mode)
        if os.geteuid() == 0:
            dst = os.fstat(self.dir_fd)
            os.fchown(self.fd, dst.st_uid, dst.st_gid)
        os.fsync(self.fd)
        try:
            # Link the inode we wrote (through its descriptor), not whatever
            # the temp name points at now: the directory's owner may have
            # replaced it with a symlink, which link(2) would publish as is.
            os.link('/proc/self/fd/%d' % self.fd,
                    os.path.basename(self.final),
                    dst_dir_fd=self.dir_fd, follow_symlinks=True)
        except FileExistsError:
            raise exception.OutputExists(path=self.final)
        except FileNotFoundError:
            # The temp name was unlinked or renamed over: nlink is 0.
            raise exception.PathNotAllowed(
                path=self.final,
                reason='its temp file was replaced while being written')
        self.committed = True
        if self._name_is_ours():
            os.unlink(self.name, dir_fd=self.dir_fd)
        os.fsync(self.dir_fd)

    def _name_is_ours(self) -> bool:
        try:
            st = os.stat(self.name, dir_fd=self.dir_fd,
                         follow_symlinks=False)
        except FileNotFoundError:
            return False
        mine = os.fstat(self.fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def discard(self) -> None:
        if self.dir_fd < 0 or self.fd < 0 or not self._name_is_ours():
            return
        try:
            os.unlink(self.name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass

    def _cleanup(self) -> None:
        try:
            if not self.committed:
                self.discard()
        finally:
            for fd in (self.fd, self.dir_fd):
                if fd >= 0:
                    os.close(fd)
            self.fd = self.dir_fd = -1

    def __exit__(self, exc_type, exc, tb) -> None:
        self._cleanup()


def _open_dir(real_dir: str) -> int:
    """Open a checked real directory; refuse it if it moved meanwhile."""
    try:
        fd = os.open(real_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise exception.PathNotAllowed(path=real_dir, reason=e.strerror)
    if fd_path(fd) != real_dir:
        # A component was swapped for a symlink (or renamed) after the
        # check: the opened directory is not the one that was checked.
        os.close(fd)
        raise exception.SymlinkEscape(path=real_dir)
    return fd


def open_checked(real: str, flags: int = os.O_RDONLY) -> int:
    """Open ``real`` (a path check_* returned) and prove it is still there.

    O_NOFOLLOW refuses a last component swapped for a symlink, and the
    descriptor's own path must equal ``real``, so a parent directory
    swapped after the check is refused too.  Hand the descriptor, not the
    path, to whatever reads or writes the file.
    """
    try:
        fd = os.open(real, flags | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NONBLOCK)
    except FileNotFoundError:
        raise exception.InputNotFound(path=real)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise exception.SymlinkEscape(path=real)
        raise exception.PathNotAllowed(path=real, reason=e.strerror)
    try:
        mode = os.fstat(fd).st_mode
        if fd_path(fd) != real:
            raise exception.SymlinkEscape(path=real)
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise exception.PathNotAllowed(
                path=real, reason='not a regular file or block device')
        return fd
    except BaseException:
        os.close(fd)
        raise


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
