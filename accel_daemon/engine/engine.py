# SPDX-License-Identifier: Apache-2.0
"""The engine's one entry object: every operation, with progress and cancel.

The privileged layer holds one ``Engine`` inside the privsep daemon, and the
``--local`` command line one in-process.  ``accel_daemon.operations`` names
each operation and its arguments once and calls the method of the same name
here (``Operation.engine_method``), inside ``task()``, which registers
the run's ``Progress`` so that ``progress()`` and ``cancel()`` reach it.
Results are plain dicts of the shape ``accel_daemon.records.Result``
describes; ``capabilities()`` answers a ``records.Capabilities``.

Every path is opened once inside the operation (``engine.files``); nothing
here checks a name that is opened later.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import copy as _copy
import logging
import os
import threading
import time
from typing import Any

from accel_daemon.engine import compression
from accel_daemon.engine.context import Context
from accel_daemon.engine import copy
from accel_daemon.engine import driver as base
from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine import images
from accel_daemon.engine import paths
from accel_daemon.engine import pipelines
from accel_daemon.engine.progress import Progress
from accel_daemon.engine import qemu_img
from accel_daemon.engine.settings import Settings
from accel_daemon.engine import streams
from accel_daemon import exception
from accel_daemon.options import Options
from accel_daemon import records
from accel_daemon import streamproto

LOG = logging.getLogger(__name__)


class Engine:
    def __init__(self, settings: Settings,
                 policy: CommandPolicy | None = None,
                 drivers: dict[str, base.Compressor] | None = None) -> None:
        self.ctx = Context.create(settings, policy)
        self._lock = threading.Lock()
        self._running: dict[str, Progress] = {}
        # One box, shared with every for_caller() view: drivers load once.
        self._drivers_box: list[dict[str, base.Compressor] | None] = [drivers]
        # Image streams (engine.streams): the key of their tokens, made
        # here and never leaving this process, and their slots.
        self._stream_key = os.urandom(32)
        self._stream_slots = threading.BoundedSemaphore(
            max(1, settings.max_streams))
        self._streams_unavailable_said = False

    def for_caller(self, caller: str | None) -> Engine:
        """This engine as ``caller`` sees it: the same drivers, tasks and
        policy, and the directories and devices of that caller only
        (``Settings.callers``); ``None``: the host's whole envelope.  An
        unknown caller is refused with InvalidRequest."""
        if caller is None:
            return self
        view = _copy.copy(self)
        view.ctx = self.ctx.scoped(caller)
        return view

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    @property
    def policy(self) -> CommandPolicy:
        return self.ctx.policy

    @property
    def drivers(self) -> dict[str, base.Compressor]:
        """This engine's driver registry (loaded once, on first use)."""
        box = self._drivers_box
        with self._lock:
            drivers = box[0]
            if drivers is None:
                drivers = box[0] = compression.load_drivers(self.settings,
                                                            self.policy)
            return drivers

    # -- control -----------------------------------------------------------
    @contextlib.contextmanager
    def task(self, task_id: str) -> Iterator[Progress]:
        """The Progress of one run, reachable by task id while it runs; its
        deadline is ``command_timeout`` from now (``engine.throttle``)."""
        limit = self.settings.command_timeout
        progress = Progress(deadline=(time.monotonic() + limit
                                      if limit else None))
        progress.task_id = task_id
        with self._lock:
            if task_id in self._running:
                raise exception.InvalidRequest(
                    reason='task %s is already running' % task_id)
            self._running[task_id] = progress
        try:
            yield progress
        finally:
            with self._lock:
                self._running.pop(task_id, None)

    def progress(self, task_id: str) -> records.TaskProgress | None:
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

    # -- quick calls -------------------------------------------------------
    def capabilities(self) -> records.Capabilities:
        caps = compression.capabilities(self.drivers)
        try:
            default = compression.select(self.drivers, self.settings).name
        except exception.NoEngineAvailable:
            default = None
        tools = {d['name']: d['version'] for d in caps if d['version']}
        qemu = images.version(self.policy)
        if qemu:
            tools['qemu-img'] = qemu
        return {
            'drivers': caps,
            'default_driver': default,
            'hardware': any(d['available'] and d['hardware'] for d in caps),
            'tools': tools,
            'formats': {'input': list(qemu_img.INPUT_FORMATS),
                        'output': list(qemu_img.OUTPUT_FORMATS)},
            # What this caller may name (for_caller()).
            'allowed_dirs': list(self.ctx.confinement.configured),
            # Callers route a /dev path here only when it matches one.
            'allowed_block_devices': list(
                self.ctx.confinement.block_patterns),
            'streams': self._streams_ready(),
        }

    def _streams_ready(self) -> str | None:
        """The stream sockets' directory, made if need be (callers check
        they can enter it before they stream), None when streams are off
        or the directory cannot be made (callers then keep their files:
        said once, at info; a stream asked for fails with the reason)."""
        if not self.settings.stream_group:
            return None
        try:
            os.close(streams.stream_dir(self.settings))
        except (OSError, exception.AccelError) as e:
            if not self._streams_unavailable_said:
                self._streams_unavailable_said = True
                LOG.info('Image streams are unavailable, callers keep '
                         'their files: %s', e)
            return None
        return self.settings.stream_dir

    def image_info(self, path: str, format: str) -> dict[str, Any]:
        return images.info(self.ctx, path, format)

    def discard_partial(self, dst: str) -> list[str]:
        """Remove named temp outputs a crashed run left for ``dst`` (only
        file systems without O_TMPFILE have any)."""
        if self.ctx.confinement.device_name(dst):
            # A download onto a device staged its image in an allowed dir.
            directory = self.ctx.confinement.dirs[0]
            removed = paths.temp_files_for(os.path.join(directory, 'stage'))
        else:
            removed = paths.temp_files_for(
                paths.check_output_dir(dst, self.ctx.confinement.dirs))
        for path in removed:
            os.unlink(path)
        if removed:
            LOG.warning('Removed partial outputs of an interrupted task: %s',
                        ', '.join(removed))
        return removed

    def admit(self, options: Options) -> Options:
        """The options of a request, if this host serves them: a
        ``bps_limit`` below ``min_bps_limit`` is refused before any work
        starts (a trickle would hold a worker for hours)."""
        floor = self.settings.min_bps_limit
        if options.bps_limit is not None and options.bps_limit < floor:
            raise exception.InvalidRequest(
                reason='bps_limit %d is below this host\'s floor of %d '
                       'bytes/s ([accel_daemon] min_bps_limit)'
                       % (options.bps_limit, floor))
        return options

    # -- operations (see accel_daemon.operations for their arguments) -------
    # Each takes what it works on, and how (``options``, built by
    # ``accel_daemon.operations.run`` with the table's defaults).
    def compress(self, progress: Progress, src: str, dst: str,
                 options: Options = Options(checksum=True)
                 ) -> records.Result:
        options = self.admit(options)
        return compression.compress(self.ctx, self.drivers, progress, src,
                                    dst, options)

    def decompress(self, progress: Progress, src: str, dst: str,
                   options: Options = Options()) -> records.Result:
        options = self.admit(options)
        return compression.decompress(self.ctx, self.drivers, progress, src,
                                      dst, options)

    def convert(self, progress: Progress, src: str, dst: str,
                src_format: str, dst_format: str,
                options: Options = Options()) -> records.Result:
        options = self.admit(options)
        return images.convert(self.ctx, progress, src, dst, src_format,
                              dst_format, options)

    def copy(self, progress: Progress, src: str, dst: str,
             options: Options = Options()) -> records.Result:
        options = self.admit(options)
        return copy.copy_file(self.ctx, progress, src, dst, options)

    def upload(self, progress: Progress, src: str, dst: str,
               src_format: str, disk_format: str,
               options: Options = Options(checksum=True)) -> records.Result:
        options = self.admit(options)
        return pipelines.upload(self, progress, src, dst, src_format,
                                disk_format, options)

    def stream_in(self, progress: Progress, dst: str, disk_format: str,
                  dst_format: str,
                  options: Options = Options()) -> records.Result:
        options = self.admit(options)
        return pipelines.stream_in(self, progress, dst, disk_format,
                                   dst_format, options)

    def stream_out(self, progress: Progress, src: str, src_format: str,
                   disk_format: str, compression: str | None = None,
                   options: Options = Options()) -> records.Result:
        options = self.admit(options)
        return pipelines.stream_out(self, progress, src, src_format,
                                    disk_format, compression, options)

    @property
    def stream_key(self) -> bytes:
        return self._stream_key

    def stream_token(self, task_id: str) -> str:
        """The token a writer of ``task_id``'s stream must present: given
        by the daemon to the caller that submitted the task only."""
        return streamproto.token(self._stream_key, task_id)

    @contextlib.contextmanager
    def stream_slot(self) -> Iterator[None]:
        """One of ``max_streams``; QueueFull at once when none is free."""
        if not self._stream_slots.acquire(blocking=False):
            raise exception.QueueFull(limit=self.settings.max_streams)
        try:
            yield
        finally:
            self._stream_slots.release()

    def download(self, progress: Progress, src: str, dst: str,
                 disk_format: str, dst_format: str,
                 options: Options = Options()) -> records.Result:
        options = self.admit(options)
        return pipelines.download(self, progress, src, dst, disk_format,
                                  dst_format, options)
