# SPDX-License-Identifier: Apache-2.0
"""Engine against the stock tools, in one run on the same volume.

    python -m benchmarks.bench_engine [--size-gib 8] [--data-gb 3]
        [--workdir /var/tmp/accel-bench] [--skip-baseline] [--json FILE]

Steps (page cache warmed before each input is read):
  compress    Engine 'compress' (default drivers)   vs  gzip -6 -c
  decompress  Engine 'decompress' of its own output
              and of the gzip -6 file                vs  gzip -d -c
  convert     Engine 'convert' qcow2 -> raw          vs  qemu-img convert
                                                         -t writethrough
Each step runs in its own process: CPU seconds and peak RSS are that
step's (children included). Outputs of the engine are checked against the
volume with ``qemu-img compare`` unless --no-verify. The gzip -6 output is
kept, so later runs with --skip-baseline still decompress it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

if __package__ in (None, ''):  # run as "python benchmarks/bench_engine.py"
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks.common import Row  # noqa: E402
from benchmarks import volume  # noqa: E402

LOG = logging.getLogger(__name__)

# The "Done when": (row operation, minimum speed-up, maximum size
# ratio against the baseline).
TARGETS = (('compress', 30.0, 1.15), ('decompress (own)', 6.0, None),
           ('convert qcow2->raw', 2.0, None))
MAX_COMPRESS_RSS = 300 * 1024 ** 2


class Bench:
    def __init__(self, args: argparse.Namespace, vol: volume.Volume) -> None:
        self.args = args
        self.vol = vol
        self.settings = common.bench_settings(args.workdir)
        images = os.path.dirname(vol.raw)
        self.out = os.path.join(images, 'out')
        os.makedirs(self.out, exist_ok=True)
        self.gzip6 = os.path.splitext(vol.raw)[0] + '.gzip6.gz'
        if (os.path.exists(self.gzip6) and os.path.getmtime(self.gzip6)
                < os.path.getmtime(vol.raw)):
            common.remove(self.gzip6)  # made from an older build
        self.engine_gz = self._out('engine.gz')
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def _out(self, name: str) -> str:
        path = os.path.join(self.out, name)
        common.remove(path)
        return path

    def _settle(self, *outputs: str) -> None:
        # Drop finished outputs and flush, so one step's writeback does
        # not slow the next one down.
        common.remove(*outputs)
        os.sync()

    def _row(self, op: str, tool: str, m: common.Measurement, out: str,
             baseline: Row | None = None) -> Row:
        row = Row(op, tool, m, os.path.getsize(out), common.allocated(out),
                  baseline)
        self.rows.append(row)
        LOG.info('%-20s %-24s %7.2f s', op, tool, m.wall)
        return row

    def _engine(self, kind: str, params: dict) -> common.Measurement:
        if self.args.no_checksum:
            params = dict(params, checksum=False)
        runs = []
        for _ in range(self.args.repeat):
            common.remove(params['dst'])
            runs.append(common.run_engine(self.settings, kind, params))
            os.sync()
        # The median run by wall time; the last run's output stays.
        return sorted(runs, key=lambda m: m.wall)[(len(runs) - 1) // 2]

    def _verify(self, out: str, reference: str) -> None:
        if self.args.no_verify:
            return
        common.run_tool(['qemu-img', 'compare', '-q', '-f', 'raw', '-F',
                         'raw', reference, out])

    @staticmethod
    def _engine_name(m: common.Measurement) -> str:
        r = m.result or {}
        return 'engine: %s%s' % (r.get('engine', '?'),
                                 ' (hw)' if r.get('hardware') else '')

    # -- steps -------------------------------------------------------------
    def compress(self) -> None:
        common.warm(self.vol.raw)
        m = self._engine('compress', {'src': self.vol.raw,
                                      'dst': self.engine_gz})
        base = None
        if not self.args.skip_baseline:
            tmp = self._out('gzip6.gz.tmp')
            bm = common.run_tool(['gzip', '-6', '-c'], stdin=self.vol.raw,
                                 stdout=tmp)
            os.replace(tmp, self.gzip6)
            base = self._row('compress', 'gzip -6', bm, self.gzip6)
        row = self._row('compress', self._engine_name(m), m, self.engine_gz,
                        base)
        if base is None and os.path.exists(self.gzip6):
            self.notes.append('compress: %.3fx the size of the kept gzip -6 '
                              'file' % (row.out_bytes
                                        / os.path.getsize(self.gzip6)))
        os.sync()

    def decompress(self) -> None:
        base = None
        have_gzip6 = os.path.exists(self.gzip6)
        if not have_gzip6:
            LOG.warning('no %s (run once without --skip-baseline): '
                        'skipping decompress of the gzip -6 file', self.gzip6)
        elif not self.args.skip_baseline:
            common.warm(self.gzip6)
            out = self._out('gzip-d.raw')
            bm = common.run_tool(['gzip', '-d', '-c'], stdin=self.gzip6,
                                 stdout=out)
            base = self._row('decompress (gzip -6)', 'gzip -d', bm, out)
            self._settle(out)
        self._engine_decompress('own', self.engine_gz, base)
        if have_gzip6:
            self._engine_decompress('gzip -6', self.gzip6, base)

    def _engine_decompress(self, label: str, src: str,
                           base: Row | None) -> None:
        common.warm(src)
        out = self._out('engine-decompress.raw')
        m = self._engine('decompress', {'src': src, 'dst': out})
        self._row('decompress (%s)' % label, self._engine_name(m), m, out,
                  base)
        self._verify(out, self.vol.raw)
        self._settle(out)

    def convert(self) -> None:
        common.warm(self.vol.qcow2)
        base = None
        if not self.args.skip_baseline:
            out = self._out('qemu-img-wt.raw')
            bm = common.run_tool(['qemu-img', 'convert', '-f', 'qcow2', '-O',
                                  'raw', '-t', 'writethrough',
                                  self.vol.qcow2, out])
            base = self._row('convert qcow2->raw',
                             'qemu-img -t writethrough', bm, out)
            self._settle(out)
        out = self._out('engine-convert.raw')
        m = self._engine('convert', {'src': self.vol.qcow2, 'dst': out,
                                     'src_format': 'qcow2',
                                     'dst_format': 'raw'})
        self._row('convert qcow2->raw', self._engine_name(m), m, out, base)
        self._verify(out, self.vol.raw)
        self._settle(out)

    def run(self) -> None:
        self.compress()
        self.decompress()
        self.convert()
        common.remove(self.engine_gz)


def check_targets(rows: list[Row]) -> list[str]:
    """One PASS/FAIL line per target of the engine issue."""
    lines = []
    for op, min_speedup, max_size in TARGETS:
        row = next((r for r in rows if r.operation == op and r.baseline),
                   None)
        if row is None:
            lines.append('SKIP %s: no baseline timed' % op)
            continue
        speed = row.speedup()
        ok = speed >= min_speedup
        text = '%s speed-up %.1fx (target >= %gx)' % (op, speed, min_speedup)
        if max_size is not None:
            ratio = row.size_ratio()
            ok = ok and ratio <= max_size
            text += ', size %.3fx (target <= %g)' % (ratio, max_size)
        lines.append('%s %s' % ('PASS' if ok else 'FAIL', text))
    comp = next((r for r in rows if r.operation == 'compress'
                 and r.tool.startswith('engine')), None)
    if comp is not None:
        ok = comp.m.maxrss < MAX_COMPRESS_RSS
        lines.append('%s compress peak RSS %.0f MB (target < %d MB)' % (
            'PASS' if ok else 'FAIL', comp.m.maxrss / 1e6,
            MAX_COMPRESS_RSS // 1024 ** 2))
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description='Engine compress/decompress/convert against gzip -6, '
                    'gzip -d and qemu-img convert -t writethrough.')
    p.add_argument('--size-gib', type=float, default=8,
                   help='virtual size of the volume (default 8)')
    p.add_argument('--data-gb', type=float, default=3,
                   help='GB of files in the volume (default 3)')
    p.add_argument('--workdir', default=volume.DEFAULT_WORKDIR)
    p.add_argument('--skip-baseline', action='store_true',
                   help='time only the engine (reuses a kept gzip -6 file)')
    p.add_argument('--no-verify', action='store_true',
                   help='skip qemu-img compare of the engine outputs')
    p.add_argument('--repeat', type=int, default=1,
                   help='runs of each engine step; the median is shown '
                        '(baselines always run once)')
    p.add_argument('--no-checksum', action='store_true',
                   help='ask the engine for no sha256 of its outputs (by '
                        'default it hashes compressed outputs)')
    p.add_argument('--rebuild-volume', action='store_true')
    p.add_argument('--json', metavar='FILE', help='also write results here')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    vol = volume.build(args.workdir, args.size_gib, args.data_gb,
                       args.rebuild_volume)
    bench = Bench(args, vol)
    try:
        bench.run()
    except common.BenchError as e:
        print('benchmark stopped: %s' % e, file=sys.stderr)
        return 2
    print('\nvolume %s: %.1f GiB virtual, %.0f MB of files, %.0f MB '
          'allocated; %d cores\n' % (
              os.path.basename(vol.raw), vol.size_bytes / 1024 ** 3,
              vol.data_bytes / 1e6, vol.allocated_bytes / 1e6,
              os.cpu_count() or 0))
    print(common.table(bench.rows))
    print()
    print('\n'.join(bench.notes + check_targets(bench.rows)))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'volume': vol.__dict__,
                       'rows': [r.as_dict() for r in bench.rows]}, f,
                      indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
