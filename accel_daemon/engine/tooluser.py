# SPDX-License-Identifier: Apache-2.0
"""Who the external tools run as: an unprivileged user, no capabilities.

Every file a tool touches was opened by the engine and is inherited as a
descriptor (stdin/stdout, or ``/dev/fd/N`` for qemu-img), so the tools need
no privilege of their own.  ``child_setup()`` returns what runs in the
child between fork and exec:

* supplementary groups: the tool user's own (``/etc/group``), so an
  operator grants device access the usual way, e.g. QATlib's ``qat`` group
  for the QAT device nodes ``qzip`` opens;
* gid, then uid, of the tool user (real, effective and saved);
* capabilities: none, except the ones a command needs and asks for
  (``caps``): ``qemu-img`` reopens ``/dev/fd/N``, which the kernel checks
  against the file's mode, so it keeps ``CAP_DAC_READ_SEARCH`` to read
  inputs other users own (its outputs are lent to the tool user while they
  are written, see ``files.Output.lend``), and ``CAP_DAC_OVERRIDE`` only
  when it writes a block device in place;
* ``no_new_privs`` and a parent-death signal (SIGKILL), so no tool
  outlives the privileged process that started it;
* last, a Landlock domain (``engine.landlock``): the tool can open nothing
  but the descriptors it inherited and the system's program directories.

A failure here makes the child exit before exec: the command fails instead
of running with more privilege than intended.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import pwd
import signal
from collections.abc import Callable, Sequence

CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2

# prctl(2) options (the privileged layer's caps module uses them too).
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
_CAP_VERSION_3 = 0x20080522
_LAST_CAP = 63

_libc = ctypes.CDLL(None, use_errno=True)


class _Header(ctypes.Structure):
    _fields_ = [('version', ctypes.c_uint32), ('pid', ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [('effective', ctypes.c_uint32),
                ('permitted', ctypes.c_uint32),
                ('inheritable', ctypes.c_uint32)]


@dataclasses.dataclass(frozen=True)
class ToolUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def lookup(cls, name: str) -> ToolUser:
        """The user ``name``; KeyError when it does not exist."""
        entry = pwd.getpwnam(name)
        if entry.pw_uid == 0:
            raise ValueError('the tool user %s is root' % name)
        groups = tuple(g for g in os.getgrouplist(name, entry.pw_gid)
                       if g != 0)
        return cls(name, entry.pw_uid, entry.pw_gid, groups)


def prctl(option: int, arg2: int = 0, arg3: int = 0,
          error: type[OSError] = OSError) -> None:
    """prctl(2) of this thread; ``error`` (an OSError class) on failure."""
    if _libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                   ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise error(err, 'prctl(%d, %d): %s' % (option, arg2,
                                                os.strerror(err)))


def _capset(caps: Sequence[int]) -> None:
    mask = 0
    for cap in caps:
        mask |= 1 << cap
    data = (_Data * 2)()
    data[0].effective = data[0].permitted = data[0].inheritable = mask
    if _libc.capset(ctypes.byref(_Header(_CAP_VERSION_3, 0)), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, 'capset: %s' % os.strerror(err))


def _narrow_bounding_set(keep: Sequence[int]) -> None:
    # Needs CAP_SETPCAP, which hardened privsep threads no longer hold:
    # they already narrowed the bounding set for their children.
    for cap in range(_LAST_CAP + 1):
        if cap in keep:
            continue
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError:
            return


def become(user: ToolUser, caps: Sequence[int] = ()) -> None:
    """Switch the calling (child) process to ``user`` with ``caps``."""
    _narrow_bounding_set(caps)
    os.setgroups(list(user.groups))
    os.setresgid(user.gid, user.gid, user.gid)
    if caps:
        # Keep the permitted set across the uid change to pick from it.
        prctl(PR_SET_KEEPCAPS, 1)
    os.setresuid(user.uid, user.uid, user.uid)
    # Also clears the inheritable set the uid change leaves alone.
    _capset(caps)
    for cap in caps:
        # Ambient: the capability survives exec of a plain binary.
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)


def child_setup(user: ToolUser | None, caps: Sequence[int] = (),
                limits: Callable[[], None] | None = None,
                parent: int | None = None,
                confine: Callable[[], None] | None = None
                ) -> Callable[[], None]:
    """What runs in the child between fork and exec (see module doc);
    ``confine`` last, after ``no_new_privs`` (``landlock.Sandbox``)."""
    parent = os.getpid() if parent is None else parent

    def setup() -> None:
        if limits is not None:
            limits()
        if user is not None:
            become(user, caps)
        # After the uid change, which clears it; the parent's pid is
        # checked again for a parent that died before this took effect.
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:
            os._exit(127)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        if confine is not None:
            confine()
    return setup
