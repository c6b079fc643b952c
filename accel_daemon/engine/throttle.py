# SPDX-License-Identifier: Apache-2.0
"""Bandwidth limits: pace a flow of bytes to ``bps`` bytes per second.

A request's ``bps_limit`` (cinder's ``volume_copy_bps_limit``) is applied
where the engine moves the bytes itself: the chunk reads of the in-process
compressor, the stdin of a compression tool, the copy loop of
decompression (``sparse.copy_capped``) and of ``copy``.  ``qemu-img
convert`` paces itself (``-r``).  Holes that are never read or written
cost nothing and are not counted.

Without a limit nothing here is used (``pacer()`` gives None), so the
unthrottled paths are exactly what they were.
"""

from __future__ import annotations

from collections.abc import Callable
import time

from accel_daemon.engine.progress import Progress
from accel_daemon import exception

# How far behind its schedule a flow may fall and still catch up at full
# speed (a slow disk, a long compression): more would let a stalled flow
# burst far above the limit afterwards.
BURST_SECONDS = 0.25
# Paced loops move about this much of a second's worth of bytes per step,
# so the flow is smooth and the first sleep comes early.
STEP_SECONDS = 0.1
MIN_STEP = 64 * 1024


class Pacer:
    """Sleeps so that the bytes counted never run ahead of ``bps``.

    ``pace(n)`` counts ``n`` bytes just moved and sleeps until the schedule
    allows them.  The schedule is absolute (the time by which the bytes
    counted so far may have moved), so sleep overshoot and rounding do not
    add up over a long run: a late wake-up only means the next step does
    not sleep.  A flow that falls more than ``burst`` seconds behind is
    forgiven the rest.

    Sleeping waits on the cancel event of ``progress``: a cancel ends the
    sleep at once and raises ``Cancelled``.  ``clock`` and ``sleep`` are
    for tests (a fake clock).
    """

    def __init__(self, bps: int, progress: Progress | None = None, *,
                 burst: float = BURST_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] | None = None) -> None:
        if isinstance(bps, bool) or int(bps) < 1:
            raise ValueError('a bandwidth limit is at least 1 byte/s')
        self.bps = int(bps)
        self.burst = burst
        self.slept = 0.0
        self._progress = progress
        self._clock = clock
        self._sleep = sleep
        self._due: float | None = None

    def pace(self, nbytes: int) -> None:
        """Count ``nbytes`` moved; sleep until the limit allows them.

        A sleep that would end past the run's deadline
        (``Progress.deadline``: the task's ``command_timeout``) raises
        ``RateLimitTooLow`` at once instead: a limit so low that the
        transfer cannot end in time holds no worker for hours."""
        if nbytes <= 0:
            return
        now = self._clock()
        start = now if self._due is None else max(self._due,
                                                  now - self.burst)
        self._due = start + nbytes / self.bps
        delay = self._due - now
        deadline = getattr(self._progress, 'deadline', None)
        if deadline is not None and self._due > deadline:
            raise exception.RateLimitTooLow(
                bps_limit=self.bps, seconds=round(deadline - now))
        if delay > 0:
            self._wait(delay)

    def _wait(self, delay: float) -> None:
        self.slept += delay
        if self._sleep is not None:
            self._sleep(delay)
        elif self._progress is not None:
            self._progress.wait_cancelled(delay)
        else:
            time.sleep(delay)
        if self._progress is not None:
            self._progress.check()


def pacer(bps_limit: int | None,
          progress: Progress | None = None) -> Pacer | None:
    """A Pacer for a request's ``bps_limit``, or None when it has none."""
    return Pacer(bps_limit, progress) if bps_limit else None


def step(bps_limit: int | None, default: int, align: int = 4096) -> int:
    """The I/O size of one step of a paced loop: about ``STEP_SECONDS`` of
    the limit, within [MIN_STEP, default], a multiple of ``align``;
    ``default`` without a limit."""
    if not bps_limit:
        return default
    size = max(MIN_STEP, min(default, int(bps_limit * STEP_SECONDS)))
    return max(align, size - size % align)
