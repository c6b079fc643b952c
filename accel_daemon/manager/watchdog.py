# SPDX-License-Identifier: Apache-2.0
"""The task watchdog: one thread that enforces every running task's deadline.

A task that runs past ``timeout`` seconds is *expired*: the manager asks the
backend to cancel it.  One that is still running ``grace`` seconds later is
*stuck* (a command in uninterruptible I/O, a backend that ignores cancels):
the manager gives up on it and frees its worker slot.  The watchdog only
keeps time; both decisions are callbacks into the manager, made without the
watchdog's lock held so they may take the manager's.

One thread for the whole manager, sleeping until the nearest deadline, rather
than a timer per task: a daemon with a thousand queued tasks still has one.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

LOG = logging.getLogger(__name__)


class Watchdog:
    def __init__(self, timeout: float, grace: float,
                 expire: Callable[[str], None],
                 abandon: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not timeout > 0 or grace < 0:
            raise ValueError('timeout must be positive and grace not '
                             'negative')
        self.timeout = timeout
        self.grace = grace
        self._expire = expire
        self._abandon = abandon
        self._clock = clock
        self._cond = threading.Condition()
        self._deadlines: dict[str, float] = {}  # running, within time
        self._graces: dict[str, float] = {}     # expired, not yet stopped
        self._expired: set[str] = set()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            self._stopping = False
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name='accel-task-watchdog')
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def track(self, task_id: str) -> None:
        """A task started running: its clock starts now."""
        with self._cond:
            self._deadlines[task_id] = self._clock() + self.timeout
            self._cond.notify_all()

    def forget(self, task_id: str) -> None:
        """A task finished (or was abandoned)."""
        with self._cond:
            self._deadlines.pop(task_id, None)
            self._graces.pop(task_id, None)
            self._expired.discard(task_id)

    def expired(self, task_id: str) -> bool:
        """Whether the task ran past its deadline (until ``forget``)."""
        with self._cond:
            return task_id in self._expired

    def _loop(self) -> None:
        with self._cond:
            while not self._stopping:
                due, stuck = self._take_due_locked()
                if not due and not stuck:
                    self._cond.wait(self._next_wakeup_locked())
                    continue
                self._cond.release()
                try:
                    self._call(self._expire, due)
                    self._call(self._abandon, stuck)
                finally:
                    self._cond.acquire()

    def _take_due_locked(self) -> tuple[list[str], list[str]]:
        now = self._clock()
        due = [i for i, d in self._deadlines.items() if d <= now]
        for task_id in due:
            del self._deadlines[task_id]
            self._graces[task_id] = now + self.grace
            self._expired.add(task_id)
        stuck = [i for i, d in self._graces.items()
                 if d <= now and i not in due]
        for task_id in stuck:
            del self._graces[task_id]
        return due, stuck

    def _next_wakeup_locked(self) -> float | None:
        pending = list(self._deadlines.values()) + list(self._graces.values())
        if not pending:
            return None
        return max(0.0, min(pending) - self._clock())

    @staticmethod
    def _call(callback: Callable[[str], None], task_ids: list[str]) -> None:
        for task_id in task_ids:
            try:
                callback(task_id)
            except Exception:
                # The watchdog must outlive any one task's trouble.
                LOG.exception('Watchdog action on task %s failed', task_id)
