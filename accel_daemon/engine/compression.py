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

import dataclasses
import functools
import hashlib
import logging
import os
import time
from typing import Any

from stevedore import extension

from accel_daemon import exception
from accel_daemon.drivers import base
from accel_daemon.engine import paths
from accel_daemon.engine import sparse
from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine.progress import Progress
from accel_daemon.engine.settings import Settings

LOG = logging.getLogger(__name__)

NAMESPACE = 'accel_daemon.compressors'
MAGIC = {b'\x1f\x8b': base.GZIP, b'\x28\xb5\x2f\xfd': base.ZSTD}
# Decoders by input format, fastest first.  In-process ISA-L reads any
# gzip (single or multi-member, from any tool) with no pipe copy; the CLI
# tools are fallbacks.  The fallback policy governs compression only: a
# host must always be able to read the images it is given.
DECODERS = {base.GZIP: ('isal', 'igzip', 'pigz', 'gzip', 'qat'),
            base.ZSTD: ('zstd',)}
_HASH_BLOCK = 1024 * 1024


@functools.lru_cache(maxsize=1)
def _default_manager() -> extension.ExtensionManager:
    return extension.ExtensionManager(
        NAMESPACE, invoke_on_load=False,
        on_load_failure_callback=_load_failed)


def _load_failed(manager, entrypoint, exc) -> None:
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


def _explicit(drivers, settings, format, name) -> base.Compressor:
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


def capabilities(drivers: dict[str, base.Compressor]) -> list[dict]:
    result = []
    for name, comp in sorted(drivers.items()):
        avail = comp.availability()
        result.append({'name': name, 'available': avail.available,
                       'reason': avail.reason, 'hardware': comp.hardware,
                       'format': comp.output_format,
                       'version': avail.version})
    return result


# --- operations on already validated paths ---------------------------------
def _sha256_of(path: str) -> str:
    h = hashlib.sha256()
    buf = bytearray(_HASH_BLOCK)
    fd = paths.open_ref(path, os.O_RDONLY)
    try:
        while n := os.readv(fd, [buf]):
            h.update(memoryview(buf)[:n])
    finally:
        os.close(fd)
    return h.hexdigest()


def compress_file(src_real: str, out_path: str, compressor: base.Compressor,
                  progress: Progress) -> dict[str, Any]:
    """Compress into the existing empty file ``out_path``."""
    started = time.monotonic()
    stats = compressor.compress(src_real, out_path, progress)
    # Drivers that hash while writing report it; the others are hashed
    # from the page cache (the output is a fraction of the input).
    digest = getattr(stats, 'sha256', None) or _sha256_of(out_path)
    return {'output': out_path, 'size': os.stat(out_path).st_size,
            'sha256': digest, 'engine': stats.engine,
            'hardware': stats.hardware, 'format': compressor.output_format,
            'bytes_in': stats.bytes_in, 'bytes_out': stats.bytes_out,
            'cpu_seconds': stats.cpu_seconds,
            'wall_seconds': time.monotonic() - started}


def detect_format(src_real: str, settings: Settings) -> str:
    fd = paths.open_input(src_real, settings.allowed_dirs,
                          settings.allowed_block_devices)
    try:
        head = os.pread(fd, 4, 0)
    finally:
        os.close(fd)
    for magic, fmt in MAGIC.items():
        if head.startswith(magic):
            return fmt
    raise exception.CorruptInput(path=src_real,
                                 reason='not gzip or zstd data')


def decoder_for(fmt: str, settings: Settings,
                policy: CommandPolicy) -> base.Compressor:
    drivers = load_drivers(settings, policy)
    reasons = []
    for name in DECODERS.get(fmt, ()):
        comp = drivers.get(name)
        if comp is None:
            continue
        avail = comp.availability()
        if avail.available:
            return comp
        reasons.append('%s: %s' % (name, avail.reason))
    raise exception.NoEngineAvailable(
        reason='no %s decoder: %s' % (fmt, '; '.join(reasons) or 'none'))


def decompress_file(src_real: str, out_path: str, settings: Settings,
                    policy: CommandPolicy, progress: Progress,
                    max_bytes: int | None = None,
                    checksum: bool = False) -> dict[str, Any]:
    """Decompress into the existing empty file ``out_path``, capped, sparse.

    ``checksum`` hashes the logical output; off by default because hashing
    every zero of a sparse 8 GiB image costs more than decompressing it.
    """
    started = time.monotonic()
    cpu_started = time.thread_time()
    limit = settings.max_decompressed_bytes
    if max_bytes:
        limit = min(limit, int(max_bytes))
    fmt = detect_format(src_real, settings)
    decoder = decoder_for(fmt, settings, policy)
    progress.set_total(limit if max_bytes else 0)
    hasher = hashlib.sha256() if checksum else None
    child = getattr(decoder, 'child_cpu_seconds', None)
    out_fd = paths.open_ref(out_path, os.O_WRONLY)
    try:
        with decoder.open_decompressed(src_real, progress) as stream:
            total = sparse.copy_capped(stream, out_fd, limit=limit,
                                       progress=progress, name=src_real,
                                       hasher=hasher)
    finally:
        os.close(out_fd)
    cpu = time.thread_time() - cpu_started
    return {'output': out_path, 'size': total,
            'sha256': hasher.hexdigest() if hasher else None,
            'engine': decoder.name, 'hardware': decoder.hardware,
            'format': fmt, 'bytes_in': os.stat(src_real).st_size,
            'bytes_out': total,
            'cpu_seconds': cpu + (child() if child else 0.0),
            'wall_seconds': time.monotonic() - started}


# --- the public operations ---------------------------------------------------
def compress(src: str, dst: str, settings: Settings, policy: CommandPolicy,
             progress: Progress, driver: str | None = None,
             level: int | None = None, format: str = base.GZIP) -> dict:
    """Compress ``src`` to the new file ``dst`` with the best driver."""
    src_real = paths.check_input(src, settings.allowed_dirs,
                                 settings.allowed_block_devices)
    dst_real = paths.check_output(dst, settings.allowed_dirs)
    if level is not None:
        settings = dataclasses.replace(settings, compression_level=int(level))
    comp = select(load_drivers(settings, policy), settings, format, driver)
    LOG.info('Compressing %s to %s with %s', src_real, dst_real, comp.name)
    with paths.AtomicOutput(dst_real, settings.output_file_mode) as out:
        result = compress_file(src_real, paths.fd_ref(out.fd), comp,
                               progress)
        out.commit()
    result['output'] = dst_real
    return result


def decompress(src: str, dst: str, settings: Settings, policy: CommandPolicy,
               progress: Progress, max_bytes: int | None = None,
               checksum: bool = False) -> dict:
    """Decompress ``src`` (gzip or zstd) to the new sparse file ``dst``."""
    src_real = paths.check_input(src, settings.allowed_dirs,
                                 settings.allowed_block_devices)
    dst_real = paths.check_output(dst, settings.allowed_dirs)
    if paths.is_block_device(dst_real):
        # Holes on a device would leave old data behind: refuse rather than
        # write every zero.  Convert from a decompressed file instead.
        raise exception.InvalidRequest(
            reason='decompress writes files, not block devices')
    with paths.AtomicOutput(dst_real, settings.output_file_mode) as out:
        result = decompress_file(src_real, paths.fd_ref(out.fd), settings,
                                 policy, progress, max_bytes, checksum)
        out.commit()
    result['output'] = dst_real
    return result
