# SPDX-License-Identifier: Apache-2.0
"""Thread-safe progress and cancellation, shared by an operation and task."""

from __future__ import annotations

import threading

from accel_daemon import exception
from accel_daemon import records


class Progress:
    """Bytes done out of a total, plus a cancellation flag.

    The worker updates it; the task manager reads it from another thread and
    may call ``cancel()``.  Long loops call ``check()`` so a cancel stops them.
    """

    def __init__(self, total: int = 0,
                 deadline: float | None = None) -> None:
        self._lock = threading.Lock()
        self._done = 0
        self._total = total
        self._cancelled = threading.Event()
        # time.monotonic() past which the run may not wait (a paced flow
        # that would sleep beyond it fails instead: engine.throttle).
        self.deadline = deadline
        # The task this is the progress of (Engine.task), if any.
        self.task_id: str | None = None

    @property
    def done(self) -> int:
        return self._done

    @property
    def total(self) -> int:
        return self._total

    @property
    def fraction(self) -> float:
        with self._lock:
            if self._total <= 0:
                return 0.0
            return min(1.0, self._done / self._total)

    def set_total(self, total: int) -> None:
        with self._lock:
            self._total = max(0, int(total))

    def add(self, nbytes: int) -> None:
        with self._lock:
            self._done += nbytes

    def set_done(self, nbytes: int) -> None:
        with self._lock:
            self._done = int(nbytes)

    def set_fraction(self, fraction: float) -> None:
        with self._lock:
            self._done = int(self._total * max(0.0, min(1.0, fraction)))

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def wait_cancelled(self, timeout: float) -> bool:
        return self._cancelled.wait(timeout)

    def check(self) -> None:
        """Raise ``Cancelled`` if a cancel was requested."""
        if self._cancelled.is_set():
            raise exception.Cancelled()

    def snapshot(self) -> records.TaskProgress:
        with self._lock:
            return {'done': self._done, 'total': self._total}


class Phase(Progress):
    """One step of a multi-step operation, reporting into its parent.

    The step keeps its own done/total; the parent sees ``start`` plus the
    step's fraction of ``span``.
    Cancellation is the parent's, so cancelling the task stops every step.
    """

    def __init__(self, parent: Progress, start: int, span: int) -> None:
        super().__init__(total=span, deadline=parent.deadline)
        self._parent = parent
        self._start = start
        self._span = span
        self._cancelled = parent._cancelled

    def _publish(self) -> None:
        self._parent.set_done(self._start + int(self._span * self.fraction))

    def add(self, nbytes: int) -> None:
        super().add(nbytes)
        self._publish()

    def set_done(self, nbytes: int) -> None:
        super().set_done(nbytes)
        self._publish()

    def set_fraction(self, fraction: float) -> None:
        super().set_fraction(fraction)
        self._publish()
