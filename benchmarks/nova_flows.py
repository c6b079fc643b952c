# SPDX-License-Identifier: Apache-2.0
"""nova's ``fetch_to_raw`` through a real glance-api, stock against
accel-daemon (files, and streamed), side by side in one run.

Runs inside the nova caller venv (``tools/caller-venvs.sh``);
``bash tools/bench-callers.sh nova ...`` prepares it, builds glance's venv
(``tools/glance-venv.sh``) and runs this script in it.

Flows, with nova 34's real ``nova.virt.images.fetch_to_raw`` and its own
image API (``nova.image.glance.API``: python-glanceclient, its sha512
check, HTTP) against a real glance-api (``benchmarks/glance_api.py``:
sqlite, file store, no keystone), into ``instances_path/_base`` with
``force_raw_images = true`` (nova's default):

fetch-raw
    a raw image of the volume (container ``bare``);
fetch-qcow2
    the volume as a qcow2 image (``qemu-img convert -O qcow2``).

Paths:

stock
    nova's own ``fetch_to_raw`` and ``convert_image`` (download to
    ``path.part``, qemu-img convert to ``path.converted``, rename).
daemon
    ``accel_daemon.integrations.nova.install()`` with ``[accel_daemon_
    nova] stream_images = false``: nova downloads ``path.part``, the
    daemon converts it.
stream
    the same with streams (the default): nova's download writes into the
    daemon's ``stream_in``.

Each run is timed around the nova call and a ``sync``; it records the CPU
seconds per process group (``procstats``: this process and what runs
under it -- nova, its qemu-img --, accel-daemon, its privsep helper, the
tools it runs, glance-api), the peak bytes of named files in
``instances_path`` (nova's ``.part`` and ``.converted``) and the bytes
written to the host's disks.  Runs are interleaved (the order of the paths
rotates); every output is compared with the volume (``qemu-img
compare``).  Exit status 1 when a check fails, 2 when a flow fails.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
import warnings

warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import bench_daemon  # noqa: E402
import cinder_flows as shared  # noqa: E402
import glance_api  # noqa: E402
import mixed_volume  # noqa: E402
import procstats  # noqa: E402

LOG = logging.getLogger('nova_flows')
MiB = 1024 * 1024
FLOWS = ('fetch-raw', 'fetch-qcow2')
PATHS = ('stock', 'daemon', 'stream')
CPU_GROUPS = shared.CPU_GROUPS

NOVA_CONF = """[DEFAULT]
transport_url = %(url)s
state_path = %(state)s
instances_path = %(instances)s
force_raw_images = true

[glance]
api_servers = %(glance)s

[oslo_concurrency]
lock_path = %(locks)s

