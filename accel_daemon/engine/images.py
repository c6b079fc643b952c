# SPDX-License-Identifier: Apache-2.0
"""Image operations with qemu-img: info, convert, check, compare, measure.

Every input is opened once (``Context.open_source``) and inspected through
that descriptor (format_inspector + safety check + claimed == detected,
``inspection.inspect_fd``); only then does qemu-img see it, always with the
format forced, and never by a path (a path would be resolved again, and
the owner of an allowed directory can swap it for a symlink to any host
file in between): each input, and a block device written in place, is
served to qemu-img over NBD on a socket pair from the very descriptor that
was checked (``engine.nbd``), with the format pinned and backing files
switched off (``backing: null``).  qemu-img opens no file of ours and needs
no capability; a new output file is lent to the tool user and handed over
as ``/dev/fd/N``.

Cache modes chosen for convert (measured on this machine; qcow2 -> raw of
1 GiB of data):
- target: 'none' where O_DIRECT works on the actual destination (the temp
  file itself), else 'writeback'.  Never 'writethrough': it flushes after
  every write and buys nothing, because the output is fsynced before it is
  published.  A device is written by the NBD server, flushed when qemu-img
  flushes.
- source: served by the NBD server through the page cache; for a block
  device it drops what it read (a volume is read once and must not evict
  the host's useful cache), which is what 'none' reports.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import logging
import os
import threading

from accel_daemon.engine.context import Context
from accel_daemon.engine import copy
from accel_daemon.engine import files
from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine import inspection
from accel_daemon.engine import nbd
from accel_daemon.engine import process
from accel_daemon.engine.progress import Progress
from accel_daemon.engine import qemu_img
from accel_daemon.engine.settings import Settings
from accel_daemon.engine import sparse
from accel_daemon import exception
from accel_daemon.options import Options
from accel_daemon import records

LOG = logging.getLogger(__name__)

ENGINE = 'qemu-img'


def _info_limits(settings: Settings) -> process.Limits:
    return process.Limits(cpu_seconds=settings.info_cpu_seconds,
                          address_space=settings.info_address_space)


def _metadata_limits(settings: Settings) -> process.Limits:
    # check/measure read metadata only, but their time grows with the image
    # size: bound memory, not CPU.
    return process.Limits(address_space=settings.info_address_space)


def image_limit(settings: Settings, max_bytes: int | None) -> int:
    """The largest virtual size a request may produce: the caller's
    ``max_bytes`` within the host's ``max_image_bytes``."""
    limit = settings.max_image_bytes
    if max_bytes:
        limit = min(limit, int(max_bytes))
    return limit


# --- inspection -----------------------------------------------------------
def inspected_info(ctx: Context, src: files.Opened, fmt: str) -> dict:
    """qemu-img info of an input that inspection already passed.

    Runs under the info resource limits (a crafted image must not make
    qemu-img spin or allocate without bound) and re-checks qemu-img's own
    view (format, backing file, data file, extents) as defence in depth.
    """
    with nbd.Serving() as serving:
        arg = serving.image(src.fd, qemu_img.input_format(fmt, 'info'))
        try:
            result = process.run(qemu_img.info_cmd(arg, fmt), ctx.policy,
                                 limits=_info_limits(ctx.settings),
                                 pass_fds=serving.fds)
        except exception.ProcessFailed as e:
            refuse_shrunk(src, serving)
            # qemu-img cannot open it (e.g. "Active L1 table too large")
            # or hit the limits: the image is refused, not our failure.
            raise exception.ImageInspectionError(
                path=src.name, reason='qemu-img info failed: %s'
                % (e.fields.get('stderr') or 'exit code %s'
                   % e.fields.get('exit_code')))
    refuse_shrunk(src, serving)
    data = qemu_img.parse_info(result.stdout, src.name)
    qemu_img.validate_info(data, src.name, fmt, opened_as=arg)
    data['filename'] = src.name
    return data


