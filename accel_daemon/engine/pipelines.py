# SPDX-License-Identifier: Apache-2.0
"""The two composed flows of cinder, each with one published output.

upload   = inspect -> convert to the requested disk format -> compress
download = decompress (capped) -> inspect the inner image -> convert

A ``bps_limit`` applies to each step on its own (each moves the image
once, one after the other).  Download's ``sparse=False`` writes every zero
in both steps: the decompressed stage is the output when no conversion is
needed.

Every file is opened once (``engine.files``).  Intermediate results are
unnamed files (``Output`` never committed): nothing can reach them by name,
nothing is left when the run fails or is cancelled, and only the final
output is ever published.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from typing import Protocol

from accel_daemon.engine import compression
from accel_daemon.engine.context import Context
from accel_daemon.engine import copy
from accel_daemon.engine import driver as base
from accel_daemon.engine import files
from accel_daemon.engine import images
from accel_daemon.engine import paths
from accel_daemon.engine.progress import Phase
from accel_daemon.engine.progress import Progress
from accel_daemon.engine import qemu_img
from accel_daemon import exception
from accel_daemon.options import Options
from accel_daemon import records


class Parts(Protocol):
    """What a pipeline uses of the engine running it (``Engine``)."""

    @property
    def ctx(self) -> Context: ...

    @property
    def drivers(self) -> dict[str, base.Compressor]: ...


def upload(engine: Parts, progress: Progress, src: str, dst: str,
           src_format: str, disk_format: str,
           opts: Options) -> records.Result:
    ctx = engine.ctx
    disk_format = qemu_img.output_format(disk_format, 'upload')
    compressor = compression.select(engine.drivers, ctx.settings)
    with ctx.open_source(src) as source, \
            ctx.output(dst, replace=opts.replace) as out:
        before = source.identity()
        found, _ = images.inspect_source(ctx, source, src_format,
                                         ctx.settings.max_image_bytes)
        span = max(1, found.virtual_size)
        progress.set_total(2 * span)
        pack = Phase(progress, span, span)
        if found.format == 'raw' and _same_format(found.format, disk_format) \
                and not source.is_device:
            # Already raw, the wanted format, and inspected: compress the
            # source itself, once qemu-img agrees it is a sound image.  Only
            # raw: its bytes are the guest's and name nothing.  Any other
            # format is rewritten by the confined qemu-img, so a header its
            # owner changes after inspection (a backing file, through a
            # shared mmap with no trace in its times) is never published.
            _sound(ctx, source, found.format)
            packed = compression.compress_fds(compressor, source.fd, out.fd,
                                              pack, opts)
            images.check_unchanged(source, before)
            converted = False
        else:
            with out.sibling() as stage:
                images.convert_fds(ctx, Phase(progress, 0, span), source,
                                   stage, found.format, disk_format, opts)
                packed = compression.compress_fds(
                    compressor, stage.fd, out.fd, pack, opts)
            converted = True
        out.commit(progress)
    progress.set_done(2 * span)
    packed.update({'output': dst, 'disk_format': disk_format,
                   'virtual_size': found.virtual_size,
                   'converted': converted})
    return packed


def _sound(ctx: Context, source: files.Opened, fmt: str) -> None:
    """qemu-img check under limits: an image qemu-img itself refuses or
    finds corrupt is not uploaded as it is."""
    report = images.check_fd(ctx, source, fmt)
    if not report['clean'] and report.get('corruptions'):
        raise exception.ImageInspectionError(
            path=source.name, reason='qemu-img check found %s corruptions'
            % report['corruptions'])


def download(engine: Parts, progress: Progress, src: str, dst: str,
             disk_format: str, dst_format: str,
             opts: Options) -> records.Result:
    ctx = engine.ctx
    disk_format = qemu_img.input_format(disk_format, 'download')
    dst_format = qemu_img.output_format(dst_format, 'download')
    on_device = ctx.confinement.device_name(dst)
    max_bytes, checksum = opts.max_bytes, opts.checksum
    if on_device and opts.replace:
        # Refused before anything is read or written (see files.Output).
        raise exception.InvalidRequest(
            reason='replace is for file outputs, not block devices')
    # Off the device, the stage is published as the output (or its
    # sibling is): both may then replace an existing file.
    with ctx.open_source(src) as source, \
            ctx.output(stage_target(ctx, dst, on_device),
                       replace=opts.replace) as stage:
        size = max(1, source.size)
        progress.set_total(2 * size)
        unpacked = compression.decompress_fds(
            engine.drivers, source, stage.fd,
            compression.decompress_limit(ctx.settings, max_bytes),
            # The output's checksum is taken from what is published.
            Phase(progress, 0, size), dataclasses.replace(opts,
                                                          checksum=False))
        # Glance does not inspect 'compressed' containers: what came out
        # is untrusted and must pass inspection as the claimed format.
        inner = stage.as_source('the decompressed image (inside %s)' % src)
        found, _ = images.inspect_source(
            ctx, inner, disk_format,
            images.image_limit(ctx.settings, max_bytes))
        if _same_format(disk_format, dst_format) and not on_device:
            result: records.Result = {
                'output': dst, 'size': os.fstat(stage.fd).st_size,
                'engine': 'qemu-img:skipped', 'hardware': False,
                'sha256': (copy.sha256_fd(stage.fd, progress)
                           if checksum else None)}
            stage.commit(progress)
        else:
            with (ctx.output(dst, devices=True) if on_device
                  else stage.sibling()) as out:
                result = images.convert_fds(
                    ctx, Phase(progress, size, size), inner, out,
                    disk_format, dst_format, opts)
                if checksum and not out.is_device:
                    result['sha256'] = copy.sha256_fd(out.fd, progress)
                out.commit(progress)
            result['output'] = dst
    progress.set_done(2 * size)
    result.update({'decompress_engine': unpacked.get('engine'),
                   'decompress_hardware': unpacked.get('hardware', False),
                   'disk_format': disk_format,
                   'virtual_size': found.virtual_size, 'bytes_in': size,
                   'cpu_seconds': (result.get('cpu_seconds') or 0.0)
                   + (unpacked.get('cpu_seconds') or 0.0)})
    return result


def stage_target(ctx: Context, dst: str, on_device: bool) -> str:
    """Where download stages its decompressed image: beside the output (it
    is published as the output when no conversion is needed), or, for a
    device, in the first allowed directory under a name of its own."""
    if not on_device:
        return dst
    return os.path.join(ctx.confinement.dirs[0], paths.temp_name(
        'stage', secrets.token_hex(4)))


def _same_format(a: str, b: str) -> bool:
    return (qemu_img.ALIASES.get(a, a) == qemu_img.ALIASES.get(b, b))
