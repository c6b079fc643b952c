# SPDX-License-Identifier: Apache-2.0
"""The progress bar of a task: tqdm, on stderr, with its rate and ETA.

Shown when stderr is a terminal (or when forced with ``--progress``), and
only for a task that outlives half a second (tqdm's ``delay``).  Every
frame is drawn at the same width (the terminal's, or 80 columns), so no
frame has to pad over a longer one and the last frame, closed with a
newline, holds nothing but the bar.  A failed or interrupted task's bar is
erased instead, so that its one-line error stands alone.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from accel_daemon import records

DELAY = 0.5
WIDTH = 80


class Bar:
    """A bar for one task; ``update()`` with the task's progress dict."""

    def __init__(self, label: str, enabled: bool | None = None,
                 stream: TextIO | None = None, delay: float = DELAY) -> None:
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = _isatty(self.stream)
        self.enabled = enabled
        self.label = label
        self.delay = delay
        self._bar: Any = None
        self._started = time.monotonic()

    def _open(self, total: int) -> Any:
        from tqdm import tqdm
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            width = WIDTH
        return tqdm(total=total, desc=self.label, unit='B', unit_scale=True,
                    unit_divisor=1024,
                    delay=max(0.0, self.delay - self._elapsed()),
                    file=self.stream,
                    ncols=max(40, width - 1), leave=True, ascii=None,
                    mininterval=0.1, smoothing=0)

    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    def update(self, progress: records.TaskProgress | None) -> None:
        if not self.enabled or not progress:
            return
        total = int(progress.get('total') or 0)
        done = int(progress.get('done') or 0)
        if total <= 0:
            return
        if self._bar is None:
            self._bar = self._open(total)
        elif self._bar.total != total:
            self._bar.total = total
        if done > self._bar.n:
            self._bar.update(min(done, total) - self._bar.n)

    def close(self, ok: bool = True) -> None:
        """The last frame (complete) on success; erased otherwise."""
        bar, self._bar = self._bar, None
        if bar is None:
            return
        if not ok:
            bar.leave = False
        elif bar.total and bar.n < bar.total:
            bar.update(bar.total - bar.n)
        bar.close()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
