# SPDX-License-Identifier: Apache-2.0
"""Caller-independent helpers of the convert_image integrations.

The skeleton ``accel_daemon.integrations.cinder`` and
``accel_daemon.integrations.nova`` share, so that each keeps only its
policy (which calls it sends, and the caller's errors): the caller's
original functions, kept before they are replaced (``Original``), with a
guarded install and an uninstall that restores them; the daemon's
capabilities with a cached answer; fallback reasons logged once; the
routing checks (local paths, allowed directories, block devices, formats);
and the run of a task with its errors mapped to the caller's.

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
import functools
import importlib
import inspect
import logging
import os
import stat
import threading
import time
import weakref
from typing import Any, Callable, Optional

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


class Fallback(Exception):
    """Why a call goes to the caller's own function."""


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
            self._log.info("accel-daemon: %s's own code runs for %s "
                           "(logged once)", self._caller, reason)

    def fallback(self, reason: str) -> Fallback:
        """Log ``reason`` (once) and return the exception that sends the
        call to the caller's own function."""
        self(reason)
        return Fallback(reason)


def _shape(func: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """Names, kinds and defaults of ``func``'s parameters (annotations
    left out: a caller's may be strings or absent)."""
    return [(p.name, p.kind, p.default)
            for p in inspect.signature(func).parameters.values()]


def without(func: Callable[..., Any], *names: str) -> Callable[..., Any]:
    """``func`` with the parameters of a caller's release that lacks
    ``names`` (each with a default): what ``Original``'s ``variants``
    hold, matched by signature."""
    signature = inspect.signature(func)

    @functools.wraps(func)
    def variant(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)
    variant.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values()
                    if p.name not in names])
    variant.__name__ = '%s_without_%s' % (func.__name__, '_'.join(names))
    return variant


class Refused(RuntimeError):
    """``install()`` replaced nothing: the caller is another release, or
    one of its functions is not what the integration replaces."""


class Original:
    """A function of the caller's (``module.name``) that ``replacement``
    stands in for, kept before it is replaced so that the fallbacks and
    ``uninstall()`` can reach it.  ``variants`` are the replacement with
    the parameters the function has in other supported releases of the
    caller (cinder 27 and 28's ``convert_image`` has no ``skip_create``):
    the one whose parameters match is installed."""

    def __init__(self, module: str, name: str,
                 replacement: Callable[..., Any],
                 variants: tuple[Callable[..., Any], ...] = ()) -> None:
        self.module = module
        self.name = name
        self.replacement = replacement
        self.variants = variants
        self.installed: Optional[Callable[..., Any]] = None
        self.func: Optional[Callable[..., Any]] = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return '%s.%s' % (self.module, self.name)

    def _where(self) -> Any:
        return importlib.import_module(self.module)

    def _ours(self) -> tuple[Callable[..., Any], ...]:
        return (self.replacement,) + self.variants

    def get(self) -> Callable[..., Any]:
        """The caller's own function (never the replacement)."""
        with self._lock:
            if self.func is None:
                func = getattr(self._where(), self.name)
                if any(func is ours for ours in self._ours()):
                    raise RuntimeError('%r was replaced before its original '
                                       'was kept: use install()' % self)
                self.func = func
            return self.func

    def _match(self) -> Callable[..., Any]:
        """The replacement (or variant) with the parameters of the
        caller's function; Refused when none has them: that release of
        the caller would pass its arguments to the wrong parameters,
        silently."""
        func = self.get()
        for ours in self._ours():
            if _shape(func) == _shape(ours):
                return ours
        raise Refused('%r has the signature %s, not the %s this '
                      'integration replaces' % (
                          self, inspect.signature(func),
                          inspect.signature(self.replacement)))

    def check(self) -> None:
        """Refused unless a replacement has the function's parameters."""
        self._match()

    def replace(self) -> None:
        self.installed = self._match()
        setattr(self._where(), self.name, self.installed)

    def restore(self) -> None:
        where = self._where()
        current = getattr(where, self.name)
        if any(current is ours for ours in self._ours()):
            setattr(where, self.name, self.get())
        self.installed = None


def release(project: str) -> str:
    """The installed release of ``project`` (its distribution's version),
    or '' when it is not installed as a distribution."""
    from importlib import metadata
    try:
        return metadata.version(project)
    except metadata.PackageNotFoundError:
        return ''


def check_release(project: str, supported: tuple[int, ...]) -> None:
    """Refused unless the installed ``project``'s major release is one of
    ``supported``."""
    version = release(project)
    try:
        major = int(version.split('.')[0])
    except ValueError:
        major = -1
    if major not in supported:
        raise Refused('%s %s is not a release this accel-daemon supports '
                      '(%s)' % (project, version or '(unknown release)',
                                ', '.join(str(m) for m in supported)))


def install(*originals: Original) -> None:
    """Check every function first, then replace them all: a caller whose
    functions are not what we expect is left as it was (Refused)."""
    for original in originals:
        original.check()
    for original in originals:
        original.replace()