[accel_daemon_client]
enabled = true
host = %(host)s
"""


class Paths:
    """Switches nova between its own functions and the integration."""

    def __init__(self) -> None:
        from nova.virt import images

        from accel_daemon.integrations import nova as integration
        self.images = images
        self.integration = integration
        stock = (images.fetch_to_raw, images.convert_image)
        integration.install()
        ours = (images.fetch_to_raw, images.convert_image)
        self.settings = {'stock': stock + (False,),
                         'daemon': ours + (False,),
                         'stream': ours + (True,)}

    def use(self, path: str) -> None:
        from oslo_config import cfg
        fetch, convert, stream = self.settings[path]
        self.images.fetch_to_raw = fetch
        self.images.convert_image = convert
        self.integration.register_opts(cfg.CONF)
        cfg.CONF.set_override('stream_images', stream, 'accel_daemon_nova')


class Bench:

    def __init__(self, args) -> None:
        self.args = args
        self.work = os.path.realpath(args.workdir)
        self.size = args.size_mib * MiB
        self.samples: dict[tuple[str, str], list[float]] = {}
        self.cpu: dict[tuple[str, str], list[dict[str, float]]] = {}
        self.peaks: dict[tuple[str, str], list[int]] = {}
        self.written: dict[tuple[str, str], list[int]] = {}
        self.allocated: dict[tuple[str, str], list[int]] = {}
        self.what: dict[tuple[str, str], set[str]] = {}
        self.checks: list[str] = []
        self.failures: list[str] = []
        self.glance_api: glance_api.GlanceAPI | None = None
        self.daemon: bench_daemon.Daemon | None = None

    def prepare(self) -> None:
        cache = os.path.join(self.work, 'cache')
        self.volume, self.volume_sha = mixed_volume.build(cache, self.size)
        self.qcow2 = os.path.join(cache, 'nova-%s.qcow2'
                                  % self.volume_sha[:16])
        if not os.path.exists(self.qcow2):
            shared.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                        self.volume, self.qcow2 + '.part'])
            os.replace(self.qcow2 + '.part', self.qcow2)

    def start(self) -> None:
        self.daemon = bench_daemon.Daemon(self.work, self.args.transport_url)
        LOG.info('starting accel-daemon as %s', self.daemon.host)
        self.caps = self.daemon.start()
        self.client = self.daemon.client()
        self.run_dir = os.path.join(self.daemon.images,
                                    'run-%s' % uuid.uuid4().hex[:8])
        self.instances = os.path.join(self.run_dir, 'instances')
        self.base = os.path.join(self.instances, '_base')
        os.makedirs(self.base)
        self.glance_api = glance_api.GlanceAPI(
            os.path.join(self.run_dir, 'glance'), self.args.glance_venv)
        LOG.info('starting glance-api (%s)', self.args.glance_venv)
        self.glance_api.start()
        self.image_ids = {
            'raw': glance_api.create_image(self.glance_api.url, 'nova-raw',
                                           'raw', 'bare', self.volume),
            'qcow2': glance_api.create_image(self.glance_api.url,
                                             'nova-qcow2', 'qcow2', 'bare',
                                             self.qcow2)}
        self.configure_nova()

    def configure_nova(self) -> None:
        from oslo_config import cfg

        from nova import conf  # noqa: F401 (nova's options)
        from nova import context
        path = os.path.join(self.run_dir, 'nova.conf')
        with open(path, 'w') as f:
            f.write(NOVA_CONF % {
                'url': self.args.transport_url,
                'state': os.path.join(self.run_dir, 'nova-state'),
                'instances': self.instances,
                'glance': self.glance_api.url,
                'locks': os.path.join(self.run_dir, 'locks'),
                'host': self.daemon.host})
        cfg.CONF(['--config-file', path], project='nova',
                 default_config_files=[])
        # No keystone: glance-api runs with its unauthenticated context.
        self.ctx = context.RequestContext(user_id='bench',
                                          project_id='bench',
                                          is_admin=True,
                                          auth_token='noauth')
        self.paths = Paths()

    def stop(self) -> None:
        if getattr(self, 'client', None) is not None:
            self.client.close()
        if self.daemon is not None:
            self.daemon.stop()
        if self.glance_api is not None:
            self.glance_api.stop()
        if not self.args.keep and getattr(self, 'run_dir', None):
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def cpu_snapshot(self) -> dict[str, float]:
        assert self.daemon is not None and self.glance_api is not None
        return procstats.by_group(self.daemon.proc.pid, self.daemon.config,
                                  self.glance_api.pids())

    def one(self, flow: str, path: str) -> None:
        fmt = flow.split('-')[1]
        self.paths.use(path)
        before = {t.id for t in self.client.tasks(limit=1000)}
        out = os.path.join(self.base, '%s-%s' % (flow, path))
        shared.remove(out)
        os.sync()
        cpu_before = self.cpu_snapshot()
        disk_before = procstats.disk_written()
        started = time.monotonic()
        try:
            with procstats.PeakBytes(self.instances) as peak:
                self.paths.images.fetch_to_raw(self.ctx,
                                               self.image_ids[fmt], out)
                os.sync()
        except Exception as e:
            raise shared.FlowError('%s on the %s path: %s: %s'
                                   % (flow, path, type(e).__name__, e)
                                   ) from e
        wall = time.monotonic() - started
        key = (flow, path)
        self.samples.setdefault(key, []).append(wall)
        self.cpu.setdefault(key, []).append(
            procstats.delta(cpu_before, self.cpu_snapshot()))
        self.written.setdefault(key, []).append(
            procstats.disk_written() - disk_before)
        self.peaks.setdefault(key, []).append(peak.peak)
        self.allocated.setdefault(key, []).append(shared.allocated(out))
        tasks = sorted((t.task for t in self.client.tasks(limit=1000)
                        if t.id not in before),
                       key=lambda t: t.get('created_at') or 0)
        ran = ', '.join(t['kind'] for t in tasks)
        self.what.setdefault(key, set()).add('daemon: %s' % ran if ran
                                             else 'nova only')
        ok = shared.images_match('raw', out, self.volume)
        self.checks.append('%s %s: the disk %s the volume' % (
            flow, path, 'matches' if ok else 'DIFFERS FROM'))
        if not ok:
            self.failures.append('%s %s: the disk differs' % (flow, path))
        shared.remove(out)
        LOG.info('%-12s %-6s %7.2f s  %s', flow, path, wall, ran or '-')

    def run(self) -> None:
        # Warm: the image read once by glance, nova's and our clients.
        for fmt in self.image_ids:
            self.one('fetch-%s' % fmt, 'stock')
        self.samples.clear()
        for d in (self.cpu, self.peaks, self.written, self.allocated,
                  self.what):
            d.clear()
        self.checks.clear()
        for n in range(self.args.repeat):
            for i, flow in enumerate(self.args.flows):
                k = (n + i) % len(PATHS)
                for path in PATHS[k:] + PATHS[:k]:
                    self.one(flow, path)

    def report(self) -> str:
        m = shared.machine()
        vol_mib = self.size / MiB
        lines = [
            '## nova fetch_to_raw: stock nova against accel-daemon',
            '',
            '- machine: %s, %s cores, %.0f GiB RAM, kernel %s' % (
                m['cpu'], m['cores'], m['mem_gib'], m['kernel']),
            '- nova %s, python-glanceclient %s, accel-daemon %s, glance-api '
            '%s on loopback (sqlite, file store, no keystone)' % (
                shared.dist_version('nova'),
                shared.dist_version('python-glanceclient'),
                shared.dist_version('accel-daemon'),
                self.glance_api.url if self.glance_api else '-'),
            '- volume: %d MiB raw (%d MiB allocated), %s; qcow2 image %d '
            'MiB' % (vol_mib, shared.allocated(self.volume) // MiB,
                     mixed_volume.LAYOUT,
                     os.path.getsize(self.qcow2) // MiB),
            '- %d runs per row, interleaved; wall seconds around '
            'fetch_to_raw and a sync; peak MiB: named files in '
            'instances_path (nova\'s .part and .converted)'
            % self.args.repeat,
            '',
            '| flow | path | what ran | median s | min-max s | MiB/s | '
            'disk MiB alloc | peak MiB in instances_path | MiB written to '
            'disk | vs stock | vs daemon |',
            '|---|---|---|---|---|---|---|---|---|---|---|',
        ]
        for flow in self.args.flows:
            base = statistics.median(self.samples[(flow, 'stock')])
            files = statistics.median(self.samples[(flow, 'daemon')])
            for path in PATHS:
                key = (flow, path)
                s = self.samples[key]
                med = statistics.median(s)
                lines.append(
                    '| %s | %s | %s | %.2f | %.2f-%.2f | %.0f | %.0f | %.0f '
                    '| %.0f | %s | %s |' % (
                        flow, path, ' / '.join(sorted(self.what[key])), med,
                        min(s), max(s), vol_mib / med,
                        statistics.median(self.allocated[key]) / MiB,
                        max(self.peaks[key]) / MiB,
                        statistics.median(self.written[key]) / MiB,
                        '1.00x' if path == 'stock'
                        else '%.2fx' % (base / med),
                        '-' if path == 'stock'
                        else '%.2fx' % (files / med)))
        lines += ['', 'CPU seconds per process group, median of the runs:',
                  '', '| flow | path | %s | total |' % ' | '.join(
                      CPU_GROUPS),
                  '|---|---|%s---|' % ('---|' * len(CPU_GROUPS))]
        for flow in self.args.flows:
            for path in PATHS:
                runs = self.cpu[(flow, path)]
                lines.append('| %s | %s | %s | %.2f |' % (
                    flow, path, ' | '.join(
                        '%.2f' % statistics.median(r.get(g, 0.0)
                                                   for r in runs)
                        for g in CPU_GROUPS),
                    statistics.median(sum(r.values()) for r in runs)))
        fallbacks = '; '.join(sorted(
            self.paths.integration._fallbacks_logged)) or 'none'
        lines += ['', "Where the integration left nova's own code running "
                  "(reasons it logged): %s" % fallbacks, '', 'Checks:', '']
        counts: dict[str, int] = {}
        for check in self.checks:
            counts[check] = counts.get(check, 0) + 1
        lines += ['- %s%s' % (c, ' (%d runs)' % n if n > 1 else '')
                  for c, n in counts.items()]
        return '\n'.join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="nova's fetch_to_raw through a real glance, stock "
                    "against accel-daemon, side by side.")
    p.add_argument('--size-mib', type=int, default=1024)
    p.add_argument('--repeat', type=int, default=5)
    p.add_argument('--flows', default=','.join(FLOWS))
    p.add_argument('--workdir', default='/var/tmp/accel-bench-nova')
    p.add_argument('--transport-url', default=shared.DEFAULT_URL)
    p.add_argument('--glance-venv', default=glance_api.DEFAULT_VENV)
    p.add_argument('--keep', action='store_true')
    return shared.checked_args(p, argv, FLOWS)


def main(argv=None) -> int:
    args = parse_args(argv)
    shared.log_to(args.workdir, 'nova-flows.log', LOG)
    bench = Bench(args)
    bench.prepare()
    try:
        bench.start()
        bench.run()
    except (shared.FlowError, RuntimeError,
            subprocess.CalledProcessError) as e:
        print('benchmark stopped: %s' % e, file=sys.stderr)
        return 2
    finally:
        bench.stop()
    print(bench.report())
    if bench.failures:
        print('\nFAILED: %s' % '; '.join(bench.failures), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
