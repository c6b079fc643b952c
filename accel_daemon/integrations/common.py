# SPDX-License-Identifier: Apache-2.0
"""Caller-independent helpers of the convert_image integrations.

Used by ``accel_daemon.integrations.cinder`` and
``accel_daemon.integrations.nova``: the daemon's capabilities with a
cached answer, fallback reasons logged once, and the routing checks on
paths (allowed directories, block devices).

Block devices (a volume attached over iSCSI or FC: ``/dev/sdX``,
``/dev/disk/by-path/...``, ``/dev/mapper/...``) go to the daemon when the
name, as the caller passes it, matches one of the fnmatch patterns the
daemon advertises (``allowed_block_devices`` in its capabilities, from its
``[accel_daemon] allowed_block_devices``) and really is a block device:
the same test the daemon applies, before it judges the opened node again
in its privileged process.  Any other ``/dev/`` path stays with the
caller's own code.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
import threading
import time
import weakref
from typing import Any, Optional

from oslo_config import cfg

from accel_daemon.client import AccelClient
from accel_daemon import exception
from accel_daemon import records

# The daemon's refusals of an image (not failures of a run): both callers
# answer them with their own ImageUnacceptable.
REFUSALS = (exception.ImageInspectionError, exception.SizeLimitExceeded)

# What the daemon answers to capabilities; None: it is not there.
Caps = Optional[records.Capabilities]


class SharedClient:
    """The one client an integration's calls share, made on first use from
    the service's global configuration (``cfg.CONF``: its transport and
    ``[accel_daemon_client]``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.client: Optional[AccelClient] = None

    def get(self) -> AccelClient:
        with self._lock:
            if self.client is None:
                self.client = AccelClient(cfg.CONF)
            return self.client

    def reset(self) -> None:
        """Close and forget the client (and with it its cached answers):
        the next call builds a new one from the configuration as it is
        then (a reloaded configuration, another daemon)."""
        with self._lock:
            client, self.client = self.client, None
        if client is not None:
            client.close()


class CapsCache:
    """The daemon's capabilities per client, None when it does not
    answer; either answer is reused for ``ttl`` seconds."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._lock = threading.Lock()
        # client -> (monotonic time of the answer, capabilities or None)
        self._cache: weakref.WeakKeyDictionary[
            AccelClient, tuple[float, Caps]] = weakref.WeakKeyDictionary()

    def get(self, client: AccelClient, ttl: float, timeout: float) -> Caps:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(client)
        if cached is not None and now - cached[0] < ttl:
            return cached[1]
        caps: Caps
        try:
            caps = client.capabilities(timeout=timeout)
        except Exception as e:      # never raise: "not there"
            self._log.info('accel-daemon on %s is not there: %s',
                           client.host, e)
            caps = None
        with self._lock:
            self._cache[client] = (time.monotonic(), caps)
        return caps


class FallbackLog:
    """Logs each fallback reason once, at info."""

    def __init__(self, log: logging.Logger, caller: str) -> None:
        self._log = log
        self._caller = caller
        self._lock = threading.Lock()
        self.logged: set[str] = set()

    def __call__(self, reason: str) -> None:
        with self._lock:
            first = reason not in self.logged
            self.logged.add(reason)
        if first:
            self._log.info("accel-daemon: convert_image falls back to %s's "
                           "qemu-img for %s (logged once)", self._caller,
                           reason)


def under(path: str, dirs: list[str]) -> bool:
    """Whether ``path`` (resolved) is one of ``dirs`` or inside one."""
    real = os.path.realpath(path)
    for d in dirs:
        d = os.path.realpath(d)
        if real == d or real.startswith(d.rstrip('/') + '/'):
            return True
    return False


def is_device(path: str) -> bool:
    """A ``/dev/`` path or a block device."""
    if path.startswith('/dev/'):
        return True
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def device_allowed(caps: records.Capabilities, path: str) -> bool:
    """``path`` is a block device whose name matches a pattern of the
    daemon's ``allowed_block_devices`` (an older daemon that does not
    advertise them allows none)."""
    patterns = caps.get('allowed_block_devices') or ()
    if not any(isinstance(p, str) and fnmatch.fnmatchcase(path, p)
               for p in patterns):
        return False
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def device_refusal(caps: records.Capabilities, *paths: str) -> Optional[str]:
    """Why one of ``paths`` that is a device cannot go to the daemon, or
    None when every device among them is allowed there."""
    for path in paths:
        if not is_device(path):
            continue
        if not caps.get('allowed_block_devices'):
            return ('block devices (/dev/ paths; the daemon allows none: '
                    '[accel_daemon] allowed_block_devices)')
        if not device_allowed(caps, path):
            return ("a block device outside the daemon's "
                    'allowed_block_devices, or not a block device')
    return None


def is_local_path(path: Any) -> bool:
    """An absolute local path (not ``rbd:`` or another URI)."""
    return isinstance(path, str) and os.path.isabs(path)


def formats_known(caps: records.Capabilities, src_format: str,
                  dst_format: str) -> bool:
    formats = caps.get('formats') or {}
    return src_format.lower() in (formats.get('input') or ()) and \
        dst_format.lower() in (formats.get('output') or ())


def paths_allowed(caps: records.Capabilities, source: str, dest: str) -> bool:
    """The source and the directory of ``dest`` in the daemon's
    ``allowed_dirs``, or a block device it allows."""
    dirs = list(caps.get('allowed_dirs') or ())
    return (device_allowed(caps, source) or under(source, dirs)) and \
        (device_allowed(caps, dest) or
         under(os.path.dirname(dest) or '/', dirs))
