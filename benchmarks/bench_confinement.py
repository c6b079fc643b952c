# SPDX-License-Identifier: Apache-2.0
"""What confining the tools costs: the same operations with every tool in
its Landlock domain (``confine_tools = True``, the default) and without.

    python -m benchmarks.bench_confinement [--size-gib 8] [--data-gb 3]
        [--repeat 3] [--workdir /var/tmp/accel-bench] [--json FILE]

On the reference volume (benchmarks/volume.py), each run in its own child
(benchmarks/engine_step.py), confined and unconfined interleaved, inputs
warmed and outputs removed and synced between runs; medians reported:

  convert             qcow2 -> raw
  upload raw          raw volume -> gzip (qemu-img check, then compress)
  upload qcow2        qcow2 -> qcow2 image -> gzip: now rewritten by
                      qemu-img before it is compressed, so a header changed
                      after inspection is never published
  compress qcow2      what that upload did before (the source compressed
                      as it is), for the cost of the rewrite

Run as root on an otherwise idle machine (wall times).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

if __package__ in (None, ''):
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks import volume  # noqa: E402

STEPS = (
    ('convert qcow2->raw', 'convert', 'qcow2', 'out.raw',
     {'src_format': 'qcow2', 'dst_format': 'raw'}),
    ('upload raw->raw.gz', 'upload', 'raw', 'up.gz',
     {'src_format': 'raw', 'disk_format': 'raw'}),
    ('upload qcow2->qcow2.gz', 'upload', 'qcow2', 'upq.gz',
     {'src_format': 'qcow2', 'disk_format': 'qcow2'}),
    ('compress qcow2 (old upload path)', 'compress', 'qcow2', 'cq.gz', {}),
)


def _once(settings, kind: str, src: str, dst: str, extra: dict) -> float:
    common.warm(src)
    try:
        m = common.run_engine(settings, kind,
                              dict(extra, src=src, dst=dst))
    finally:
        common.remove(dst)
        subprocess.run(['sync'], check=True)
    return m.wall


def measure(args: argparse.Namespace, vol: volume.Volume) -> list[dict]:
    confined = common.bench_settings(args.workdir)
    loose = common.bench_settings(args.workdir, confine_tools=False)
    out = os.path.join(os.path.dirname(vol.raw), 'out')
    os.makedirs(out, exist_ok=True)
    rows = []
    for label, kind, which, name, extra in STEPS:
        src = vol.qcow2 if which == 'qcow2' else vol.raw
        dst = os.path.join(out, name)
        times: dict[str, list[float]] = {'unconfined': [], 'confined': []}
        for _ in range(args.repeat):
            times['unconfined'].append(_once(loose, kind, src, dst, extra))
            times['confined'].append(_once(confined, kind, src, dst, extra))
        row = {'operation': label,
               'unconfined_s': statistics.median(times['unconfined']),
               'confined_s': statistics.median(times['confined']),
               'runs': times}
        row['ratio'] = row['confined_s'] / row['unconfined_s']
        rows.append(row)
        print('%-34s unconfined %6.2f s  confined %6.2f s  (%.3fx)'
              % (label, row['unconfined_s'], row['confined_s'],
                 row['ratio']), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ['| operation | unconfined s (median) | confined s (median) '
             '| confined / unconfined |', '|---|---|---|---|']
    for r in rows:
        lines.append('| %s | %.2f | %.2f | %.3fx |' % (
            r['operation'], r['unconfined_s'], r['confined_s'], r['ratio']))
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--size-gib', type=float, default=8)
    p.add_argument('--data-gb', type=float, default=3)
    p.add_argument('--repeat', type=int, default=3)
    p.add_argument('--workdir', default=volume.DEFAULT_WORKDIR)
    p.add_argument('--json', metavar='FILE')
    args = p.parse_args(argv)
    vol = volume.build(args.workdir, args.size_gib, args.data_gb)
    rows = measure(args, vol)
    print()
    print(table(rows))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