def inspect_source(ctx: Context, src: files.Opened, fmt: str,
                   limit: int | None = None
                   ) -> tuple[inspection.Inspected, dict]:
    """Inspect ``src`` as ``fmt``, then ``qemu-img info`` it; refuse an
    image whose virtual size is above ``limit`` before anything is
    written (a tiny qcow2 can claim, and a "cluster bomb" can fill,
    terabytes)."""
    found = inspection.inspect_fd(src.fd, src.name, fmt)
    info = inspected_info(ctx, src, found.format)
    virtual = int(info['virtual-size'])
    if limit is not None and virtual > limit:
        raise exception.SizeLimitExceeded(path=src.name, limit=limit)
    return found, info


def info(ctx: Context, path: str, fmt: str) -> dict:
    """Validated, inspected ``qemu-img info`` of ``path`` as a dict."""
    with ctx.open_source(path) as src:
        found = inspection.inspect_fd(src.fd, src.name, fmt)
        return inspected_info(ctx, src, found.format)


# --- check / compare / measure ---------------------------------------------
_VERSIONS: dict[tuple, str | None] = {}


def version(policy: CommandPolicy) -> str | None:
    """qemu-img's version line, or None when it is missing or forbidden.

    The filters are asked every time (a reload that forbids qemu-img shows
    at once); the answer of one executable file is cached (capabilities
    ask often, and each exec costs a few milliseconds).
    """
    try:
        argv = policy.check(qemu_img.version_cmd())
        st = os.stat(argv[0])
    except (exception.AccelError, OSError):
        return None
    key = (argv[0], st.st_dev, st.st_ino, st.st_mtime_ns)
    if key not in _VERSIONS:
        try:
            result = process.run(qemu_img.version_cmd(), policy)
        except (exception.AccelError, OSError):
            return None
        _VERSIONS[key] = qemu_img.parse_version(result.stdout) or None
    return _VERSIONS[key]


def check_fd(ctx: Context, src: files.Opened, fmt: str) -> dict:
    """``qemu-img check`` of an inspected input; adds 'supported' and
    'clean' to its report."""
    with nbd.Serving() as serving:
        arg = serving.image(src.fd, qemu_img.input_format(fmt, 'check'))
        result = process.run(qemu_img.check_cmd(arg, fmt), ctx.policy,
                             limits=_metadata_limits(ctx.settings),
                             check=False, pass_fds=serving.fds)
    refuse_shrunk(src, serving)
    if result.returncode == qemu_img.CHECK_UNSUPPORTED:
        return {'filename': src.name, 'format': fmt, 'supported': False,
                'clean': True}
    if result.returncode not in qemu_img.CHECK_REPORTED:
        raise _failed(result)
    report = qemu_img.parse_check(result.stdout, src.name)
    report['supported'] = True
    report['clean'] = result.returncode == 0
    return report


def check(ctx: Context, path: str, fmt: str) -> dict:
    with ctx.open_source(path) as src:
        found = inspection.inspect_fd(src.fd, src.name, fmt)
        return check_fd(ctx, src, found.format)


def compare(ctx: Context, path1: str, fmt1: str, path2: str, fmt2: str,
            progress: Progress | None = None) -> dict:
    """``qemu-img compare``: {'identical': bool} (guest-visible content)."""
    with ctx.open_source(path1) as a, ctx.open_source(path2) as b:
        found1 = inspection.inspect_fd(a.fd, a.name, fmt1)
        found2 = inspection.inspect_fd(b.fd, b.name, fmt2)
        with nbd.Serving() as serving:
            argv = qemu_img.compare_cmd(
                serving.image(a.fd, found1.format), found1.format,
                serving.image(b.fd, found2.format), found2.format)
            result = process.run(argv, ctx.policy, progress=progress,
                                 check=False, pass_fds=serving.fds)
        refuse_shrunk(a, serving)
    identical = qemu_img.compare_result(result.returncode)
    if identical is None:
        raise _failed(result)
    return {'identical': identical}


