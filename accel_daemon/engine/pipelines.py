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

from collections.abc import Callable
from collections.abc import Iterator
import contextlib
import dataclasses
import hashlib
import os
import secrets
import time
from typing import ContextManager, Protocol

from accel_daemon.engine import compression
from accel_daemon.engine.context import Context
from accel_daemon.engine import copy
from accel_daemon.engine import driver as base
from accel_daemon.engine import files
from accel_daemon.engine import images
from accel_daemon.engine import inspection
from accel_daemon.engine import paths
from accel_daemon.engine.progress import Phase
from accel_daemon.engine.progress import Progress
from accel_daemon.engine import qemu_img
from accel_daemon.engine import sparse
from accel_daemon.engine import streams
from accel_daemon.engine import throttle
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
    if disk_format == 'raw' and _same_format(disk_format, dst_format):
        return _download_raw(engine, progress, src, dst, opts)
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


def _download_raw(engine: Parts, progress: Progress, src: str, dst: str,
                  opts: Options) -> records.Result:
    """``download`` of a raw image to raw: inflated by the unprivileged
    decoding child straight into ``dst``, its start judged before the
    first write (as ``stream_in`` does), no stage."""
    ctx = engine.ctx
    started = time.monotonic()
    device = bool(ctx.confinement.device_name(dst))
    with ctx.open_source(src) as source:
        fmt = compression.detect_format(source)
        if opts.container is not None and fmt != opts.container:
            raise exception.CorruptInput(
                path=src, reason='%s data where %s was announced'
                % (fmt, opts.container))
        decoder = compression.decoder_for(engine.drivers, fmt)
        bytes_in = source.size
        size = max(1, bytes_in)
        progress.set_total(size)
        name = 'the decompressed image (inside %s)' % src
        hasher = hashlib.sha256() if opts.checksum else None
        with decoder.open_decompressed(source.fd, progress) as stream:
            head, _ = inspection.inspect_head(stream, name, 'raw')
            with ctx.output(dst, devices=True,
                            replace=opts.replace) as out:
                written = sparse.copy_capped(
                    _Prefixed(head, stream), out.fd, sparse.Flow(
                        images.image_limit(ctx.settings, opts.max_bytes),
                        name, progress,
                        sparse=(opts.target_is_zero if out.is_device
                                else opts.sparse),
                        hasher=None if device else hasher,
                        pacer=throttle.pacer(opts.bps_limit, progress),
                        room=None if out.is_device else sparse.room(out.fd),
                        truncate=not out.is_device,
                        zero_range=out.is_device))
                out.commit(progress)
    progress.set_done(size)
    return {'output': dst, 'size': written, 'virtual_size': written,
            'disk_format': 'raw', 'format': 'raw', 'bytes_in': bytes_in,
            'engine': 'stream', 'hardware': False,
            'decompress_engine': decoder.name,
            'decompress_hardware': decoder.hardware,
            'sha256': hasher.hexdigest() if hasher and not device else None,
            'cpu_seconds': stream.cpu_seconds,
            'wall_seconds': time.monotonic() - started}


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


# --- stream_in ---------------------------------------------------------------
class StreamParts(Parts, Protocol):
    """What ``stream_in`` uses of the engine besides ``Parts``."""

    @property
    def stream_key(self) -> bytes: ...

    def stream_slot(self) -> ContextManager[None]: ...


