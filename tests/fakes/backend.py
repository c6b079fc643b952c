# SPDX-License-Identifier: Apache-2.0
"""An in-memory stand-in for ``accel_daemon.manager.backends.Backend``:
unit tests of the manager, the RPC layer and clients use it (it is clearly
not an engine)."""

from __future__ import annotations

import threading
import time
from typing import Any

from accel_daemon.engine.progress import Progress
from accel_daemon import exception
from accel_daemon import streamproto


class FakeBackend:
    """In-memory backend for tests; clearly not an engine.

    Behaviour is set per backend (constructor) or per task through
    ``params`` (which wins):

    ``duration``  seconds the operation takes (progress grows linearly);
    ``hold``      when true, the task also waits until ``release()``;
    ``fail``      an AccelError instance, an error class name from
                  ``accel_daemon.exception`` (raised with ``reason``), or
                  ``'bug'`` to raise a RuntimeError (a non-AccelError bug);
    ``ignore_cancel``  when true, ``cancel()`` is recorded and answered
                  True but does not stop the task: a stuck task (a command
                  in uninterruptible I/O) for tests of the watchdog.

    Otherwise cancellation is honoured at every step: ``run()`` raises
    ``Cancelled``.
    The fake records what happened so tests can assert on it: ``calls``
    (start order), ``max_running``, ``cancelled``, ``discarded``.
    """

    def __init__(self, duration: float = 0.0, total: int = 1000,
                 fail: Any = None, step: float = 0.005,
                 hold: bool = False, ignore_cancel: bool = False) -> None:
        self.duration = duration
        self.total = total
        self.fail = fail
        self.step = step
        self.hold = hold
        self.ignore_cancel = ignore_cancel
        self.calls: list[tuple[str, str, dict]] = []
        self.cancelled: list[str] = []
        self.discarded: list[str] = []
        # task id -> the caller run() was given (None: the host's envelope)
        self.callers: dict[str, str | None] = {}
        self.max_running = 0
        self.filters_reloaded = 0
        self._gate = threading.Event()
        self._cond = threading.Condition()
        self._running: dict[str, Progress] = {}
        self._deaf: set[str] = set()   # running tasks that ignore cancel

    # -- test helpers ------------------------------------------------------
    def release(self) -> None:
        """Let every held task (``hold``) finish."""
        self._gate.set()

    @property
    def running(self) -> list[str]:
        with self._cond:
            return list(self._running)

    def wait_running(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` tasks are inside ``run()``."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._running) >= count,
                                       timeout)

    def wait_started(self, task_id: str, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: any(c[0] == task_id for c in self.calls), timeout)

    # -- Backend -----------------------------------------------------------
    def run(self, task_id: str, kind: str, params: dict[str, Any],
            caller: str | None = None) -> dict[str, Any]:
        with self._cond:
            self.callers[task_id] = caller
        progress = self._enter(task_id, kind, params)
        started = time.monotonic()
        try:
            self._work(progress, params)
            self._maybe_fail(params)
        finally:
            with self._cond:
                self._running.pop(task_id, None)
                self._deaf.discard(task_id)
                self._cond.notify_all()
        return {'output': params.get('dst'), 'size': self.total,
                'sha256': None, 'engine': 'fake', 'hardware': False,
                'wall_seconds': time.monotonic() - started,
                'cpu_seconds': 0.0}

    def _enter(self, task_id: str, kind: str, params: dict) -> Progress:
        progress = Progress(self.total)
        with self._cond:
            if task_id in self._running:
                raise exception.InvalidRequest(
                    reason='task %s is already running' % task_id)
            self._running[task_id] = progress
            if params.get('ignore_cancel', self.ignore_cancel):
                self._deaf.add(task_id)
            self.calls.append((task_id, kind, dict(params)))
            self.max_running = max(self.max_running, len(self._running))
            self._cond.notify_all()
        return progress

    def _work(self, progress: Progress, params: dict) -> None:
        duration = float(params.get('duration', self.duration))
        hold = params.get('hold', self.hold)
        deadline = time.monotonic() + duration
        while True:
            left = deadline - time.monotonic()
            if duration > 0:
                progress.set_fraction(1.0 - max(0.0, left) / duration)
            if left <= 0 and (not hold or self._gate.is_set()):
                break
            if progress.wait_cancelled(min(self.step, max(left, self.step))):
                raise exception.Cancelled()
        progress.set_done(self.total)

    def _maybe_fail(self, params: dict) -> None:
        fail = params.get('fail', self.fail)
        if not fail:
            return
        if isinstance(fail, BaseException):
            raise fail
        if fail == 'bug':
            raise RuntimeError('fake backend bug')
        # An explicit message: the class's template may need other fields.
        raise exception.lookup(fail)('fake %s failure' % fail,
                                     reason='fake failure')

    def capabilities(self) -> dict[str, Any]:
        return {'drivers': ['fake'], 'default_driver': 'fake',
                'hardware': False, 'tools': {}, 'formats': {}}

    def info(self, path: str, fmt: str,
             caller: str | None = None) -> dict[str, Any]:
        return {'filename': path, 'format': fmt, 'virtual-size': self.total}

    def progress(self, task_id: str) -> dict[str, int] | None:
        with self._cond:
            prog = self._running.get(task_id)
        return prog.snapshot() if prog else None

    def cancel(self, task_id: str) -> bool:
        with self._cond:
            prog = self._running.get(task_id)
            if prog is None:
                return False
            self.cancelled.append(task_id)
            if task_id in self._deaf:
                return True
        prog.cancel()
        return True

    def discard_partial(self, dst: str,
                        caller: str | None = None) -> list[str]:
        with self._cond:
            self.discarded.append(dst)
        return []

    def reload_filters(self) -> int:
        self.filters_reloaded += 1
        return 0

    def stream_token(self, task_id: str) -> str:
        # A fixed key: the fake runs no stream, it only answers.
        return streamproto.token(b'fake-backend-key', task_id)
