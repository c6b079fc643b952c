"""The two composed flows of cinder, each with atomic output.

upload   = inspect -> convert to the requested disk format -> compress
download = decompress (capped) -> inspect the inner image -> convert

Intermediate files live beside the destination, under temp names that
``paths.AtomicOutput`` removes on failure or cancellation; only the final
output is ever published.
"""

from __future__ import annotations

import os

from accel_daemon import exception
from accel_daemon.engine import compression
from accel_daemon.engine import images
from accel_daemon.engine import inspection
from accel_daemon.engine import paths
from accel_daemon.engine import qemu_img
from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine.progress import Phase
from accel_daemon.engine.progress import Progress
from accel_daemon.engine.settings import Settings


def upload(settings: Settings, policy: CommandPolicy, progress: Progress,
           compressor, src: str, dst: str, src_format: str,
           disk_format: str) -> dict:
    disk_format = qemu_img.output_format(disk_format, 'upload')
    src_real = paths.check_input(src, settings.allowed_dirs,
                                 settings.allowed_block_devices)
    dst_real = paths.check_output(dst, settings.allowed_dirs)
    found = inspection.inspect(src_real, src_format)
    span = max(1, found.virtual_size)
    progress.set_total(2 * span)
    mode = settings.output_file_mode
    with paths.AtomicOutput(dst_real, mode) as stage, \
            paths.AtomicOutput(dst_real, mode) as out:
        if _same_format(src_format, disk_format) and \
                not paths.is_block_device(src_real):
            # Already in the wanted format and inspected: compress the
            # source directly instead of copying it first.
            staged, converted = src_real, None
        else:
            converted = images.convert_file(
                src_real, stage.path, src_format, disk_format, settings,
                policy, Phase(progress, 0, span), dst_fd=stage.fd)
            staged = stage.path
        packed = compression.compress_file(
            staged, paths.fd_ref(out.fd), compressor,
            Phase(progress, span, span))
        out.commit()
    progress.set_done(2 * span)
    packed.update(output=dst_real, disk_format=disk_format,
                  virtual_size=found.virtual_size,
                  converted=converted is not None)
    return packed


def download(settings: Settings, policy: CommandPolicy, progress: Progress,
             src: str, dst: str, disk_format: str, dst_format: str,
             max_bytes: int | None = None) -> dict:
    disk_format = qemu_img.input_format(disk_format, 'download')
    dst_format = qemu_img.output_format(dst_format, 'download')
    src_real = paths.check_input(src, settings.allowed_dirs)
    dst_real = paths.check_output(dst, settings.allowed_dirs,
                                  settings.allowed_block_devices)
    on_device = paths.is_block_device(dst_real)
    size = os.stat(src_real).st_size
    progress.set_total(2 * max(1, size))
    mode = settings.output_file_mode
    with paths.AtomicOutput(stage_target(settings, dst_real, on_device),
                            mode) as stage:
        unpacked = compression.decompress_file(
            src_real, paths.fd_ref(stage.fd), settings, policy,
            Phase(progress, 0, max(1, size)), max_bytes)
        # Glance does not inspect 'compressed' containers: what came out
        # is untrusted and must pass inspection as the claimed format.
        found = _inspect_inner(stage.path, src_real, disk_format)
        if _same_format(disk_format, dst_format) and not on_device:
            _publish_stage(stage, dst_real)
            result = {'output': dst_real, 'size': os.stat(dst_real).st_size,
                      'engine': 'qemu-img:skipped', 'hardware': False}
        else:
            result = _convert_out(settings, policy, progress, stage.path,
                                  dst_real, disk_format, dst_format,
                                  on_device, max(1, size))
    progress.set_done(2 * max(1, size))
    result.update(decompress_engine=unpacked.get('engine'),
                  decompress_hardware=unpacked.get('hardware', False),
                  disk_format=disk_format, virtual_size=found.virtual_size,
                  bytes_in=size,
                  cpu_seconds=(result.get('cpu_seconds') or 0.0)
                  + (unpacked.get('cpu_seconds') or 0.0))
    return result


def stage_target(settings: Settings, dst_real: str, on_device: bool) -> str:
    """Where download stages its decompressed image: beside the output, or
    in the first allowed directory (by its real path) for a device."""
    if not on_device:
        return dst_real
    root = os.path.realpath(settings.allowed_dirs[0])
    return os.path.join(root, os.path.basename(dst_real))


def _inspect_inner(stage_path: str, src_real: str,
                   disk_format: str) -> inspection.Inspected:
    try:
        return inspection.inspect(stage_path, disk_format)
    except exception.ImageInspectionError as e:
        # Name the container the caller gave, not our temp file.
        raise type(e)('%s (inside %s)' % (
            e.message.replace('Image ' + stage_path, 'The decompressed image'),
            src_real), **e.fields)


def _convert_out(settings, policy, progress, stage_path, dst_real, disk_format,
                 dst_format, on_device, span) -> dict:
    phase = Phase(progress, span, span)
    if on_device:
        return images.convert_file(stage_path, dst_real, disk_format,
                                   dst_format, settings, policy, phase,
                                   existing_target=True)
    with paths.AtomicOutput(dst_real, settings.output_file_mode) as out:
        result = images.convert_file(stage_path, out.path, disk_format,
                                     dst_format, settings, policy, phase,
                                     dst_fd=out.fd)
        out.commit()
    result['output'] = dst_real
    return result


def _publish_stage(stage: paths.AtomicOutput, dst_real: str) -> None:
    # Same directory, same file system: publishing the stage is a link.
    stage.final = dst_real
    stage.commit()


def _same_format(a: str, b: str) -> bool:
    return (qemu_img.ALIASES.get(a, a) == qemu_img.ALIASES.get(b, b))