def measure(ctx: Context, path: str, src_fmt: str, dst_fmt: str) -> dict:
    """``qemu-img measure``: bytes needed to convert ``path`` to dst_fmt."""
    with ctx.open_source(path) as src:
        found = inspection.inspect_fd(src.fd, src.name, src_fmt)
        with nbd.Serving() as serving:
            argv = qemu_img.measure_cmd(serving.image(src.fd, found.format),
                                        found.format, dst_fmt)
            result = process.run(argv, ctx.policy,
                                 limits=_metadata_limits(ctx.settings),
                                 pass_fds=serving.fds)
        refuse_shrunk(src, serving)
    return qemu_img.parse_measure(result.stdout, src.name)


def _failed(result: process.Result) -> exception.ProcessFailed:
    return exception.ProcessFailed(
        command=' '.join(result.argv), exit_code=result.returncode,
        stderr=result.stderr.decode('utf-8', 'replace')[-2000:].strip())


# --- convert --------------------------------------------------------------
def convert(ctx: Context, progress: Progress, src: str, dst: str,
            src_format: str, dst_format: str,
            opts: Options = Options()) -> records.Result:
    """Convert ``src`` into a new file ``dst`` or onto an allowed device.

    File outputs are unnamed until they are published (on success only);
    block devices (settings.allowed_block_devices) are written in place
    with -n, plus --target-is-zero when the caller guarantees the device
    reads as zeros.  ``opts.replace`` publishes over an existing regular
    file (refused for a device: ``InvalidRequest``).  ``opts.bps_limit``
    is qemu-img's -r, ``opts.sparse=False`` its -S 0.
    """
    dst_fmt = qemu_img.output_format(dst_format, 'convert')
    with ctx.open_source(src) as source, \
            ctx.output(dst, devices=True, replace=opts.replace) as out:
        if opts.target_is_zero and not out.is_device:
            raise exception.InvalidRequest(
                reason='target_is_zero is only valid for a block device '
                       'output')
        if out.is_device and opts.compress:
            raise exception.InvalidRequest(
                reason='compressed output is only written to files')
        result = convert_fds(ctx, progress, source, out, src_format, dst_fmt,
                             opts)
        if opts.checksum and not out.is_device:
            result['sha256'] = copy.sha256_fd(out.fd, progress)
        out.commit(progress)
    result['output'] = dst
    return result


def convert_fds(ctx: Context, progress: Progress, src: files.Opened,
                out: files.Output, src_format: str, dst_format: str,
                opts: Options = Options()) -> records.Result:
    """Convert the opened ``src`` into the opened ``out`` (not published).

    ``src`` is inspected here whatever the caller did before (milliseconds,
    and it is the safety gate, so callers cannot forget it).  If the source
    changes while this runs, the output is refused (``_unchanged``).  The
    largest virtual size accepted is ``opts.max_bytes`` within the host's
    (``image_limit``).
    """
    dst_fmt = qemu_img.output_format(dst_format, 'convert')
    before = src.identity()
    limit = image_limit(ctx.settings, opts.max_bytes)
    found, src_info = inspect_source(ctx, src, src_format, limit)
    virtual_size = int(src_info['virtual-size'])
    progress.set_total(virtual_size)
    progress.check()
    parser = qemu_img.ProgressParser()
    watch = _AllocationWatch(out, limit, progress)

    def on_output(chunk: bytes) -> None:
        fraction = parser.feed(chunk)
        if fraction is not None:
            progress.set_fraction(fraction)
            watch.check()

    user = ctx.policy.tool_user
    if user is not None and not out.is_device:
        out.lend(user.uid, user.gid)
    with nbd.Serving() as serving:
        src_arg = serving.image(src.fd, found.format)
        out_fds: tuple[int, ...] = ()
        if out.is_device:
            # The device is written by the server, never reopened.
            dst_arg = serving.image(out.fd, dst_fmt, True)
        else:
            dst_arg, out_fds = qemu_img.fd_arg(out.fd), (out.fd,)
        argv = _convert_argv(ctx.settings, src, out, src_arg, dst_arg,
                             found.format, dst_fmt, opts)
        try:
            with watch.running():
                result = process.run(argv, ctx.policy, progress=progress,
                                     on_output=on_output,
                                     pass_fds=serving.fds + out_fds)
        except exception.Cancelled:
            if watch.exceeded:
                raise watch.error(src)
            raise
        except exception.ProcessFailed as e:
            refuse_shrunk(src, serving)
            raise refused_reference(src, before, e) from e
    refuse_shrunk(src, serving)
    watch.check()
    if watch.exceeded:
        raise watch.error(src)
    check_unchanged(src, before, found.format)
    progress.set_done(virtual_size)
    return _convert_result(out, dst_fmt, virtual_size, argv, result)


