# SPDX-License-Identifier: Apache-2.0
"""Path confinement: which names a request may use, judged without opening.

The engine opens every file exactly once (``engine.files``) and judges the
*opened* file: its type with ``fstat`` and its location with the descriptor's
own path (``fd_path``).  This module holds what that needs and nothing that
opens a file:

* ``check_name``: the syntactic checks every path passes first (absolute, no
  NUL, no '..', encodable, within PATH_MAX/NAME_MAX), answering bad input with
  ``PathNotAllowed`` instead of an ``OSError`` or ``UnicodeEncodeError``;
* ``Confinement``: the allowed directories (resolved once) and block-device
  patterns, and the test of a resolved path against them;
* ``check_input``/``check_output``: name-level pre-checks for the RPC layer,
  which runs unprivileged and only wants to refuse a bad request early; they
  decide nothing for the privileged side, which opens and checks again;
* the names of temp files the engine creates where O_TMPFILE is unsupported.
"""

from __future__ import annotations

from collections.abc import Iterable
import fnmatch
import os
import re
import stat

from accel_daemon import exception

TEMP_PREFIX = '.accel-'
TEMP_SUFFIX = '.part'
PATH_MAX = 4096
NAME_MAX = 255


def check_name(path: object) -> str:
    """The checks every path passes before anything looks it up."""
    if not isinstance(path, str) or not path:
        raise exception.PathNotAllowed(path=path, reason='empty path')
    if '\0' in path:
        raise exception.PathNotAllowed(path=path, reason='NUL byte in path')
    try:
        encoded = os.fsencode(path)
    except UnicodeError:
        raise exception.PathNotAllowed(path=ascii(path),
                                       reason='not encodable as a file name')
    if len(encoded) >= PATH_MAX:
        raise exception.PathNotAllowed(path=path[:200] + '...',
                                       reason='longer than PATH_MAX')
    if not os.path.isabs(path):
        raise exception.PathNotAllowed(path=path,
                                       reason='path must be absolute')
    parts = path.split(os.sep)
    if '..' in parts:
        raise exception.PathNotAllowed(path=path, reason="'..' is not allowed")
    if any(len(os.fsencode(p)) > NAME_MAX for p in parts):
        raise exception.PathNotAllowed(
            path=path, reason='a component is longer than NAME_MAX')
    return path


def split_output(path: str) -> tuple[str, str]:
    """(directory, file name) of an output path; refuses names that are
    directories ('x/', '.', '..')."""
    directory, name = os.path.split(check_name(path))
    if name in ('', '.', '..'):
        raise exception.PathNotAllowed(path=path,
                                       reason='names a directory, not a file')
    return directory or os.sep, name


def fd_path(fd: int) -> str:
    """Where the file open as ``fd`` is now, as the kernel sees it."""
    return os.readlink('/proc/self/fd/%d' % fd)


class Confinement:
    """The allowed directories (resolved once) and block-device patterns."""

    def __init__(self, allowed_dirs: Iterable[str],
                 block_patterns: Iterable[str] = ()) -> None:
        dirs = tuple(allowed_dirs)
        # As configured (normalised) and resolved: a request may name a
        # file by either (engine.beneath).
        self.configured = tuple(os.path.normpath(os.path.abspath(d))
                                for d in dirs)
        self.dirs = tuple(os.path.realpath(d) for d in dirs)
        self.block_patterns = tuple(block_patterns)

    def contains(self, real: str) -> bool:
        """True if the resolved path ``real`` is inside an allowed dir."""
        return self.dir_of(real) is not None

    def dir_of(self, real: str) -> str | None:
        """The allowed directory holding the resolved path ``real``."""
        return next((d for d in self.dirs if real == d
                     or real.startswith(d.rstrip(os.sep) + os.sep)), None)

    def device_name(self, path: str) -> bool:
        """True if ``path`` is a name the block-device patterns allow."""
        return any(fnmatch.fnmatchcase(path, p) for p in self.block_patterns)

    def outside(self, path: str, real: str,
                name: str | None = None) -> exception.PathNotAllowed:
        """The error for ``path`` that resolved to ``real`` outside (named
        ``name`` in the error, by default ``path``)."""
        if real != os.path.abspath(path):
            return exception.SymlinkEscape(path=name or path)
        return exception.PathNotAllowed(
            path=name or path, reason='outside the allowed directories')


