"""Image operations with qemu-img: info, convert, check, compare, measure.

Each public function validates its paths (paths.check_input/check_output),
inspects every input (inspection.inspect: format_inspector + safety check +
claimed == detected) and only then runs qemu-img, always with the format
forced, through process.run (filter check, no shell, cancellable).

Cache modes chosen for convert (measured on this machine, see the report of
the qemu-img work; qcow2 -> raw of 1 GiB of data):
- target: 'none' where O_DIRECT works on the actual destination (the temp
  file itself, or the device), else 'writeback'.  Never 'writethrough': it
  flushes after every write and buys nothing, because AtomicOutput fsyncs
  the finished file before publishing it.
- source: 'none' for block devices where O_DIRECT works (a volume is read
  once; going through the page cache would evict the host's useful cache),
  'writeback' for files (they are usually warm: we just downloaded or
  decompressed them, and the page cache gives qcow2 metadata readahead).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from typing import Any

from accel_daemon import exception
from accel_daemon.engine import inspection
from accel_daemon.engine import paths
from accel_daemon.engine import process
from accel_daemon.engine import qemu_img
from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine.progress import Progress
from accel_daemon.engine.settings import Settings

LOG = logging.getLogger(__name__)

ENGINE = 'qemu-img'


# --- helpers --------------------------------------------------------------
def _input(path: str, fmt: str,
           settings: Settings) -> tuple[str, inspection.Inspected]:
    real = paths.check_input(path, settings.allowed_dirs,
                             settings.allowed_block_devices)
    return real, inspection.inspect(real, fmt)


def _info_limits(settings: Settings) -> process.Limits:
    return process.Limits(cpu_seconds=settings.info_cpu_seconds,
                          address_space=settings.info_address_space)


def _metadata_limits(settings: Settings) -> process.Limits:
    # check/measure read metadata only, but their time grows with the image
    # size: bound memory, not CPU.
    return process.Limits(address_space=settings.info_address_space)


def inspected_info(real: str, fmt: str, settings: Settings,
                   policy: CommandPolicy, fd: int | None = None) -> dict:
    """qemu-img info on an input that inspection.inspect() already passed.

    Runs under the info resource limits (a crafted image must not make
    qemu-img spin or allocate without bound) and re-checks qemu-img's own
    view (format, backing file, data file, extents) as defence in depth.
    qemu-img gets the inspected descriptor (``fd``, else ``real`` opened
    with paths.open_checked), never the path: see convert_file().
    """
    if fd is None:
        fd = paths.open_checked(real)
        try:
            return inspected_info(real, fmt, settings, policy, fd)
        finally:
            os.close(fd)
    arg = qemu_img.fd_arg(fd)
    result = process.run(qemu_img.info_cmd(arg, fmt), policy,
                         limits=_info_limits(settings), pass_fds=(fd,))
    data = qemu_img.parse_info(result.stdout, real)
    qemu_img.validate_info(data, real, fmt, opened_as=arg)
    data['filename'] = real
    return data


# --- info / check / compare / measure --------------------------------------
def version(policy: CommandPolicy) -> str | None:
    """qemu-img's version line, or None when it is missing or forbidden."""
    try:
        result = process.run(qemu_img.version_cmd(), policy)
    except (exception.CommandDenied, exception.ProcessFailed, OSError):
        return None
    return qemu_img.parse_version(result.stdout) or None


def info(path: str, fmt: str, settings: Settings,
         policy: CommandPolicy) -> dict:
    """Validated, inspected ``qemu-img info`` of ``path`` as a dict."""
    real = paths.check_input(path, settings.allowed_dirs,
                             settings.allowed_block_devices)
    fd = paths.open_checked(real)
    try:
        found = inspection.inspect_fd(fd, real, fmt)
        return inspected_info(real, found.format, settings, policy, fd)
    finally:
        os.close(fd)


def check(path: str, fmt: str, settings: Settings,
          policy: CommandPolicy) -> dict:
    """``qemu-img check``; adds 'supported' and 'clean' to its report."""
    real, found = _input(path, fmt, settings)
    result = process.run(qemu_img.check_cmd(real, found.format), policy,
                         limits=_metadata_limits(settings), check=False)
    if result.returncode == qemu_img.CHECK_UNSUPPORTED:
        return {'filename': real, 'format': found.format,
                'supported': False, 'clean': True}
    if result.returncode not in qemu_img.CHECK_REPORTED:
        raise _failed(result)
    report = qemu_img.parse_check(result.stdout, real)
    report['supported'] = True
    report['clean'] = result.returncode == 0
    return report


