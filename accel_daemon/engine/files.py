# SPDX-License-Identifier: Apache-2.0
"""Open once: every file the engine reads or writes, opened and judged once.

The owner of an allowed directory (cinder, nova) can swap any name in it at
any moment, with symbolic links, hard links, FIFOs or
``renameat2(RENAME_EXCHANGE)``.  So a name is looked up exactly once, here,
and everything after that uses the descriptor: inspection, qemu-img
(``/dev/fd/N``), the compressors (stdin/stdout or in-process), hashing and
publishing (``linkat`` of the descriptor).

* ``open_source``: looked up beneath its allowed directory only
  (``engine.beneath``: a parent directory swapped for a symlink, a magic
  link or another mount fail in the kernel's lookup, so nothing outside is
  ever opened, and a name outside gets the same answer whether it exists
  or not), with ``O_NOFOLLOW|O_NONBLOCK`` (a symlink in the last component
  fails, a FIFO cannot block the open), then ``fstat``: a regular file, or
  a block device whose name the operator's patterns allow; then the
  descriptor's own path must be inside the allowed directories (kept as a
  second check).
* ``Output``: the destination directory is opened once and judged the same
  way; the new file is created in it unnamed (``O_TMPFILE``, so a crash
  leaves nothing and nobody can reach it by name), written through its
  descriptor and published with ``linkat`` under its final name, which must
  still be free.
* Where the directory's file system has no O_TMPFILE (NFS, CIFS, some
  FUSE), the output is written unnamed in the daemon's private staging
  directory (``[accel_daemon] staging_dir``: root's, 0700, on a local file
  system) and copied in only at ``commit()``, when it is complete and
  accepted: into a private (root, 0600, ``O_EXCL|O_NOFOLLOW``) temp name
  in the caller's directory, published from there as above.  So nothing
  unfinished or refused is ever named in a caller's directory, and a
  caller cannot write into an output while it is made.  Without a staging
  directory such a directory is refused.  Journal recovery removes a temp
  name a crash left during the copy.
* ``Output(replace=True)``: an existing output is replaced atomically.  The
  new file is written the same way; to publish it, its descriptor is linked
  to a fresh private temp name in the same directory and ``rename(2)``-d
  over the final name (both through the directory's descriptor).  The name
  being replaced must be a regular file with one link: what ``lstat``
  through the directory's descriptor shows just before the rename (and at
  the open, to fail early) is judged, never a name looked up again.
* An output that is not published is truncated through its descriptor
  before its names are removed: a name the directory's owner gave it
  meanwhile (a temp name renamed away) keeps an empty file, never a refused
  or unfinished output.  And while an output is open, ``open_source``
  refuses its inode: a second request cannot read a file this process is
  writing, whatever name it finds it under.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import stat
import threading

from accel_daemon.engine import beneath
from accel_daemon.engine import devices
from accel_daemon.engine import directio
from accel_daemon.engine import paths
from accel_daemon.engine.progress import Progress
from accel_daemon import exception

LOG = logging.getLogger(__name__)

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Errors of open(2) that mean "this name is not acceptable", as opposed to
# our own failure (EMFILE, EIO...).
# Errors of open(O_TMPFILE) that mean "this file system has none".
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)
_NAME_ERRORS = {errno.ENOTDIR, errno.ENAMETOOLONG, errno.EACCES, errno.EPERM,
                errno.EINVAL, errno.ENXIO, errno.EISDIR, errno.EXDEV,
                errno.ENODEV, errno.EROFS, errno.ETXTBSY, errno.EOPNOTSUPP}


def open_error(path: str, e: OSError) -> exception.AccelError:
    if e.errno == errno.ENOENT:
        return exception.InputNotFound(path=path)
    if e.errno == errno.ELOOP:
        return exception.SymlinkEscape(path=path)
    if e.errno == errno.ENOSPC:
        return exception.NoSpace(path=path)
    if e.errno in _NAME_ERRORS:
        return exception.PathNotAllowed(path=path, reason=e.strerror)
    return exception.PathNotAllowed(path=path, reason=str(e))


def _clear_nonblock(fd: int) -> None:
    # O_NONBLOCK was only for the open; children inherit the description.
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)


class Opened:
    """An opened, checked file: use ``fd``; ``name`` is for messages only."""

    def __init__(self, fd: int, name: str, real: str,
                 st: os.stat_result, owned: bool = True) -> None:
        self.fd = fd
        self.name = name
        self.real = real
        self.st = st
        self.owned = owned      # close() closes fd

    @property
    def is_device(self) -> bool:
        return stat.S_ISBLK(self.st.st_mode)

    @property
    def size(self) -> int:
        if self.is_device:
            return os.lseek(self.fd, 0, os.SEEK_END)
        return os.fstat(self.fd).st_size

    def identity(self) -> tuple | None:
        """What changes when the file is written (None for devices, whose
        node times do not follow their data)."""
        if self.is_device:
            return None
        st = os.fstat(self.fd)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                st.st_ctime_ns)

    def close(self) -> None:
        if self.fd >= 0 and self.owned:
            os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_device(conf: paths.Confinement, path: str, flags: int) -> Opened:
    """Open a device by a name the patterns allow.  /dev is root's: its
    symbolic links (/dev/disk/by-path, /dev/mapper, LVM) are followed.

    A device is claimed exclusively, for reading as well as for writing
    (``O_EXCL`` without ``O_CREAT``: the kernel refuses with EBUSY while
    the device is mounted, is swap, a member of a device-mapper or md
    device, or claimed by another exclusive opener), and then refused when
    anybody else holds it in a way the claim does not see
    (``engine.devices.busy_reason``: holders, mounts, a guest's lock).
    So a pattern broad enough to name a disk in use gets it neither
    overwritten nor read: the host's root LV, a dm-crypt plaintext
    mapping, a running guest's volume."""
    flags |= os.O_EXCL
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise exception.PathNotAllowed(
                path=path, reason='block device in use (mounted, held by '
                                  'another device or opened exclusively)')
        raise open_error(path, e)
    try:
        st = os.fstat(fd)
        real = paths.fd_path(fd)
        if not stat.S_ISBLK(st.st_mode) or not real.startswith('/dev/'):
            raise exception.PathNotAllowed(
                path=path, reason='not a block device in /dev')
        busy = devices.busy_reason(st)
        if busy:
            raise exception.PathNotAllowed(
                path=path, reason='block device in use (%s)' % busy)
        _clear_nonblock(fd)
        return Opened(fd, path, real, st)
    except BaseException:
        os.close(fd)
        raise


# (st_dev, st_ino) of every output open in this process (Output).
_writing: set[tuple[int, int]] = set()
_writing_lock = threading.Lock()


def _being_written(st: os.stat_result) -> bool:
    with _writing_lock:
        return (st.st_dev, st.st_ino) in _writing


def open_source(conf: paths.Confinement, path: str) -> Opened:
    """Open an input once and judge the opened file (see the module doc)."""
    paths.check_name(path)
    if conf.device_name(path):
        return _open_device(conf, path, os.O_RDONLY)
    try:
        fd = beneath.open_beneath(conf, path, _READ)
    except OSError as e:
        raise open_error(path, e)
    try:
        st = os.fstat(fd)
        if stat.S_ISBLK(st.st_mode):
            raise exception.PathNotAllowed(
                path=path, reason='block device not in allowed_block_devices')
        if not stat.S_ISREG(st.st_mode):
            raise exception.PathNotAllowed(path=path,
                                           reason='not a regular file')
        if _being_written(st):
            raise exception.PathNotAllowed(
                path=path, reason='it is an output being written')
        real = paths.fd_path(fd)
        if not conf.contains(real):
            raise conf.outside(path, real)
        _check_links(conf, path, real, st)
        _clear_nonblock(fd)
        return Opened(fd, path, real, st)
    except BaseException:
        os.close(fd)
        raise


def _check_links(conf: paths.Confinement, path: str, real: str,
                 st: os.stat_result) -> None:
    """Refuse a file with other hard links that the owner of its allowed
    directory does not own: a link to a file of root's or another
    service's, made where ``fs.protected_hardlinks`` is off (the daemon
    warns at start), would otherwise be read with the helper's rights."""
    if st.st_nlink < 2:
        return
    directory = conf.dir_of(real)
    assert directory is not None  # nosec B101: open_source checked it
    owner = os.lstat(directory).st_uid
    if st.st_uid != owner:
        raise exception.PathNotAllowed(
            path=path, reason='a hard link to a file the owner of its '
                              'directory does not own')


def _open_dir(conf: paths.Confinement, directory: str, path: str) -> int:
    try:
        fd = beneath.open_beneath(conf, directory,
                                  os.O_RDONLY | os.O_DIRECTORY)
    except exception.PathNotAllowed as e:
        if isinstance(e, exception.SymlinkEscape):
            raise exception.SymlinkEscape(path=path)
        raise conf.outside(directory, directory, name=path)
    except FileNotFoundError:
        raise exception.PathNotAllowed(
            path=path, reason='its directory does not exist')
    except OSError as e:
        raise open_error(path, e)
    try:
        real = paths.fd_path(fd)
        if not conf.contains(real):
            raise conf.outside(directory, real, name=path)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_staging(directory: str) -> int:
    """The staging directory, made on first use: a directory of this
    process's user that nobody else may enter (0700 or less), reached
    without following a symbolic link in its last component."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(directory, flags)
    except FileNotFoundError:
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        fd = os.open(directory, flags)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise exception.InternalError(
            reason='[accel_daemon] staging_dir %s must belong to uid %d and '
                   'be closed to everyone else (mode 0700), not uid %d mode '
                   '%04o' % (directory, os.geteuid(), st.st_uid,
                             stat.S_IMODE(st.st_mode)))
    return fd


def staging_tmpfile(directory: str) -> int:
    """A new unnamed private file (0600) in the staging directory."""
    try:
        dir_fd = _open_staging(directory)
    except OSError as e:
        raise exception.InternalError(
            reason='[accel_daemon] staging_dir %s: %s' % (directory, e))
    try:
        return os.open('.', os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600,
                       dir_fd=dir_fd)
    except OSError as e:
        raise exception.InternalError(
            reason='[accel_daemon] staging_dir %s cannot hold an unnamed '
                   'file (O_TMPFILE): %s' % (directory, e))
    finally:
        os.close(dir_fd)


class Output:
    """A new file (or an allowed device) written through one descriptor.

    Use as a context manager; ``commit()`` publishes, leaving without it
    discards.  ``fd`` is what writers and children (``/dev/fd/N``) use.
    The file is private (root, 0600) until ``commit()`` gives it its final
    mode and the owner of its directory, so the caller can read it.
    """

    # False where O_TMPFILE must not be tried in the caller's directory
    # (tests of staging).
    use_tmpfile = True

    def __init__(self, conf: paths.Confinement, path: str,
                 mode: int = 0o640, devices: bool = False,
                 replace: bool = False,
                 staging_dir: str | None = None) -> None:
        self.conf = conf
        self.path = path
        self.mode = mode
        self.devices = devices
        self.replace = replace
        # Where to write it when its directory has no O_TMPFILE.
        self.staging_dir = staging_dir
        # Written in staging_dir, copied into its directory at commit().
        self.staged = False
        self.fd = -1
        self.dir_fd = -1
        self.name = ''
        self.temp_name: str | None = None    # the copy-in of a staged file
        self.publish_name: str | None = None  # replace: renamed over name
        self.device: Opened | None = None
        self.committed = False
        self._parent: Output | None = None
        self._key: tuple[int, int] | None = None

    @property
    def is_device(self) -> bool:
        return self.device is not None

    def __enter__(self) -> Output:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        paths.check_name(self.path)
        if self.devices and self.conf.device_name(self.path):
            if self.replace:
                # A device is written in place; there is no name to replace.
                raise exception.InvalidRequest(
                    reason='replace is for file outputs, not block devices')
            self.device = _open_device(self.conf, self.path, os.O_RDWR)
            self.fd = self.device.fd
            return
        if self.conf.device_name(self.path):
            raise exception.InvalidRequest(
                reason='this operation writes files, not block devices')
        directory, self.name = paths.split_output(self.path)
        if self._parent is not None:
            # The directory the first output opened (and judged): a name
            # is looked up once, also when two files go there.
            self.dir_fd = os.dup(self._parent.dir_fd)
        else:
            self.dir_fd = _open_dir(self.conf, directory, self.path)
        if self.replace:
            # Checked again just before the rename; this only fails early.
            self._check_replaceable()
        elif self._name_taken():
            raise exception.OutputExists(path=self.path)
        self.fd = self._create()
        self._track()

    def _lstat_name(self) -> os.stat_result | None:
        """lstat of the final name through the directory's descriptor."""
        try:
            return os.stat(self.name, dir_fd=self.dir_fd,
                           follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise open_error(self.path, e)

    def _name_taken(self) -> bool:
        return self._lstat_name() is not None

    def _check_replaceable(self) -> None:
        """What is at the final name may be replaced: nothing, or a regular
        file with a single link (refused: a symbolic link, a FIFO, a
        directory, a device, a socket, a file with other hard links)."""
        st = self._lstat_name()
        if st is None:
            return
        if stat.S_ISLNK(st.st_mode):
            raise exception.SymlinkEscape(path=self.path)
        if not stat.S_ISREG(st.st_mode):
            raise exception.PathNotAllowed(
                path=self.path, reason='the existing output is not a '
                                       'regular file')
        if st.st_nlink > 1:
            raise exception.PathNotAllowed(
                path=self.path, reason='the existing output has %d hard '
                                       'links' % st.st_nlink)

    def _create(self) -> int:
        if self.use_tmpfile:
            try:
                return os.open('.', os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC,
                               0o600, dir_fd=self.dir_fd)
            except OSError as e:
                if e.errno not in _NO_TMPFILE:
                    raise open_error(self.path, e)
        # No O_TMPFILE here (some network file systems): never a name in
        # the caller's directory while it is made.
        if not self.staging_dir:
            raise exception.PathNotAllowed(
                path=self.path,
                reason='its file system cannot hold an unnamed file '
                       '(O_TMPFILE) and [accel_daemon] staging_dir is not '
                       'set')
        fd = staging_tmpfile(self.staging_dir)
        self.staged = True
        return fd

    def _create_named(self) -> None:
        """Make ``fd`` a fresh private file under a new temp name in the
        caller's directory (root, 0600, never an existing name), kept as
        ``temp_name``; it is refused as an input from the moment it has a
        name (``open_source`` judges under the same lock)."""
        flags = (os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | os.O_CLOEXEC)
        for _ in range(8):
            name = paths.temp_name(self.name, secrets.token_hex(4))
            with _writing_lock:
                try:
                    self.fd = os.open(name, flags, 0o600,
                                      dir_fd=self.dir_fd)
                except FileExistsError:
                    continue
                except OSError as e:
                    raise open_error(self.path, e)
                self.temp_name = name
                self._track_locked()
            os.fchmod(self.fd, 0o600)
            return
        raise exception.PathNotAllowed(
            path=self.path, reason='no free temp name to copy it in')

    def _copy_in(self, progress: Progress | None) -> None:
        """Copy the staged file, complete and accepted, into a private temp
        name of the caller's directory; that file is then the output (its
        descriptor is ``fd``, the staged one is closed)."""
        staged, self.fd = self.fd, -1
        self.staged = False
        try:
            self._create_named()
            check = None if progress is None else \
                (lambda n: progress.check())
            directio.copy_extents(staged, self.fd,
                                  os.fstat(staged).st_size, each=check)
        finally:
            os.close(staged)

    def _track(self) -> None:
        """Refuse the inode at ``fd`` as an input while it is ours."""
        with _writing_lock:
            self._track_locked()

    def _track_locked(self) -> None:
        st = os.fstat(self.fd)
        key = (st.st_dev, st.st_ino)
        if self._key is not None:
            _writing.discard(self._key)
        _writing.add(key)
        self._key = key

    def sibling(self) -> Output:
        """Another new file for the same path, in the directory this one
        opened (a scratch stage, or the final output beside a stage)."""
        if self.dir_fd < 0:
            raise ValueError('sibling() of an output that is not open')
        other = Output(self.conf, self.path, self.mode,
                       replace=self.replace, staging_dir=self.staging_dir)
        other.use_tmpfile = self.use_tmpfile
        other._parent = self
        return other

    def as_source(self, name: str) -> Opened:
        """The file written so far, to be read (it stays ours to close)."""
        return Opened(self.fd, name, self.path, os.fstat(self.fd),
                      owned=False)

    def lend(self, uid: int, gid: int) -> None:
        """Let an unprivileged tool (uid) reopen ``/dev/fd/N`` to write it:
        the file is unnamed, so nobody else can reach it meanwhile."""
        if not self.is_device and os.geteuid() == 0:
            os.fchown(self.fd, uid, gid)

    def commit(self, progress: Progress | None = None) -> None:
        """fsync and publish under the final name (never over a file, but
        with ``replace``, see ``_replace``); a staged output is copied in
        first (cancelled through ``progress``)."""
        if self.is_device:
            os.fsync(self.fd)
            self.committed = True
            return
        if self.staged:
            self._copy_in(progress)
        if os.geteuid() == 0:
            # Back to us first (a tool may have owned it): fchmod needs the
            # owner, and the privileged threads hold no CAP_FOWNER.
            os.fchown(self.fd, 0, 0)
        os.fchmod(self.fd, self.mode)
        if os.geteuid() == 0:
            dst = os.fstat(self.dir_fd)
            os.fchown(self.fd, dst.st_uid, dst.st_gid)
        os.fsync(self.fd)
        if self.replace:
            self._replace()
            return
        try:
            self._link_as(self.name)
        except FileExistsError:
            raise exception.OutputExists(path=self.path)
        self.committed = True
        self._remove_temp_name()
        os.fsync(self.dir_fd)

    def _link_as(self, name: str) -> None:
        """Give the inode we wrote the name ``name`` in our directory,
        through its descriptor: no name anybody else could have replaced is
        involved.  FileExistsError when ``name`` is taken."""
        try:
            os.link('/proc/self/fd/%d' % self.fd, name,
                    dst_dir_fd=self.dir_fd, follow_symlinks=True)
        except FileExistsError:
            raise
        except FileNotFoundError:
            # A named temp file whose name was unlinked: nlink is 0.
            raise exception.PathNotAllowed(
                path=self.path,
                reason='its temp file was removed while being written')
        except OSError as e:
            raise open_error(self.path, e)

    def _replace(self) -> None:
        """Publish over whatever regular file holds the final name.

        The inode we wrote is linked, through its descriptor, to a fresh
        private temp name (``linkat`` never replaces: the name is ours when
        it is made), the final name is judged by ``lstat`` through the
        directory's descriptor, and the temp name is renamed over it.

        The directory's owner can swap either name between those steps.
        ``rename(2)`` never follows a symbolic link, in either name, and
        only changes entries of this one directory (already judged): a
        name swapped after the check (for a symbolic link to a host file,
        a hard link, a FIFO) is replaced as a name, its target untouched,
        and a temp name swapped for their own file publishes that file
        instead of ours.  Either way they only lose the caller's output,
        which they could delete anyway; nothing outside changes.
        """
        for _ in range(8):
            name = paths.temp_name(self.name, secrets.token_hex(4))
            try:
                self._link_as(name)
            except FileExistsError:
                continue
            self.publish_name = name
            break
        else:
            raise exception.PathNotAllowed(
                path=self.path, reason='no free temp name to publish it')
        self._check_replaceable()
        try:
            os.rename(name, self.name,
                      src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except FileNotFoundError:
            raise exception.PathNotAllowed(
                path=self.path,
                reason='its temp name was removed while being published')
        except OSError as e:
            # EISDIR/ENOTEMPTY: a directory took the name after the check.
            if e.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise exception.PathNotAllowed(
                    path=self.path, reason='the existing output is not a '
                                           'regular file')
            raise open_error(self.path, e)
        self.publish_name = None
        self.committed = True
        self._remove_temp_name()
        os.fsync(self.dir_fd)

    def _discard(self) -> None:
        """Leave nothing of an output that is not published: emptied
        through its descriptor if any name still leads to it (one its
        directory's owner made by renaming a temp name, too), then our
        own temp names removed."""
        if self.device is None and self.fd >= 0 and \
                os.fstat(self.fd).st_nlink > 0:
            os.ftruncate(self.fd, 0)
        self._remove_temp_name()

    def _remove_temp_name(self) -> None:
        """Unlink our temp names, if they still name our file."""
        for attr in ('temp_name', 'publish_name'):
            name = getattr(self, attr)
            if name is None or self.dir_fd < 0 or self.fd < 0:
                continue
            try:
                st = os.stat(name, dir_fd=self.dir_fd,
                             follow_symlinks=False)
                mine = os.fstat(self.fd)
                if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                    os.unlink(name, dir_fd=self.dir_fd)
            except FileNotFoundError:
                pass
            setattr(self, attr, None)

    def close(self) -> None:
        try:
            if not self.committed:
                self._discard()
        finally:
            if self._key is not None:
                with _writing_lock:
                    _writing.discard(self._key)
                self._key = None
            if self.device is not None:
                self.device.close()
            elif self.fd >= 0:
                os.close(self.fd)
            if self.dir_fd >= 0:
                os.close(self.dir_fd)
            self.fd = self.dir_fd = -1
