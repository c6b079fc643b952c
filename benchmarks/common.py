# SPDX-License-Identifier: Apache-2.0
"""Shared pieces of the benchmarks: settings, timed processes, the table.

Every timed step runs in its own child process and is reaped with
``os.wait4()``, so CPU seconds and peak RSS cover that step only (the kernel
folds reaped grandchildren such as igzip or qemu-img into the child's
figures).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as "python benchmarks/x.py" too
    sys.path.insert(0, REPO)

from accel_daemon.engine.settings import Settings  # noqa: E402
from tests.envfixture import install_filters  # noqa: E402


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""


@dataclasses.dataclass
class Measurement:
    wall: float
    cpu: float
    maxrss: int          # bytes
    result: dict | None = None


def bench_settings(workdir: str, **overrides: Any) -> Settings:
    """Settings confined to ``workdir/images`` with the repo's filters
    rewritten to name that directory (as tests/envfixture.py does)."""
    images = os.path.realpath(os.path.join(workdir, 'images'))
    filters = os.path.join(os.path.realpath(workdir), 'filters')
    os.makedirs(images, exist_ok=True)
    install_filters(filters, images)
    return Settings(allowed_dirs=(images,), filters_path=(filters,),
                    **overrides)


def _wait(proc: subprocess.Popen, started: float) -> Measurement:
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux.
    return Measurement(wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024)


def run_tool(argv: list[str], stdin: str | None = None,
             stdout: str | None = None) -> Measurement:
    """Run an external command, file to file, and measure it."""
    fin = open(stdin, 'rb') if stdin else subprocess.DEVNULL
    fout = open(stdout, 'xb') if stdout else subprocess.DEVNULL
    try:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=fin, stdout=fout,
                                stderr=subprocess.PIPE)
        err = proc.stderr.read()
        m = _wait(proc, started)
    finally:
        for f in (fin, fout):
            if f is not subprocess.DEVNULL:
                f.close()
    if proc.returncode != 0:
        raise BenchError('%s failed (%s): %s' % (' '.join(argv),
                                                 proc.returncode,
                                                 err.decode().strip()))
    return m


def run_engine(settings: Settings, kind: str,
               params: dict[str, Any]) -> Measurement:
    """Run one Engine operation in a child (benchmarks/engine_step.py).

    wall and cpu are measured around ``Engine.run()`` inside the child, so
    interpreter start-up and imports are not charged to the engine; maxrss
    is the child's peak, start-up included.
    """
    request = json.dumps({'settings': dataclasses.asdict(settings),
                          'kind': kind, 'params': params})
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, '-m', 'benchmarks.engine_step', request], cwd=REPO,
        stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=REPO))
    out = proc.stdout.read()
    m = _wait(proc, started)
    try:
        reply = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError('engine %s: child exited %s without a reply'
                         % (kind, proc.returncode))
    if not reply['ok']:
        raise BenchError('engine %s failed: %s: %s' % (
            kind, reply['error'], reply['message']))
    return Measurement(reply['wall'], reply['cpu'], m.maxrss,
                       reply['result'])


def warm(path: str) -> int:
    """Read a (sparse) file's data once so it sits in the page cache."""
    done = 0
    with open(path, 'rb', buffering=0) as f:
        fd = f.fileno()
        end = os.fstat(fd).st_size
        pos = 0
        while pos < end:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            while pos < hole:
                n = len(os.pread(fd, min(8 << 20, hole - pos), pos))
                if not n:
                    break
                pos += n
                done += n
    return done


def remove(*paths: str) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..1) of a non-empty sample."""
    ordered = sorted(samples)
    rank = math.ceil(p * len(ordered))
    return ordered[max(0, min(len(ordered), rank) - 1)]


@dataclasses.dataclass
class Row:
    operation: str
    tool: str
    m: Measurement
    out_bytes: int
    alloc_bytes: int
    baseline: 'Row | None' = None

    def speedup(self) -> float | None:
        if self.baseline is None or self.m.wall <= 0:
            return None
        return self.baseline.m.wall / self.m.wall

    def size_ratio(self) -> float | None:
        if self.baseline is None or not self.baseline.out_bytes:
            return None
        return self.out_bytes / self.baseline.out_bytes

    def as_dict(self) -> dict:
        return {'operation': self.operation, 'tool': self.tool,
                'wall_s': round(self.m.wall, 3), 'cpu_s': round(self.m.cpu, 3),
                'out_bytes': self.out_bytes, 'alloc_bytes': self.alloc_bytes,
                'peak_rss_bytes': self.m.maxrss, 'speedup': self.speedup(),
                'size_vs_baseline': self.size_ratio()}


HEADER = ('operation', 'tool', 'wall s', 'CPU s', 'out MB', 'alloc MB',
          'RSS MB', 'speed-up', 'size vs base')


def _fmt_ratio(value: float | None, suffix: str = 'x') -> str:
    return '-' if value is None else '%.2f%s' % (value, suffix)


def table(rows: list[Row]) -> str:
    lines = [HEADER]
    for r in rows:
        lines.append((r.operation, r.tool, '%.2f' % r.m.wall,
                      '%.2f' % r.m.cpu, '%.0f' % (r.out_bytes / 1e6),
                      '%.0f' % (r.alloc_bytes / 1e6),
                      '%.0f' % (r.m.maxrss / 1e6), _fmt_ratio(r.speedup()),
                      _fmt_ratio(r.size_ratio())))
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = []
    for n, line in enumerate(lines):
        out.append('| ' + ' | '.join(c.ljust(w) for c, w in zip(line, widths))
                   + ' |')
        if n == 0:
            out.append('|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    return '\n'.join(out)
