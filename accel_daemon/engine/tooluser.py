# SPDX-License-Identifier: Apache-2.0
"""Who the external tools run as: an unprivileged user, no capabilities.

Every file a tool touches was opened by the engine and is inherited as a
descriptor: stdin/stdout, an NBD socket the engine serves an image on
(``engine.nbd``), or ``/dev/fd/N`` of an output lent to the tool user
(``files.Output.lend``).  So the tools need no privilege of their own.
``child_setup()`` returns what runs in the child between fork and exec:

* supplementary groups: the tool user's own (``/etc/group``), so an
  operator grants device access the usual way, e.g. QATlib's ``qat`` group
  for the QAT device nodes ``qzip`` opens;
* gid, then uid, of the tool user (real, effective and saved);
* capabilities: none, in any set, the bounding set included;
* ``no_new_privs`` and a parent-death signal (SIGKILL), so no tool
  outlives the privileged process that started it;
* last, a Landlock domain (``engine.landlock``): the tool can open nothing
  but the descriptors it inherited and the system's program directories.

A failure here makes the child exit before exec: the command fails instead
of running with more privilege than intended.
"""

from __future__ import annotations

from collections.abc import Callable
import ctypes
import dataclasses
import os
import pwd
import signal

# prctl(2) options (the privileged layer's caps module uses them too).
PR_SET_PDEATHSIG = 1
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


def _drop_all_caps() -> None:
    data = (_Data * 2)()
    if _libc.capset(ctypes.byref(_Header(_CAP_VERSION_3, 0)), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, 'capset: %s' % os.strerror(err))


def _empty_bounding_set() -> None:
    # Needs CAP_SETPCAP, which hardened privsep threads no longer hold:
    # they already emptied the bounding set for their children.
    for cap in range(_LAST_CAP + 1):
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError:
            return


def become(user: ToolUser) -> None:
    """Switch the calling (child) process to ``user``, with no
    capability."""
    _empty_bounding_set()
    os.setgroups(list(user.groups))
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    # Also clears the inheritable set the uid change leaves alone.
    _drop_all_caps()


def child_setup(user: ToolUser | None,
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
            become(user)
        # After the uid change, which clears it; the parent's pid is
        # checked again for a parent that died before this took effect.
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:
            os._exit(127)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        if confine is not None:
            confine()
    return setup