def compare(path1: str, fmt1: str, path2: str, fmt2: str,
            settings: Settings, policy: CommandPolicy,
            progress: Progress | None = None) -> dict:
    """``qemu-img compare``: {'identical': bool} (guest-visible content)."""
    real1, found1 = _input(path1, fmt1, settings)
    real2, found2 = _input(path2, fmt2, settings)
    argv = qemu_img.compare_cmd(real1, found1.format, real2, found2.format)
    result = process.run(argv, policy, progress=progress, check=False)
    identical = qemu_img.compare_result(result.returncode)
    if identical is None:
        raise _failed(result)
    return {'identical': identical}


def measure(path: str, src_fmt: str, dst_fmt: str, settings: Settings,
            policy: CommandPolicy) -> dict:
    """``qemu-img measure``: bytes needed to convert ``path`` to dst_fmt."""
    real, found = _input(path, src_fmt, settings)
    argv = qemu_img.measure_cmd(real, found.format, dst_fmt)
    result = process.run(argv, policy, limits=_metadata_limits(settings))
    return qemu_img.parse_measure(result.stdout, real)


def _failed(result: process.Result) -> exception.ProcessFailed:
    return exception.ProcessFailed(
        command=' '.join(result.argv), exit_code=result.returncode,
        stderr=result.stderr.decode('utf-8', 'replace')[-2000:].strip())


# --- convert --------------------------------------------------------------
def convert(src: str, dst: str, src_format: str, dst_format: str,
            settings: Settings, policy: CommandPolicy,
            progress: Progress | None = None, compress: bool = False,
            target_is_zero: bool = False) -> dict:
    """Convert ``src`` into a new file ``dst`` or onto an allowed device.

    File outputs are written to an AtomicOutput temp name and published only
    on success; on failure or Cancelled nothing is left.  Block devices
    (settings.allowed_block_devices) are written in place with -n, plus
    --target-is-zero when the caller guarantees the device reads as zeros.
    """
    progress = progress or Progress()
    dst_fmt = qemu_img.output_format(dst_format, 'convert')
    src_real = paths.check_input(src, settings.allowed_dirs,
                                 settings.allowed_block_devices)
    on_device = paths.allowed_block_device(dst, settings.allowed_block_devices)
    dst_real = paths.check_output(dst, settings.allowed_dirs,
                                  settings.allowed_block_devices)
    if target_is_zero and not on_device:
        raise exception.InvalidRequest(
            reason='target_is_zero is only valid for a block device output')
    if on_device and compress:
        raise exception.InvalidRequest(
            reason='compressed output is only written to files')
    if on_device:
        return convert_file(src_real, dst_real, src_format, dst_fmt,
                            settings, policy, progress, compress=compress,
                            existing_target=True,
                            target_is_zero=target_is_zero)
    with paths.AtomicOutput(dst_real, settings.output_file_mode) as out:
        result = convert_file(src_real, out.path, src_format, dst_fmt,
                              settings, policy, progress, compress=compress,
                              dst_fd=out.fd)
        out.commit()
    result['output'] = dst_real
    return result


def convert_file(src_real: str, dst_path: str, src_format: str,
                 dst_format: str, settings: Settings, policy: CommandPolicy,
                 progress: Progress | None = None, *, compress: bool = False,
                 existing_target: bool = False,
                 target_is_zero: bool = False,
                 dst_fd: int | None = None) -> dict:
    """Low level convert used by convert() and the pipelines.

    ``src_real`` must already be validated (paths.check_input); it is
    inspected here regardless (milliseconds, and it is the safety gate, so
    callers cannot forget it).  ``dst_path`` belongs to the caller: a temp
    file in an allowed directory (qemu-img recreates it) or, with
    ``existing_target``, a device written in place with -n.  The caller
    publishes or removes ``dst_path``; this function does neither.
    ``dst_fd`` is the caller's open descriptor of ``dst_path``
    (AtomicOutput.fd); without it ``dst_path`` is opened here.

    qemu-img is given both files as /dev/fd/N of descriptors opened here
    (O_NOFOLLOW, path re-checked), never as paths: a path is resolved
    again by qemu-img, and the owner of an allowed directory can swap the
    source or the temp output for a symlink to any host file in between
    (reading it into the output, or overwriting it as root).
    """
    progress = progress or Progress()
    dst_fmt = qemu_img.output_format(dst_format, 'convert')
    src_fd = paths.open_checked(src_real)
    own_dst = dst_fd is None
    try:
        if own_dst:
            dst_fd = paths.open_checked(dst_path, os.O_RDWR)
        return _convert_fds(src_real, src_fd, dst_path, dst_fd, src_format,
                            dst_fmt, settings, policy, progress, compress,
                            existing_target, target_is_zero)
    finally:
        os.close(src_fd)
        if own_dst and dst_fd is not None:
            os.close(dst_fd)