class _Prefixed:
    """``head`` (what inspection read), then the rest of ``stream``."""

    def __init__(self, head: bytes, stream: sparse.Readable) -> None:
        self._head = memoryview(head)
        self._stream = stream

    def readinto(self, buf: bytearray | memoryview) -> int:
        if self._head:
            n = min(len(buf), len(self._head))
            memoryview(buf).cast('B')[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._stream.readinto(buf)


class _Decoded:
    """The bytes of a gzip (or zstd) stream, inflated by an unprivileged
    child that reads them from a pipe; a failure of the stream itself
    (abort, a writer gone) is reported as such, not as the corrupt input
    the child then sees."""

    def __init__(self, feeder: streams.Feeder,
                 stream: sparse.Readable) -> None:
        self.feeder = feeder
        self._stream = stream

    def readinto(self, buf: bytearray | memoryview) -> int:
        try:
            return self._stream.readinto(buf)
        except exception.AccelError:
            # The child gave up (or saw its input end): a stream that
            # failed first is the reason; else the child's own.
            self.feeder.close()
            self.feeder.raise_error()
            raise


@contextlib.contextmanager
def _decoded(engine: StreamParts, conn: streams.Connection,
             container: str | None,
             progress: Progress) -> Iterator[tuple[sparse.Readable, str]]:
    """The image bytes of ``conn`` and what decoded them."""
    if container is None:
        yield conn, 'none'
        return
    decoder = compression.decoder_for(engine.drivers, container)
    feeder = streams.Feeder(conn)
    try:
        with decoder.open_decompressed(feeder.read_fd, progress) as inner:
            yield _Decoded(feeder, inner), decoder.name
        feeder.join()
        feeder.raise_error()
    finally:
        feeder.close()


def stream_in(engine: StreamParts, progress: Progress, dst: str,
              disk_format: str, dst_format: str,
              opts: Options) -> records.Result:
    """Write the image a caller streams (``engine.streams``) to ``dst``.

    The start of the (inflated) image is judged before anything is
    written (``inspection.inspect_head``: one format, the claimed one,
    safe).  A raw image written as raw goes straight to ``dst``: holes for
    zeros in a new file, every byte on a device.  Any other goes into one
    unnamed stage, is inspected whole and converted as ``download`` does.
    Nothing is published before the writer's ``complete`` trailer.
    """
    ctx = engine.ctx
    disk_format = qemu_img.input_format(disk_format, 'stream_in')
    dst_format = qemu_img.output_format(dst_format, 'stream_in')
    on_device = ctx.confinement.device_name(dst)
    if on_device and opts.replace:
        raise exception.InvalidRequest(
            reason='replace is for file outputs, not block devices')
    name = 'the stream of task %s' % progress.task_id
    limit = images.image_limit(ctx.settings, opts.max_bytes)
    direct = disk_format == 'raw' and _same_format(disk_format, dst_format)
    started = time.monotonic()
    with engine.stream_slot(), \
            streams.accept(ctx.settings, engine.stream_key, progress,
                           progress.task_id) as conn, \
            _decoded(engine, conn, opts.container, progress) as (data,
                                                                 decoder):
        head, detected = inspection.inspect_head(data, name, disk_format)
        image = _Prefixed(head, data)
        if direct:
            with ctx.output(dst, devices=True, replace=opts.replace) as out:
                # Zeros are holes in a new file and skipped on a device
                # that reads as zeros; on any other device they are
                # zeroed with fallocate(ZERO_RANGE) where it can, else
                # written.
                size = sparse.copy_capped(image, out.fd, sparse.Flow(
                    limit, name, progress,
                    sparse=(opts.target_is_zero if out.is_device
                            else opts.sparse),
                    room=None if out.is_device else sparse.room(out.fd),
                    truncate=not out.is_device, zero_range=out.is_device))
                _complete(conn, data)
                out.commit(progress)
            result: records.Result = {
                'size': size, 'virtual_size': size,
                'engine': 'stream', 'hardware': False}
        else:
            result = _staged(ctx, progress, image, conn, data, name, dst,
                             on_device, disk_format, dst_format, limit, opts)
    result.update({'output': dst, 'disk_format': disk_format,
                   'format': dst_format, 'bytes_in': conn.received,
                   'decompress_engine': decoder, 'sha256': None,
                   'wall_seconds': time.monotonic() - started})
    return result


def _complete(conn: streams.Connection, data: sparse.Readable) -> None:
    """The writer's trailer says the stream is whole (the decoder, if
    any, consumed it all: its feeder stopped at the trailer)."""
    if isinstance(data, _Decoded):
        data.feeder.join()
        data.feeder.raise_error()
    conn.finish()


def _staged(ctx: Context, progress: Progress, image: sparse.Readable,
            conn: streams.Connection, data: sparse.Readable, name: str,
            dst: str, on_device: bool, disk_format: str, dst_format: str,
            limit: int, opts: Options) -> records.Result:
    with ctx.output(stage_target(ctx, dst, on_device),
                    replace=opts.replace) as stage:
        sparse.copy_capped(image, stage.fd, sparse.Flow(
            compression.decompress_limit(ctx.settings, None), name,
            progress, room=sparse.room(stage.fd)))
        _complete(conn, data)
        inner = stage.as_source(name)
        found, _ = images.inspect_source(ctx, inner, disk_format, limit)
        if _same_format(disk_format, dst_format) and not on_device:
            stage.commit(progress)
            return {'size': os.fstat(stage.fd).st_size,
                    'virtual_size': found.virtual_size,
                    'engine': 'stream', 'hardware': False}
        with (ctx.output(dst, devices=True) if on_device
              else stage.sibling()) as out:
            result = images.convert_fds(ctx, progress, inner, out,
                                        disk_format, dst_format, opts)
            out.commit(progress)
    result['virtual_size'] = found.virtual_size
    return result


# --- stream_out --------------------------------------------------------------
def stream_out(engine: StreamParts, progress: Progress, src: str,
               src_format: str, disk_format: str, compression: str | None,
               opts: Options) -> records.Result:
    """Send the image of ``src``, as ``disk_format`` and compressed with
    ``compression`` (None: as it is), to the task's reader
    (``engine.streams``).

    The source is inspected first, as ``upload`` does.  A raw source sent
    as raw is read once, straight from the file or device, and compressed
    on all cores while it is sent.  Any other is converted by the
    confined qemu-img into one unnamed stage (beside the source, or in
    the first allowed directory for a device), which is then sent; its
    clusters are compressed (``opts.compress``) only when nothing
    compresses what is sent (an image is deflated once).  The
    ``complete`` trailer goes only once everything sent is checked (the
    source unchanged since its inspection); any failure sends ``abort``.
    """
    ctx = engine.ctx
    disk_format = qemu_img.output_format(disk_format, 'stream_out')
    comp = None if compression is None else compression_select(
        engine, compression)
    name = 'the stream of task %s' % progress.task_id
    started = time.monotonic()
    with ctx.open_source(src) as source:
        before = source.identity()
        found, _ = images.inspect_source(ctx, source, src_format,
                                         ctx.settings.max_image_bytes)
        span = max(1, found.virtual_size)
        progress.set_total(2 * span)
        with contextlib.ExitStack() as stack:
            if found.format == 'raw' and _same_format(found.format,
                                                      disk_format):
                # Raw bytes are the guest's and name nothing: sent as
                # they are, read once.
                image, converted = source, False
            else:
                stage = stack.enter_context(ctx.output(stage_target(
                    ctx, src, True) if source.is_device else
                    os.path.join(os.path.dirname(src), paths.temp_name(
                        'stage', secrets.token_hex(4)))))
                images.convert_fds(
                    ctx, Phase(progress, 0, span), source, stage,
                    found.format, disk_format,
                    # Deflated once: compressed clusters only when
                    # nothing compresses what is sent.
                    dataclasses.replace(opts, max_bytes=None,
                                        compress=opts.compress
                                        and comp is None))
                image, converted = stage.as_source(name), True
            result = _send(engine, progress, Phase(progress, span, span),
                           image, comp, opts,
                           lambda: images.check_unchanged(source, before))
    progress.set_done(2 * span)
    result.update({'disk_format': disk_format, 'converted': converted,
                   'virtual_size': found.virtual_size,
                   'wall_seconds': time.monotonic() - started})
    return result


def compression_select(engine: Parts, fmt: str) -> base.Compressor:
    return compression.select(engine.drivers, engine.ctx.settings, fmt)


def _send(engine: StreamParts, progress: Progress, phase: Progress,
          image: files.Opened, comp: base.Compressor | None, opts: Options,
          verdict: Callable[[], None]) -> records.Result:
    """Stream ``image`` (compressed by ``comp``) to the reader of
    ``progress``'s task (``phase``: the part of its progress this is);
    ``verdict`` raises if what was sent must not count."""
    settings = engine.ctx.settings
    with engine.stream_slot(), \
            streams.admitted(settings, engine.stream_key, progress,
                             progress.task_id) as (sock, deadline):
        sender = streams.Sender(sock, progress.task_id, progress,
                                float(settings.stream_idle_timeout),
                                deadline)
        try:
            result = _pump(image, sender, comp, phase, opts)
            verdict()
            sender.complete()
        except BaseException as e:
            sender.abort('%s: %s' % (type(e).__name__, e))
            raise
    result['bytes_out'] = sender.sent
    return result


def _pump(image: files.Opened, sender: streams.Sender,
          comp: base.Compressor | None, progress: Progress,
          opts: Options) -> records.Result:
    pump = streams.Pump(sender)
    try:
        if comp is None:
            copied = copy.copy_fd_to_pipe(image.fd, pump.write_fd,
                                          progress, opts.bps_limit)
            result: records.Result = {
                'engine': 'stream', 'hardware': False,
                'bytes_in': copied, 'cpu_seconds': 0.0}
        else:
            result = compression.compress_fds(
                comp, image.fd, pump.write_fd, progress,
                dataclasses.replace(opts, checksum=False))
            result['format'] = comp.output_format
    except BaseException:
        pump.finish()
        # The reader's failure, if any, is why the producer stopped.
        pump.raise_error()
        raise
    pump.finish()
    pump.raise_error()
    result['size'] = sender.sent
    return result