def _resolved(path: str) -> str:
    try:
        return os.path.realpath(path, strict=False)
    except (OSError, ValueError) as e:
        raise exception.PathNotAllowed(path=path, reason=str(e))


def hardlinks_protected(proc_root: str = '/proc') -> bool | None:
    """Whether the kernel refuses hard links to files a user does not own
    and cannot read and write (``fs.protected_hardlinks``); None when it
    cannot tell."""
    try:
        with open(os.path.join(proc_root, 'sys', 'fs',
                               'protected_hardlinks')) as f:
            return f.read().strip() != '0'
    except OSError:
        return None


def allowed_block_device(path: str, patterns: Iterable[str]) -> bool:
    """True if ``path`` matches a pattern and really is a block device."""
    if not any(fnmatch.fnmatchcase(path, p) for p in patterns):
        return False
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def check_input(path: str, allowed_dirs: Iterable[str],
                block_patterns: Iterable[str] = ()) -> str:
    """Pre-check an input by name (RPC layer); return its real path."""
    check_name(path)
    if allowed_block_device(path, block_patterns):
        return _resolved(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise exception.InputNotFound(path=path)
    except OSError as e:
        raise exception.PathNotAllowed(path=path, reason=e.strerror)
    if stat.S_ISLNK(st.st_mode):
        raise exception.SymlinkEscape(path=path)
    conf = Confinement(allowed_dirs)
    real = _resolved(path)
    if not conf.contains(real):
        raise conf.outside(path, real)
    if not stat.S_ISREG(st.st_mode):
        raise exception.PathNotAllowed(path=path, reason='not a regular file')
    return real


def check_output(path: str, allowed_dirs: Iterable[str],
                 block_patterns: Iterable[str] = (),
                 replace: bool = False) -> str:
    """Pre-check a new output (or an allowed device) by name (RPC layer);
    with ``replace``, an existing one must be a regular file with one
    link (the privileged side judges it again, through its descriptors)."""
    check_name(path)
    if allowed_block_device(path, block_patterns):
        if replace:
            raise exception.InvalidRequest(
                reason='replace is for file outputs, not block devices')
        return _resolved(path)
    directory, name = split_output(path)
    conf = Confinement(allowed_dirs)
    real_parent = _resolved(directory)
    if not conf.contains(real_parent):
        raise conf.outside(directory, real_parent)
    if not os.path.isdir(real_parent):
        raise exception.PathNotAllowed(path=path,
                                       reason='parent is not a directory')
    if replace:
        _check_replaceable(path)
    elif os.path.lexists(path):
        raise exception.OutputExists(path=path)
    return os.path.join(real_parent, name)


def _check_replaceable(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise exception.PathNotAllowed(path=path, reason=e.strerror)
    if stat.S_ISLNK(st.st_mode):
        raise exception.SymlinkEscape(path=path)
    if not stat.S_ISREG(st.st_mode):
        raise exception.PathNotAllowed(
            path=path, reason='the existing output is not a regular file')
    if st.st_nlink > 1:
        raise exception.PathNotAllowed(
            path=path, reason='the existing output has %d hard links'
                              % st.st_nlink)


def check_output_dir(path: str, allowed_dirs: Iterable[str]) -> str:
    """Confine where an output goes, whether or not it exists yet."""
    directory, name = split_output(path)
    conf = Confinement(allowed_dirs)
    real_parent = _resolved(directory)
    if not conf.contains(real_parent):
        raise exception.PathNotAllowed(
            path=path, reason='outside the allowed directories')
    return os.path.join(real_parent, name)


def temp_name(final_name: str, token: str) -> str:
    """The name of a named temp file for the output ``final_name``."""
    return '%s%s.%s%s' % (TEMP_PREFIX, final_name, token, TEMP_SUFFIX)


def temp_files_for(final: str) -> list[str]:
    """The named temp files the engine may have left for ``final``."""
    pattern = re.compile(r'%s%s\.[0-9a-f]{8}%s\Z' % (
        re.escape(TEMP_PREFIX), re.escape(os.path.basename(final)),
        re.escape(TEMP_SUFFIX)))
    directory = os.path.dirname(final)
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(os.path.join(directory, n) for n in names
                  if pattern.match(n))


def stray_temp_files(directory: str) -> list[str]:
    """Temp files left in ``directory`` (tests and journal recovery)."""
    return sorted(n for n in os.listdir(directory)
                  if n.startswith(TEMP_PREFIX) and n.endswith(TEMP_SUFFIX))
