# SPDX-License-Identifier: Apache-2.0
"""Narrow what the tools the privsep daemon executes inherit.

A program exec'ed by uid 0 gets the whole bounding set back, whatever the
parent dropped (capabilities(7), "Capabilities and execution of programs by
root").  ``harden_thread()`` makes children start with exactly the given
child capabilities instead.  Capabilities, securebits, the bounding set and
no_new_privs are all per *thread* on Linux, and privsep runs each call in a
pool thread, so every worker thread hardens itself before its first
operation; children forked from it inherit the result.

Hardening happens only inside the privsep daemon, recognised by the
thread's effective set being exactly the configured set (privsep has just
dropped to it): an in-process caller (tests, ``--local``) is never touched.
"""

from __future__ import annotations

from collections.abc import Iterable
import logging
import threading

from oslo_privsep import capabilities as c

from accel_daemon.engine import tooluser
from accel_daemon.engine.tooluser import PR_CAP_AMBIENT
from accel_daemon.engine.tooluser import PR_CAP_AMBIENT_RAISE
from accel_daemon.engine.tooluser import PR_CAPBSET_DROP
from accel_daemon.engine.tooluser import PR_SET_NO_NEW_PRIVS
from accel_daemon.engine.tooluser import PR_SET_SECUREBITS

LOG = logging.getLogger(__name__)

SECBIT_NOROOT = 1 << 0
SECBIT_NOROOT_LOCKED = 1 << 1
LAST_CAP_FILE = '/proc/sys/kernel/cap_last_cap'

_local = threading.local()


class HardeningError(OSError):
    pass


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    tooluser.prctl(option, arg2, arg3, error=HardeningError)


def last_cap() -> int:
    try:
        with open(LAST_CAP_FILE) as f:
            return int(f.read())
    except (OSError, ValueError):
        return max(c.CAPS_BYVALUE)


def bounding_drops(keep: Iterable[int], last: int) -> list[int]:
    """Capabilities to remove from the bounding set (pure)."""
    kept = set(keep)
    return [cap for cap in range(last + 1) if cap not in kept]


def in_privsep_daemon(configured: Iterable[int]) -> bool:
    """True when this thread holds exactly the configured capabilities."""
    effective, _permitted, _inheritable = c.get_caps()
    return set(effective) == set(configured)


def plan(configured: Iterable[int], child: Iterable[int]) -> tuple[
        list[int], list[int]]:
    """(capabilities the thread keeps, capabilities children get); pure."""
    configured = set(configured)
    keep = sorted(configured - {c.CAP_SETPCAP})
    return keep, sorted(set(child) & set(keep))


def harden_thread(configured: Iterable[int], child: Iterable[int]) -> bool:
    """Harden the calling thread once; True if it is (now) hardened.

    Failure to harden is logged and not fatal: the filters and path checks
    remain the boundary, as they are for any privsep consumer.
    """
    if getattr(_local, 'done', None) is not None:
        return _local.done
    configured = list(configured)
    if not in_privsep_daemon(configured):
        _local.done = False
        return False
    keep, child_caps = plan(configured, child)
    try:
        _apply(configured, keep, child_caps)
    except HardeningError as e:
        LOG.warning('Could not restrict the capabilities of child '
                    'processes: %s', e)
        _local.done = False
        return False
    _local.done = True
    LOG.debug('privsep thread hardened: keeps %s, children get %s',
              keep, child_caps)
    return True


def _apply(configured: list[int], keep: list[int],
           child_caps: list[int]) -> None:
    if c.CAP_SETPCAP in configured:
        # Both need CAP_SETPCAP, so they come first.
        for cap in bounding_drops(child_caps, last_cap()):
            _prctl(PR_CAPBSET_DROP, cap)
        _prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED)
    # Ambient capabilities must be in the permitted and inheritable sets;
    # this capset also drops CAP_SETPCAP for good.
    c.drop_all_caps_except(keep, keep, child_caps)
    for cap in child_caps:
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
