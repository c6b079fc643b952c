# SPDX-License-Identifier: Apache-2.0
"""Choosing a compression driver, and the compress/decompress operations.

Drivers are plugins (entry point namespace ``accel_daemon.compressors``).
``select`` walks the configured preference order and takes the first driver
that is available: a driver is unavailable when its tool is missing, its
hardware is absent, or the operator's filters forbid its command.

Decompression never trusts its input: the format is taken from the magic
bytes, the output is capped (gzip bombs) and written sparse, and any decode
error becomes CorruptInput with nothing left behind.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import os
import time

from stevedore import extension

from accel_daemon.engine.context import Context
from accel_daemon.engine import copy
from accel_daemon.engine import driver as base
from accel_daemon.engine import files
from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine.progress import Progress
from accel_daemon.engine.settings import Settings
from accel_daemon.engine import sparse
from accel_daemon.engine import throttle
from accel_daemon import exception
from accel_daemon.options import Options
from accel_daemon import records

LOG = logging.getLogger(__name__)

NAMESPACE = 'accel_daemon.compressors'
MAGIC = {b'\x1f\x8b': base.GZIP, b'\x28\xb5\x2f\xfd': base.ZSTD}


@functools.lru_cache(maxsize=1)
def _default_manager() -> extension.ExtensionManager:
    return extension.ExtensionManager(
        NAMESPACE, invoke_on_load=False,
        on_load_failure_callback=_load_failed)


def _load_failed(manager: extension.ExtensionManager,
                 entrypoint: importlib.metadata.EntryPoint,
                 exc: BaseException) -> None:
    LOG.error('Cannot load compression driver %s: %s', entrypoint, exc)


def load_drivers(settings: Settings, policy: CommandPolicy,
                 manager: extension.ExtensionManager | None = None
                 ) -> dict[str, base.Compressor]:
    """Instantiate every installed driver for these settings.

    ``manager`` lets tests pass ``ExtensionManager.make_test_instance``.
    """
    manager = manager or _default_manager()
    return {ext.name: ext.plugin(settings, policy) for ext in manager}


def select(drivers: dict[str, base.Compressor], settings: Settings,
           format: str = base.GZIP,
           driver: str | None = None) -> base.Compressor:
    """The driver to compress with, or NoEngineAvailable saying why not."""
    if driver is not None:
        return _explicit(drivers, settings, format, driver)
    order = [n for n in settings.drivers if n in drivers]
    if format != base.GZIP:
        # Non-gzip formats are opt-in: asking for the format is the opt-in,
        # so their drivers need not be in the (gzip) preference list.
        order += sorted(n for n in drivers if n not in order)
    reasons = []
    for name in order:
        comp = drivers[name]
        why = _refusal(comp, settings, format)
        if why is None:
            return comp
        reasons.append('%s: %s' % (name, why))
    raise exception.NoEngineAvailable(
        reason='; '.join(reasons) or 'no %s driver is installed' % format)


def _explicit(drivers: dict[str, base.Compressor], settings: Settings,
              format: str, name: str) -> base.Compressor:
    comp = drivers.get(name)
    if comp is None:
        raise exception.NoEngineAvailable(reason='unknown driver %s' % name)
    if comp.output_format == base.GZIP and name not in settings.drivers:
        # The operator's list is also the list of gzip drivers allowed at
        # all: a caller cannot pick one the operator left out.
        raise exception.NoEngineAvailable(
            reason='%s is not in [compression] drivers' % name)
    why = _refusal(comp, settings, format)
    if why is not None:
        raise exception.NoEngineAvailable(reason='%s: %s' % (name, why))
    return comp


def _refusal(comp: base.Compressor, settings: Settings,
             format: str) -> str | None:
    if comp.output_format != format:
        return 'writes %s, not %s' % (comp.output_format, format)
    if not comp.hardware and not settings.allow_software_fallback:
        return 'software fallback is disabled'
    avail = comp.availability()
    if not avail.available:
        return avail.reason or 'not available'
    return None


def capabilities(drivers: dict[str, base.Compressor]
                 ) -> list[records.DriverInfo]:
    result: list[records.DriverInfo] = []
    for name, comp in sorted(drivers.items()):
        avail = comp.availability()
        result.append({'name': name, 'available': avail.available,
                       'reason': avail.reason, 'hardware': comp.hardware,
                       'format': comp.output_format,
                       'version': avail.version})
    return result


# --- operations on opened files ----------------------------------------------
def detect_format(src: files.Opened) -> str:
    head = os.pread(src.fd, 4, 0)
    for magic, fmt in MAGIC.items():
        if head.startswith(magic):
            return fmt
    raise exception.CorruptInput(path=src.name,
                                 reason='not gzip or zstd data')


def decoders(drivers: dict[str, base.Compressor], fmt: str) -> list[str]:
    """The drivers that declare they decode ``fmt`` (``Compressor.decodes``),
    by rank.  Not ``[compression] drivers``: that list and the fallback
    policy govern compression only, since a host must always be able to
    read the images it is given."""
    return sorted((n for n, d in drivers.items() if fmt in d.decodes),
                  key=lambda n: (drivers[n].decodes[fmt], n))


def decoder_for(drivers: dict[str, base.Compressor],
                fmt: str) -> base.Compressor:
    reasons = []
    for name in decoders(drivers, fmt):
        comp = drivers[name]
        avail = comp.decoder_availability()
        if avail.available:
            return comp
        reasons.append('%s: %s' % (name, avail.reason))
    raise exception.NoEngineAvailable(
        reason='no %s decoder: %s' % (fmt, '; '.join(reasons) or 'none'))


def compress_fds(comp: base.Compressor, src_fd: int, out_fd: int,
                 progress: Progress, opts: Options) -> records.Result:
    """Compress ``src_fd`` into the empty file ``out_fd`` (``opts``:
    level, checksum, reading at most ``bps_limit`` bytes per second)."""
    started = time.monotonic()
    checksum = opts.checksum
    # Only given when set: a driver without limits still compresses.
    paced = {'bps_limit': opts.bps_limit} if opts.bps_limit else {}
    stats = comp.compress(src_fd, out_fd, progress, level=opts.level,
                          digest=checksum, **paced)
    digest = stats.sha256
    if checksum and digest is None:
        # Hashed from the page cache: the output is a fraction of the input.
        digest = copy.sha256_fd(out_fd, progress)
    return {'size': os.fstat(out_fd).st_size, 'sha256': digest,
            'engine': stats.engine, 'hardware': stats.hardware,
            'format': comp.output_format, 'bytes_in': stats.bytes_in,
            'bytes_out': stats.bytes_out, 'cpu_seconds': stats.cpu_seconds,
            'wall_seconds': time.monotonic() - started}


def decompress_fds(drivers: dict[str, base.Compressor], src: files.Opened,
                   out_fd: int, limit: int, progress: Progress,
                   opts: Options) -> records.Result:
    """Decompress ``src`` into the empty file ``out_fd``, capped at
    ``limit`` bytes, sparse unless ``opts.sparse`` is False (every zero
    written).  ``opts.checksum`` hashes the logical output (off by
    default: hashing every zero of a sparse image costs more than
    decompressing it).  ``opts.bps_limit`` paces the decompressed bytes."""
    started = time.monotonic()
    cpu_started = time.thread_time()
    fmt = detect_format(src)
    if opts.container is not None and fmt != opts.container:
        # A zstd stream where the image says gzip: decoded by nobody.
        raise exception.CorruptInput(
            path=src.name, reason='%s data where %s was announced'
            % (fmt, opts.container))
    decoder = decoder_for(drivers, fmt)
    hasher = hashlib.sha256() if opts.checksum else None
    with decoder.open_decompressed(src.fd, progress) as stream:
        # Never more data than the target's file system can hold: a few
        # MB of zstd inflate to a terabyte of non-zero bytes, which would
        # fill it for every other user before the size cap is reached.
        total = sparse.copy_capped(stream, out_fd, sparse.Flow(
            limit, src.name, progress, sparse=opts.sparse, hasher=hasher,
            pacer=throttle.pacer(opts.bps_limit, progress),
            room=sparse.room(out_fd)))
    cpu = time.thread_time() - cpu_started + stream.cpu_seconds
    return {'size': total,
            'sha256': hasher.hexdigest() if hasher else None,
            'engine': decoder.name, 'hardware': decoder.hardware,
            'format': fmt, 'bytes_in': src.size, 'bytes_out': total,
            'cpu_seconds': cpu, 'wall_seconds': time.monotonic() - started}


def decompress_limit(settings: Settings, max_bytes: int | None) -> int:
    """The cap of one decompression: the request's, within the host's."""
    limit = settings.max_decompressed_bytes
    if max_bytes:
        limit = min(limit, int(max_bytes))
    return limit


# --- the public operations ---------------------------------------------------
def compress(ctx: Context, drivers: dict[str, base.Compressor],
             progress: Progress, src: str, dst: str,
             opts: Options) -> records.Result:
    """Compress ``src`` to the new file ``dst`` with the best driver, or
    ``opts.driver`` (``opts.replace``: over an existing one; ``src`` may
    be ``dst``)."""
    comp = select(drivers, ctx.settings, opts.format, opts.driver)
    with ctx.open_source(src) as source, \
            ctx.output(dst, replace=opts.replace) as out:
        LOG.info('Compressing %s to %s with %s', source.real, dst, comp.name)
        result = compress_fds(comp, source.fd, out.fd, progress, opts)
        out.commit(progress)
    result['output'] = dst
    return result


def decompress(ctx: Context, drivers: dict[str, base.Compressor],
               progress: Progress, src: str, dst: str,
               opts: Options) -> records.Result:
    """Decompress ``src`` (gzip or zstd) to the new sparse file ``dst``.

    Block devices are refused as outputs (``Output`` without devices):
    holes would leave old data behind on a device.
    """
    limit = decompress_limit(ctx.settings, opts.max_bytes)
    progress.set_total(limit if opts.max_bytes else 0)
    with ctx.open_source(src) as source, \
            ctx.output(dst, replace=opts.replace) as out:
        result = decompress_fds(drivers, source, out.fd, limit, progress,
                                opts)
        out.commit(progress)
    result['output'] = dst
    return result