class _AllocationWatch:
    """Stop qemu-img when its output takes more disk than the limit allows.

    The virtual size was checked before the run, so this should never
    fire; it is the second line against images whose metadata makes
    qemu-img allocate more than they claim (a qcow2 "cluster bomb" maps
    every guest cluster to the same host cluster: tiny input, fully
    allocated output).  The slack covers the metadata of qcow2-like
    outputs.  Never more than the output's file system can take, less a
    margin (``sparse.room``): an image within the size cap still cannot
    fill the disk of every other user.  Checked on each progress update
    (every 1% of the image) and, while qemu-img runs (``running``), every
    ``POLL`` seconds: the margin covers what qemu-img writes in between
    (1.4 GB/s with O_DIRECT here).
    """

    POLL = 0.1
    MARGIN = 256 * 1024 ** 2

    def __init__(self, out: files.Output, limit: int | None,
                 progress: Progress) -> None:
        self.fd = -1 if out.is_device or limit is None else out.fd
        self.allowed = (limit or 0) + (limit or 0) // 64 + 16 * 1024 ** 2
        # Whether the file system, not the size cap, set the bound.
        self.by_room = False
        if self.fd >= 0:
            room = sparse.room(self.fd, self.MARGIN)
            self.by_room = room < self.allowed
            self.allowed = min(self.allowed, room)
        self.progress = progress
        self.exceeded = False
        self._stop = threading.Event()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Check every ``POLL`` seconds while the block runs."""
        if self.fd < 0:
            yield
            return
        self._stop.clear()
        thread = threading.Thread(target=self._poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(self.POLL):
            self.check()

    def error(self, src: files.Opened) -> Exception:
        """Past the size cap: ``SizeLimitExceeded``; past what the file
        system can spare: ENOSPC (``NoSpace``, naming the output)."""
        if self.by_room:
            return sparse.out_of_room(self.allowed)
        return exception.SizeLimitExceeded(path=src.name, limit=self.allowed)

    def check(self) -> None:
        if self.fd < 0 or self.exceeded:
            return
        if os.fstat(self.fd).st_blocks * 512 > self.allowed:
            self.exceeded = True
            self.progress.cancel()     # kills qemu-img's process group


# What qemu-img says when an image names a file it could not open: in its
# Landlock domain (engine.landlock) it can open nothing it was not handed.
_REFERENCE_FAILURES = ('backing file', 'data file', 'data-file', 'extent')


def refused_reference(src: files.Opened, before: tuple | None,
                      err: exception.ProcessFailed) -> exception.AccelError:
    """The error to report for a qemu-img run on ``src`` that failed:
    ``UnsafeImage`` when the image changed since it was inspected, or names
    a file (a backing file, data file or extent) the confined qemu-img
    could not open, which an inspected image never does; else ``err``."""
    check_unchanged(src, before)
    stderr = str(err.fields.get('stderr', ''))
    if any(word in stderr for word in _REFERENCE_FAILURES):
        return exception.UnsafeImage(
            path=src.name, reason='it names another file (a backing file, '
            'data file or extent) that it did not name when it was '
            'inspected; nothing was read from it')
    return err


def refuse_shrunk(src: files.Opened, serving: nbd.Serving) -> None:
    """Refuse the result when a served file shrank while qemu-img read it
    (the server padded what was missing with zeros); ends the serving."""
    serving.close()
    if serving.short:
        raise exception.UnsafeImage(
            path=src.name, reason='the image was truncated while it was '
                                  'being read')


def check_unchanged(src: files.Opened, before: tuple | None,
                    fmt: str | None = None) -> None:
    """Refuse the output if the source changed after it was inspected.

    The owner of an allowed directory owns the images in it and may rewrite
    one between inspection and the end of the conversion, e.g. add a
    backing file or data-file to a qcow2 header (CVE-2024-32498 class).
    That is harmless by construction: qemu-img opened the image with
    ``backing: null`` over NBD (``engine.nbd``) and runs confined
    (``engine.landlock``), so it read no file the image names.  This check
    only makes such an attempt fail loudly instead of publishing an output
    of an image that is no longer the one inspected:

    * a ``write()`` moves ctime, which only root can set back, so fstat
      before inspection and now differ;
    * stores through a shared ``mmap`` into a page that is already dirty
      move nothing, so an image with metadata (``fmt`` other than raw) is
      inspected again through its descriptor: a header that now names a
      backing file, a data file or an extent is refused.
    """
    if before is not None and src.identity() != before:
        raise exception.UnsafeImage(
            path=src.name, reason='the image was modified while it was '
                                  'being inspected or converted')
    if fmt is None or fmt == 'raw':
        return
    try:
        inspection.inspect_fd(src.fd, src.name, fmt)
    except (exception.UnsafeImage, exception.ImageInspectionError) as e:
        raise exception.UnsafeImage(
            path=src.name, reason='it changed after it was inspected (%s); '
            'nothing it names was read, and no output is published'
            % e.fields.get('reason', e.message)) from e


def _convert_argv(settings: Settings, src: files.Opened, out: files.Output,
                  src_arg: str, dst_arg: str, src_fmt: str, dst_fmt: str,
                  opts: Options) -> list[str]:
    compress = opts.compress
    flags = qemu_img.ConvertFlags(
        src_cache=source_cache_mode(src),
        dst_cache=target_cache_mode(out.fd, out.is_device),
        coroutines=settings.convert_coroutines,
        # -W: raw has no metadata whose order matters, and out-of-order
        # writes keep all coroutines busy on slow or remote storage (4.2 s
        # -> 0.7 s at 2 ms write latency).  A plain qcow2 (a disk that will
        # run) keeps its clusters in guest order.  A compressed qcow2 is an
        # artifact to upload or convert once: -W lets the coroutines
        # compress in parallel (1 GiB mixed volume, -m 16: 12.4 s -> 7.7 s,
        # 0.3 % larger, identical content); qemu-img has taken -W with -c
        # since 4.2.
        unordered=dst_fmt == 'raw' or out.is_device or compress,
        existing_target=out.is_device,
        target_is_zero=opts.target_is_zero, compress=compress,
        sparse=opts.sparse, rate_limit=opts.bps_limit)
    return qemu_img.convert_cmd(src_arg, dst_arg, src_fmt, dst_fmt, flags)


def source_cache_mode(src: files.Opened) -> str:
    """How the NBD server reads the source: a device with ``O_DIRECT``
    ('none': a volume read once does not evict the host's page cache), a
    file through the page cache ('writeback')."""
    return qemu_img.CACHE_NONE if src.is_device else qemu_img.CACHE_WRITEBACK


def target_cache_mode(fd: int, existing_target: bool = False) -> str:
    """'none' if O_DIRECT works on the actual destination, else 'writeback'.

    An existing target (-n, a device) is only read: its content must
    survive the probe.
    """
    works = qemu_img.probe_direct_io(fd, write=not existing_target)
    return qemu_img.CACHE_NONE if works else qemu_img.CACHE_WRITEBACK


def _convert_result(out: files.Output, dst_fmt: str, virtual_size: int,
                    argv: list[str], result: process.Result
                    ) -> records.Result:
    size = virtual_size if out.is_device else os.fstat(out.fd).st_size
    return {'output': out.path, 'size': size, 'engine': ENGINE,
            'hardware': False, 'cpu_seconds': result.cpu_seconds,
            'wall_seconds': result.wall_seconds,
            'virtual_size': virtual_size,
            'cache_mode': argv[argv.index('-t') + 1],
            'source_cache_mode': argv[argv.index('-T') + 1],
            'format': dst_fmt}
