# SPDX-License-Identifier: Apache-2.0
"""Landlock: the tools can open nothing but what they were handed.

The caller owns its images and can change their bytes at any moment, with
no trace in their times (stores through a shared ``mmap`` into a page that
is already dirty move neither mtime nor ctime).  So an image inspected as a
plain qcow2 may name a backing file, an external data file or a VMDK
extent by the time ``qemu-img`` parses it.  Instead of trusting that
nothing changed, every tool runs in a Landlock domain (``confine``, called
in the child between fork and exec) in which it may:

* read and execute beneath the system's program directories
  (``SYSTEM_PATHS``: /usr and the /lib, /bin links of a merged /usr,
  ``/etc/ld.so.cache``), which hold no secrets, and use ``/dev/null``,
  ``/dev/zero`` and ``/dev/urandom``;
* read, and where the descriptor was opened for writing write, exactly the
  files it inherited as descriptors (``fds``): ``qemu-img`` reopens
  ``/dev/fd/N`` of a file output, which Landlock checks against the inode
  behind it, so it reaches that output and no other file (its images come
  over NBD sockets, which need no rule: ``engine.nbd``);
* read and write beneath ``extra_paths`` (an operator's setting, for a
  hardware driver's device nodes).

Nothing else: no other file of the host can be opened, listed, created or
removed, whatever name an image carries; no TCP socket can be bound or
connected; no signal can reach, and no ptrace attach, a process outside
the domain, such as another task's tools (each command gets a domain of
its own), from kernel ABI 6 on.  Rights a kernel does not know are not
asked for (``handled`` by ABI); a kernel without Landlock has ABI 0, which
``engine.process`` refuses unless the operator allows unconfined tools.

Syscalls through ctypes (Linux x86-64 and arm64 numbers): the standard
library has no binding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
import ctypes
import dataclasses
import fcntl
import functools
import os
import stat

_CREATE_RULESET = 444
_ADD_RULE = 445
_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

# Filesystem rights, by the ABI that introduced them.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13            # ABI 2
TRUNCATE = 1 << 14         # ABI 3
IOCTL_DEV = 1 << 15        # ABI 5
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1,
              4: (1 << 15) - 1, 5: (1 << 16) - 1}
# Network (ABI 4): TCP bind and connect.
_NET_BIND_TCP = 1 << 0
_NET_CONNECT_TCP = 1 << 1
# Scopes (ABI 6): abstract unix sockets, signals.
_SCOPE_ABSTRACT_UNIX = 1 << 0
_SCOPE_SIGNAL = 1 << 1

FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ_ONLY = READ_FILE | READ_DIR | EXECUTE
SYSTEM_PATHS = ('/usr', '/lib', '/lib64', '/bin', '/sbin',
                '/etc/ld.so.cache')
# Device nodes that give nothing away: QEMU probes OFD locks on /dev/null
# (read-write), libraries may read randomness.
SYSTEM_DEVICES = (('/dev/null', READ_FILE | WRITE_FILE),
                  ('/dev/zero', READ_FILE), ('/dev/urandom', READ_FILE))

_libc = ctypes.CDLL(None, use_errno=True)


@dataclasses.dataclass(frozen=True)
class Sandbox:
    """How the tools are confined: ``extra_paths`` they may also read and
    write (device nodes of a hardware driver)."""
    extra_paths: tuple[str, ...] = ()

    def child_step(self, executable: str,
                   fds: Sequence[int]) -> Callable[[], None]:
        """What runs in the child, last before exec: ``confine`` to the
        inherited ``fds`` and the command's own ``executable`` (a stand-in
        or an operator's tool may live outside the system directories)."""
        paths = (executable,) + self.extra_paths
        return functools.partial(confine, tuple(fds), paths,
                                 executable=executable)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [('handled_access_fs', ctypes.c_uint64),
                ('handled_access_net', ctypes.c_uint64),
                ('scoped', ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [('allowed_access', ctypes.c_uint64),
                ('parent_fd', ctypes.c_int32)]


def _syscall(number: int, *args: object) -> int:
    result = _libc.syscall(number, *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, 'landlock syscall %d: %s'
                      % (number, os.strerror(err)))
    return int(result)


@functools.lru_cache(maxsize=1)
def abi() -> int:
    """The kernel's Landlock ABI version; 0 without Landlock."""
    try:
        return _syscall(_CREATE_RULESET, None, ctypes.c_size_t(0),
                        ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except OSError:
        return 0


def handled_fs(version: int) -> int:
    """Every filesystem right ABI ``version`` knows."""
    return _FS_BY_ABI[min(version, max(_FS_BY_ABI))] if version else 0


def fd_rights(fd: int, handled: int) -> int:
    """What a tool may do with the file behind its inherited ``fd``: read
    it, and write and truncate it when the descriptor was opened for
    writing; ioctls on a block device (its size, discard); read beneath a
    directory."""
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        # A directory handed down to read code from (isal_child): list
        # and read beneath it, never write.
        return (READ_FILE | READ_DIR) & handled
    rights = READ_FILE
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY:
        rights |= WRITE_FILE | TRUNCATE
    if stat.S_ISBLK(st.st_mode):
        rights |= IOCTL_DEV
    return rights & handled


def _is_file(fd: int) -> bool:
    """Sockets and pipes are used through the descriptor itself; only a
    file or device can be reopened, so only those get a rule."""
    mode = os.fstat(fd).st_mode
    return not (stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode))


def _add_rule(ruleset: int, fd: int, rights: int) -> None:
    attr = _PathBeneathAttr(rights, fd)
    _syscall(_ADD_RULE, ctypes.c_int(ruleset),
             ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(attr),
             ctypes.c_uint32(0))


def _add_path(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return          # /lib64 on arm64, /sbin on some hosts
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= FILE_RIGHTS
        _add_rule(ruleset, fd, rights)
    finally:
        os.close(fd)


def confine(fds: Iterable[int], extra_paths: Iterable[str] = (),
            version: int | None = None, executable: str = '') -> None:
    """Restrict the calling process (a child about to exec a tool) as the
    module doc says; ``no_new_privs`` must already be set.  Raises OSError
    when the kernel refuses; the caller then must not exec."""
    version = abi() if version is None else version
    if version < 1:
        raise OSError(0, 'Landlock is not available')
    handled = handled_fs(version)
    attr = _RulesetAttr(handled, 0, 0)
    if version >= 4:
        attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP
    if version >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL
    size = ctypes.sizeof(_RulesetAttr) if version >= 4 else 8
    ruleset = _syscall(_CREATE_RULESET, ctypes.byref(attr),
                       ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        for path in SYSTEM_PATHS:
            _add_path(ruleset, path, READ_ONLY & handled)
        for path, rights in SYSTEM_DEVICES:
            _add_path(ruleset, path, rights & handled)
        for path in extra_paths:
            # The executable itself: read and execute only.
            _add_path(ruleset, path, (READ_FILE | EXECUTE) & handled
                      if path == executable else handled)
        for fd in fds:
            if _is_file(fd):
                _add_rule(ruleset, fd, fd_rights(fd, handled))
        _syscall(_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
