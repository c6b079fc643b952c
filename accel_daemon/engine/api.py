"""The engine's one entry object: every operation by kind, with progress.

The privileged layer holds one ``Engine`` inside the privsep daemon and the
``--local`` command line holds one in-process; both call ``run()`` with a
task id, a kind and plain parameters, and get a plain result dict back:

    {'output': str, 'size': int, 'sha256': str | None, 'engine': str,
     'hardware': bool, 'wall_seconds': float, 'cpu_seconds': float, ...}

Kinds and their parameters (``None`` means optional):
    compress   src, dst, driver=None, level=None, format='gzip'
    decompress src, dst, max_bytes=None
    convert    src, dst, src_format, dst_format, compress=False,
               target_is_zero=False
    copy       src, dst
    upload     src, dst, src_format, disk_format
    download   src, dst, disk_format, dst_format, max_bytes=None

Every kind also takes ``checksum`` (sha256 of the output in the result):
by default on for compress and upload, whose outputs are compact, and off
for the kinds that write large raw images (hashing 8 GiB costs ~5 s here).
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from typing import Any

from accel_daemon import exception
from accel_daemon.engine import compression
from accel_daemon.engine import copy
from accel_daemon.engine import images
from accel_daemon.engine import paths
from accel_daemon.engine import pipelines
from accel_daemon.engine import qemu_img
from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine.progress import Progress
from accel_daemon.engine.settings import Settings

LOG = logging.getLogger(__name__)

KINDS = ('compress', 'decompress', 'convert', 'copy', 'upload', 'download')


class Engine:
    def __init__(self, settings: Settings,
                 policy: CommandPolicy | None = None) -> None:
        self.settings = settings
        self.policy = policy or CommandPolicy(
            settings.filters_path, settings.exec_dirs,
            timeout=settings.command_timeout)
        self._lock = threading.Lock()
        self._running: dict[str, Progress] = {}
        self._driver_cache = None

    # -- control -----------------------------------------------------------
    def progress(self, task_id: str) -> dict[str, int] | None:
        with self._lock:
            prog = self._running.get(task_id)
        return prog.snapshot() if prog else None

    def cancel(self, task_id: str) -> bool:
        with self._lock:
            prog = self._running.get(task_id)
        if prog is None:
            return False
        prog.cancel()
        return True

    def reload_filters(self) -> int:
        return self.policy.reload()

    # -- operations --------------------------------------------------------
    def run(self, task_id: str, kind: str, params: dict[str, Any]) -> dict:
        if kind not in KINDS:
            raise exception.InvalidRequest(
                reason='unknown operation %r' % kind)
        progress = Progress()
        with self._lock:
            if task_id in self._running:
                raise exception.InvalidRequest(
                    reason='task %s is already running' % task_id)
            self._running[task_id] = progress
        started = time.monotonic()
        try:
            result = self._call(kind, progress, params)
        finally:
            with self._lock:
                self._running.pop(task_id, None)
        result.setdefault('wall_seconds', time.monotonic() - started)
        return result

    def _call(self, kind: str, progress: Progress, params: dict) -> dict:
        method = getattr(self, '_' + kind)
        try:
            inspect.signature(method).bind(progress, **params)
        except TypeError as e:
            raise exception.InvalidRequest(reason='%s: %s' % (kind, e))
        return method(progress, **params)

    def capabilities(self) -> dict:
        caps = compression.capabilities(self._drivers())
        try:
            default = compression.select(self._drivers(), self.settings).name
        except exception.NoEngineAvailable:
            default = None
        return {
            'drivers': caps,
            'default_driver': default,
            'hardware': any(d['available'] and d['hardware'] for d in caps),
            'tools': self._tool_versions(caps),
            'formats': {'input': list(qemu_img.INPUT_FORMATS),
                        'output': list(qemu_img.OUTPUT_FORMATS)},
            'allowed_dirs': list(self.settings.allowed_dirs),
        }

    def _tool_versions(self, caps: list[dict]) -> dict:
        tools = {d['name']: d['version'] for d in caps if d['version']}
        qemu = images.version(self.policy)
        if qemu:
            tools['qemu-img'] = qemu
        return tools

    def info(self, path: str, fmt: str) -> dict:
        return images.info(path, fmt, self.settings, self.policy)

    def discard_partial(self, dst: str) -> list[str]:
        """Remove temp outputs a crashed run left for ``dst``."""
        s = self.settings
        if paths.allowed_block_device(dst, s.allowed_block_devices):
            # A download onto a device staged its image in an allowed dir.
            real = pipelines.stage_target(s, os.path.realpath(dst), True)
        else:
            real = paths.check_output_dir(dst, s.allowed_dirs)
        removed = paths.temp_files_for(real)
        for path in removed:
            os.unlink(path)
        if removed:
            LOG.warning('Removed partial outputs of an interrupted task: %s',
                        ', '.join(removed))
        return removed

    def _drivers(self):
        if self._driver_cache is None:
            self._driver_cache = compression.load_drivers(self.settings,
                                                          self.policy)
        return self._driver_cache

    # -- operations (each validates its own paths) ----------------------------
    def _compress(self, progress, src, dst, driver=None, level=None,
                  format='gzip', checksum=None):
        # The compressed output is hashed while it is written (cheap).
        return compression.compress(src, dst, self.settings, self.policy,
                                    progress, driver=driver, level=level,
                                    format=format)

    def _decompress(self, progress, src, dst, max_bytes=None, checksum=None):
        return compression.decompress(src, dst, self.settings, self.policy,
                                      progress, max_bytes=max_bytes,
                                      checksum=_default(checksum, False))

    def _convert(self, progress, src, dst, src_format, dst_format,
                 compress=False, target_is_zero=False, checksum=None):
        result = images.convert(src, dst, src_format, dst_format,
                                self.settings, self.policy, progress,
                                compress=compress,
                                target_is_zero=target_is_zero)
        return _maybe_hash(result, checksum, False, progress)

    def _copy(self, progress, src, dst, checksum=None):
        s = self.settings
        src_real = paths.check_input(src, s.allowed_dirs)
        dst_real = paths.check_output(dst, s.allowed_dirs)
        cpu = time.thread_time()
        fd = paths.open_input(src_real, s.allowed_dirs)
        try:
            with paths.AtomicOutput(dst_real, s.output_file_mode) as out:
                # The descriptor, never out.path: the owner of the
                # directory can swap that name for a symlink to any file.
                size = copy.copy_fd(fd, out.fd, progress)
                out.commit()
        finally:
            os.close(fd)
        result = {'output': dst_real, 'size': size, 'bytes_in': size,
                  'engine': 'copy_file_range', 'hardware': False,
                  'cpu_seconds': time.thread_time() - cpu}
        return _maybe_hash(result, checksum, False, progress)

    def _upload(self, progress, src, dst, src_format, disk_format,
                checksum=None):
        compressor = compression.select(self._drivers(), self.settings)
        result = pipelines.upload(self.settings, self.policy, progress,
                                  compressor, src, dst, src_format,
                                  disk_format)
        return _maybe_hash(result, checksum, True, progress)

    def _download(self, progress, src, dst, disk_format, dst_format,
                  max_bytes=None, checksum=None):
        result = pipelines.download(self.settings, self.policy, progress,
                                    src, dst, disk_format, dst_format,
                                    max_bytes)
        return _maybe_hash(result, checksum, False, progress)


def _default(value, default: bool) -> bool:
    return default if value is None else bool(value)


def _maybe_hash(result: dict, checksum, default: bool,
                progress: Progress) -> dict:
    """Add the output's sha256 when asked (or by the kind's default)."""
    if not _default(checksum, default):
        result.setdefault('sha256', None)
    elif not result.get('sha256') and result.get('output'):
        result['sha256'] = copy.sha256_file(result['output'], progress)
    return result
