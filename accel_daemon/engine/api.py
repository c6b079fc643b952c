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
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from typing import Any

from accel_daemon import exception
from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine.progress import Progress
from accel_daemon.engine.settings import Settings

LOG = logging.getLogger(__name__)

KINDS = ('compress', 'decompress', 'convert', 'copy', 'upload', 'download')


class Engine:
    def __init__(self, settings: Settings,
                 policy: CommandPolicy | None = None) -> None:
        self.settings = settings
        self.policy = policy or CommandPolicy(settings.filters_path,
                                              settings.exec_dirs)
        self._lock = threading.Lock()
        self._running: dict[str, Progress] = {}

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
            raise exception.InvalidRequest(reason='unknown operation %r' % kind)
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
        raise NotImplementedError

    def info(self, path: str, fmt: str) -> dict:
        raise NotImplementedError

    def _compress(self, progress, src, dst, driver=None, level=None,
                  format='gzip'):
        raise NotImplementedError

    def _decompress(self, progress, src, dst, max_bytes=None):
        raise NotImplementedError

    def _convert(self, progress, src, dst, src_format, dst_format,
                 compress=False, target_is_zero=False):
        raise NotImplementedError

    def _copy(self, progress, src, dst):
        raise NotImplementedError

    def _upload(self, progress, src, dst, src_format, disk_format):
        raise NotImplementedError

    def _download(self, progress, src, dst, disk_format, dst_format,
                  max_bytes=None):
        raise NotImplementedError