def _convert_fds(src_real: str, src_fd: int, dst_path: str, dst_fd: int,
                 src_format: str, dst_fmt: str, settings: Settings,
                 policy: CommandPolicy, progress: Progress, compress: bool,
                 existing_target: bool, target_is_zero: bool) -> dict:
    before = _identity(src_fd)
    found = inspection.inspect_fd(src_fd, src_real, src_format)
    src_info = inspected_info(src_real, found.format, settings, policy,
                              src_fd)
    virtual_size = int(src_info['virtual-size'])
    progress.set_total(virtual_size)
    progress.check()
    argv = _convert_argv(src_real, src_fd, dst_fd, found.format, dst_fmt,
                         settings, compress, existing_target, target_is_zero)
    parser = qemu_img.ProgressParser()

    def on_output(chunk: bytes) -> None:
        fraction = parser.feed(chunk)
        if fraction is not None:
            progress.set_fraction(fraction)

    result = process.run(argv, policy, progress=progress, on_output=on_output,
                         pass_fds=(src_fd, dst_fd))
    _unchanged(src_fd, src_real, before)
    progress.set_done(virtual_size)
    return _convert_result(dst_path, dst_fd, dst_fmt, virtual_size, argv,
                           result)


def _identity(fd: int) -> tuple | None:
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        return None       # a device node's times do not follow its data
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _unchanged(fd: int, path: str, before: tuple | None) -> None:
    """Refuse the output if the source changed after it was inspected.

    The owner of an allowed directory owns the images in it and may rewrite
    one between inspection and the end of the conversion, e.g. add a
    backing file or data-file to a qcow2 header (CVE-2024-32498 class) and
    restore it afterwards.  Any write moves ctime, which only root can set
    back, so comparing fstat before inspection and after qemu-img exits
    catches it; the output, still private to root, is then discarded.
    """
    if before is not None and _identity(fd) != before:
        raise exception.UnsafeImage(
            path=path, reason='the image was modified while it was being '
                              'inspected or converted')


def _convert_argv(src: str, src_fd: int, dst_fd: int, src_fmt: str,
                  dst_fmt: str, settings: Settings, compress: bool,
                  existing_target: bool, target_is_zero: bool) -> list[str]:
    is_device = stat.S_ISBLK(os.fstat(dst_fd).st_mode)
    return qemu_img.convert_cmd(
        qemu_img.fd_arg(src_fd), qemu_img.fd_arg(dst_fd), src_fmt, dst_fmt,
        src_cache=source_cache_mode(src),
        dst_cache=target_cache_mode(qemu_img.proc_fd_path(dst_fd),
                                    existing_target),
        coroutines=settings.convert_coroutines,
        # -W: raw has no metadata whose order matters, and out-of-order
        # writes keep all coroutines busy on slow or remote storage (4.2 s
        # -> 0.7 s at 2 ms write latency).  qcow2 would fragment.
        unordered=dst_fmt == 'raw' or is_device,
        existing_target=existing_target,
        target_is_zero=target_is_zero, compress=compress)


def source_cache_mode(path: str) -> str:
    if paths.is_block_device(path) and qemu_img.probe_direct_io(path, False):
        return qemu_img.CACHE_NONE
    return qemu_img.CACHE_WRITEBACK


def target_cache_mode(path: str, existing_target: bool = False) -> str:
    """'none' if O_DIRECT works on the actual destination, else 'writeback'.

    The destination normally exists (AtomicOutput's temp file or a device);
    if the caller has not created it, probe a scratch file beside it.  An
    existing target (-n) is only read: its content must survive the probe.
    """
    if os.path.lexists(path):
        works = qemu_img.probe_direct_io(path, write=not existing_target)
    else:
        works = _probe_beside(path)
    return qemu_img.CACHE_NONE if works else qemu_img.CACHE_WRITEBACK


def _probe_beside(path: str) -> bool:
    scratch = os.path.join(os.path.dirname(path), '%sprobe.%s%s' % (
        paths.TEMP_PREFIX, secrets.token_hex(4), paths.TEMP_SUFFIX))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        os.close(os.open(scratch, flags, 0o600))
    except OSError:
        return False
    try:
        return qemu_img.probe_direct_io(scratch, write=True)
    finally:
        os.unlink(scratch)


def _convert_result(dst: str, dst_fd: int, dst_fmt: str, virtual_size: int,
                    argv: list[str], result: process.Result) -> dict[str, Any]:
    st = os.fstat(dst_fd)
    if stat.S_ISBLK(st.st_mode):
        size = virtual_size
    else:
        size = st.st_size
    return {'output': dst, 'size': size, 'engine': ENGINE,
            'hardware': False, 'cpu_seconds': result.cpu_seconds,
            'wall_seconds': result.wall_seconds,
            'virtual_size': virtual_size,
            'cache_mode': argv[argv.index('-t') + 1],
            'source_cache_mode': argv[argv.index('-T') + 1],
            'format': dst_fmt}