def uninstall(*originals: Original) -> None:
    """Undo ``install()``: the caller's own functions again."""
    for original in originals:
        original.restore()


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


def local_refusal(uris: str, *paths: Any) -> Optional[str]:
    """Why one of ``paths`` cannot go to the daemon as a local path
    (``uris`` names the caller's usual ones), or None."""
    for path in paths:
        if not is_local_path(path):
            return 'a path that is not a local absolute path (%s)' % uris
    return None


def daemon_refusal(caps: Caps, source: str, dest: str, src_format: str,
                   dst_format: str) -> Optional[str]:
    """Why the daemon that answered ``caps`` cannot take this conversion,
    or None: the checks both callers make, in the same order."""
    if caps is None:
        return 'a daemon that does not answer'
    refusal = device_refusal(caps, source, dest)
    if refusal:
        return refusal
    if not formats_known(caps, src_format, dst_format):
        return 'a format accel-daemon does not convert'
    if not paths_allowed(caps, source, dest):
        return "paths outside the daemon's allowed directories"
    return None


# The first API version with both image streams (stream_in 1.4,
# stream_out 1.5).
STREAMS_API = (1, 5)


def api_version(caps: Caps) -> tuple[int, ...]:
    """The API version the daemon reports (1.5 and later); (0,) for an
    older daemon, which reports none."""
    version = caps.get('api_version') if caps else None
    try:
        return tuple(int(p) for p in str(version).split('.'))
    except ValueError:
        return (0,)


def stream_refusal(caps: Caps) -> Optional[str]:
    """Why this process cannot stream images with the daemon that
    answered ``caps``, or None."""
    if caps is None:
        return 'a daemon that does not answer'
    if api_version(caps) < STREAMS_API:
        return 'a daemon older than API %d.%d (image streams)' % STREAMS_API
    directory = caps.get('streams')
    if not directory:
        return 'image streams are off in the daemon ([streams] group)'
    if not os.path.isdir(directory):
        return 'the stream directory %s is missing' % directory
    if not os.access(directory, os.X_OK):
        return ('this service may not reach the stream sockets in %s (its '
                "user is not in the daemon's [streams] group)" % directory)
    return None


def convert_args(source: str, dest: str, src_format: str, dst_format: str,
                 compress: bool) -> dict[str, Any]:
    """The ``AccelClient.convert()`` arguments both callers send:
    ``compress`` applies to qcow2 outputs only, and an existing file
    ``dest`` (the callers pre-create theirs) is replaced, while a device
    is written in place."""
    return {
        'src': source, 'dst': dest,
        'src_format': src_format.lower(),
        'dst_format': dst_format.lower(),
        'compress': bool(compress) and dst_format.lower() == 'qcow2',
        'replace': os.path.lexists(dest) and not is_device(dest),
    }


def source_bytes(path: str) -> Optional[int]:
    """The size of a local source as its bytes: a regular file's, or a
    block device's (from sysfs, readable without privilege); None when
    neither can be told."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISBLK(st.st_mode):
        sysfs = '/sys/dev/block/%d:%d/size' % (
            os.major(st.st_rdev), os.minor(st.st_rdev))
        try:
            with open(sysfs) as f:
                return int(f.read().strip()) * 512
        except (OSError, ValueError):
            return None
    return None


def virtual_size(data: Any) -> Optional[int]:
    """The virtual size, in bytes, of a caller's ``QemuImgInfo`` (cinder's
    and nova's have the same attribute), if it has a usable one."""
    size = getattr(data, 'virtual_size', None)
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    return None


def expected_size(source: str, src_format: str,
                  data: Any = None) -> Optional[int]:
    """The largest virtual size the caller expects of ``source``: what
    its own inspection found (``data``), or, for a raw source, its size.
    Sent as ``max_bytes``: a source that grew or changed after the
    caller judged it is refused before anything is written."""
    size = virtual_size(data)
    if size is None and src_format.lower() == 'raw':
        size = source_bytes(source)
    return size


def process_error(err: exception.AccelError,
                  args: dict[str, Any]) -> Exception:
    """``err`` as the ``ProcessExecutionError`` of a failed qemu-img run:
    the callers look for texts such as "No space left" in its stderr."""
    from oslo_concurrency import processutils
    return processutils.ProcessExecutionError(
        stderr=str(err),
        cmd='accel-daemon convert %s (%s) -> %s (%s)' % (
            args['src'], args['src_format'], args['dst'],
            args['dst_format']),
        description='accel-daemon error %s: %s' % (type(err).__name__, err))


def run_task(submit: Callable[[], Any],
             error: Callable[[exception.AccelError], Exception],
             timeout: Optional[float] = None) -> None:
    """Submit a task and wait for it; any failure raises ``error()`` of
    the typed accel-daemon error, never a silent no-op."""
    try:
        submit().wait(timeout=timeout)
    except exception.AccelError as e:
        raise error(e) from e
    except Exception as e:
        # Not typed (a transport error oslo.messaging let through): still
        # a failure of the daemon call.
        err = exception.InternalError(reason='%s: %s' % (type(e).__name__, e))
        raise error(err) from e
