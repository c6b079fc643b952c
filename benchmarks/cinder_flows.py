# SPDX-License-Identifier: Apache-2.0
"""cinder's own image flows, through accel-daemon and through cinder's
stock code, side by side in one run.

Runs inside a venv holding cinder and accel-daemon (the cinder caller venv
of ``tools/caller-venvs.sh``); ``tools/bench-callers.sh`` prepares it and
runs this script in it:

    bash tools/bench-callers.sh [--size-mib 1024] [--repeat 3] ...

Flows, each run with cinder 29's real functions, from the same volume:

upload-raw, upload-qcow2
    ``cinder.image.image_utils.upload_volume`` of a file volume to an image
    with ``container_format='compressed'`` and ``disk_format`` raw or
    qcow2 (cinder's defaults otherwise: ``compress=True``,
    ``image_compress_on_upload = true``).
fetch-qcow2 (and fetch-raw)
    ``fetch_to_volume_format`` of a gzip'd qcow2 (raw) image onto a file
    volume of the same size, called alone: what create-volume-from-image
    is once its first download is gone (a change to cinder's create flow),
    and what a reimage does.
create-qcow2 (and create-raw)
    the same inside what cinder 29's create flow does around it
    (``_create_from_image_cache_or_download``): the image downloaded into
    ``image_conversion_dir`` first (``TemporaryImages.fetch``), its
    signature and virtual size checked on that file, then
    ``fetch_to_volume_format``.

Paths:

stock
    cinder's own ``image_utils.convert_image`` (qemu-img) and its own
    accelerator list (``AccelQAT``, then the ``AccelGZIP`` fallback: gzip
    and mv), and its own ``upload_volume``, no daemon.
daemon
    ``accel_daemon.integrations.cinder.install()`` with ``[accel_daemon_
    cinder] stream_images = false``: cinder's ``convert_image`` replaced
    by the integration's, with ``DaemonAccel`` first in cinder's
    accelerator list, against a real accel-daemon (the installed console
    script, privsep backend, real RabbitMQ; ``benchmarks/bench_daemon.py``):
    the daemon works on cinder's temporary files.  What the integration
    does not send to the daemon still runs cinder's own code: the table
    says which daemon tasks and how many of cinder's qemu-img conversions
    ran.
stream
    the same with streams (``stream_images = true``, the default): an
    upload is the daemon's ``stream_out`` read by the image service.

The image service is a file-backed stand-in (``FakeImageService``, which
stores uploads as files in the work directory) or, with ``--glance``, a
real glance-api from PyPI on loopback (``benchmarks/glance_api.py``:
sqlite, file store, no keystone) reached through cinder's own
``GlanceImageService`` and python-glanceclient.  The repetitions are
interleaved (the order of the paths rotates), outputs are deleted and the
page cache written back (``sync``) between runs, and every run is timed
around the cinder call and a ``sync`` of what it wrote.  Each run also
records the CPU seconds of each process group (cinder's process and what
runs under it, accel-daemon, its privsep helper, the tools it runs,
glance-api; ``benchmarks/procstats.py``), the peak bytes allocated in
``image_conversion_dir`` (named files, sampled every 20 ms) and the bytes
written to the host's disks (/proc/diskstats).

Checks (not timed): every upload, through ``gzip -dc``, decompresses to
the same image on both paths (raw: byte-identical to the volume; qcow2:
``qemu-img compare`` with the volume); every fetched volume matches the
source volume (``qemu-img compare``).  Exit status 1 when a check fails,
2 when a flow fails.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
from importlib import metadata
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any
import uuid
import warnings

# futurist (oslo.messaging) imports eventlet, which warns on import.
warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import bench_daemon  # noqa: E402
import glance_api  # noqa: E402
import mixed_volume  # noqa: E402
import procstats  # noqa: E402

LOG = logging.getLogger('cinder_flows')
MiB = 1024 * 1024
CHUNK = MiB
DEFAULT_URL = 'rabbit://guest:guest@127.0.0.1:5672/'
FLOWS = ('upload-raw', 'upload-qcow2', 'fetch-qcow2', 'fetch-raw',
         'create-raw', 'create-qcow2')
DEFAULT_FLOWS = ('upload-raw', 'upload-qcow2', 'fetch-qcow2')
PATHS = ('stock', 'daemon', 'stream')
# CPU seconds are reported per group of processes (procstats.CpuTree).
CPU_GROUPS = ('caller', 'daemon', 'helper', 'tools', 'glance')

CINDER_CONF = """[DEFAULT]
transport_url = %(url)s
state_path = %(state)s
image_conversion_dir = %(conversion)s
allow_compression_on_image_upload = true
compression_format = gzip

[cinder_sys_admin]
# cinder's own privsep daemon (qemu-img info's format inspector): started
# directly, as root, instead of through sudo and cinder-rootwrap.
helper_command = %(privsep_helper)s --config-file %(self)s

[accel_daemon_client]
enabled = true
host = %(host)s
%(glance)s"""

# A real glance-api (benchmarks/glance_api.py), as cinder reaches it
# without keystone.
GLANCE_CONF = """
[DEFAULT]
glance_api_servers = %(url)s
auth_strategy = noauth
"""


class FlowError(Exception):
    """A flow failed; the benchmark stops."""


class FakeImageService:
    """The image service calls cinder's flows make: ``show``, ``update``
    (upload: the bytes are stored in a file) and ``download`` (from a
    file).  The same for both paths."""

    def __init__(self, store: str) -> None:
        self.store = store
        self.images: dict[str, dict] = {}
        # cinder's TemporaryImages hangs itself here (as on glance's).
        self.temp_images = None
        os.makedirs(store, exist_ok=True)

    def path(self, image_id: str) -> str:
        return os.path.join(self.store, image_id)

    def add(self, meta: dict, path: str | None = None) -> None:
        meta = dict(meta)
        if path is not None:
            meta['size'] = os.path.getsize(path)
            meta['file'] = path
        else:
            meta['file'] = self.path(meta['id'])
        self.images[meta['id']] = meta

    def show(self, context, image_id: str) -> dict:
        meta = dict(self.images[image_id])
        meta.pop('file')
        return meta

    def update(self, context, image_id: str, image_meta: dict, data=None,
               purge_props: bool = True, store_id=None,
               base_image_ref=None) -> dict:
        if data is not None:
            size = 0
            with open(self.images[image_id]['file'], 'wb') as out:
                while True:
                    chunk = data.read(CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    size += len(chunk)
            self.images[image_id]['size'] = size
        return self.show(context, image_id)

    def download(self, context, image_id: str, data=None):
        with open(self.images[image_id]['file'], 'rb') as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    return
                data.write(chunk)

    # -- what the benchmark asks of its store (as GlanceStore) ---------------
    def new_image(self, context, name: str, disk_format: str,
                  container_format: str, path: str | None = None) -> str:
        self.add({'id': name, 'disk_format': disk_format,
                  'container_format': container_format}, path)
        if path is None:
            remove(self.path(name))
        return name

    def stored_size(self, context, image_id: str) -> int:
        return os.path.getsize(self.images[image_id]['file'])

    def fetch_file(self, context, image_id: str, path: str) -> None:
        run(['cp', self.images[image_id]['file'], path])


class GlanceStore:
    """cinder's real ``GlanceImageService`` on a real glance-api
    (``glance_api.GlanceAPI``): python-glanceclient, HTTP, glance's
    sha512 multihash and its file store."""

    def __init__(self) -> None:
        # image_utils first: cinder 29's glance module, imported first,
        # fails on a circular import.
        from cinder.image import image_utils  # noqa: F401
        from cinder.image import glance  # noqa: H306
        self.service = glance.GlanceImageService()
        # cinder's TemporaryImages hangs itself on the service.
        self.temp_images = None

    def __getattr__(self, name: str):
        return getattr(self.service, name)

    def new_image(self, context, name: str, disk_format: str,
                  container_format: str, path: str | None = None) -> str:
        image_id = self.service.create(context, {
            'name': name, 'disk_format': disk_format,
            'container_format': container_format})['id']
        if path is not None:
            with open(path, 'rb') as f:
                self.service.update(context, image_id, {}, f)
        return image_id

    def stored_size(self, context, image_id: str) -> int:
        return int(self.service.show(context, image_id)['size'])

    def fetch_file(self, context, image_id: str, path: str) -> None:
        with open(path, 'wb') as f:
            self.service.download(context, image_id, data=f)


# -- the two paths -----------------------------------------------------------

class Paths:
    """Switches cinder between its stock code and the integration."""

    def __init__(self) -> None:
        from cinder.image import accelerator
        from cinder.image import image_utils

        from accel_daemon.integrations import cinder as integration
        self.accelerator = accelerator
        self.image_utils = image_utils
        self.integration = integration
        self.cinder_converts = 0
        stock_convert = image_utils.convert_image
        stock_list = list(accelerator._ACCEL_PATH_PREFERENCE_ORDER_LIST)

        # cinder's signature (install() checks it before it replaces).
        @functools.wraps(stock_convert)
        def counted_convert(*args, **kwargs):
            # cinder's own convert_image: qemu-img in cinder's process.
            self.cinder_converts += 1
            return stock_convert(*args, **kwargs)

        # Which engine cinder's ImageAccel ran, on both paths alike.
        self.accel_calls: list[str] = []
        # Seconds per step of the current run: convert_image (whichever is
        # installed), compress_img, decompress_img.
        self.steps: dict[str, float] = {}
        for name in ('compress_img', 'decompress_img'):
            setattr(accelerator.ImageAccel, name,
                    self._recording(getattr(accelerator.ImageAccel, name),
                                    name))
        # install() keeps what it replaces as the integration's fallback:
        # the counting wrapper, on both paths alike.
        image_utils.convert_image = counted_convert
        stock_upload = image_utils.upload_volume
        integration.install()
        daemon_list = list(accelerator._ACCEL_PATH_PREFERENCE_ORDER_LIST)
        if integration.PATH not in daemon_list:
            # cinder 29's list is hard-coded: what an operator's start-up
            # wrapper or cinder patch does.
            daemon_list.insert(0, integration.PATH)
        daemon_convert = self._timed(image_utils.convert_image)
        # (convert_image, accelerator list, upload_volume, stream_images)
        self.settings = {
            'stock': (self._timed(counted_convert), stock_list,
                      stock_upload, False),
            # The integration with streams off: the daemon converts and
            # compresses cinder's temporary files.
            'daemon': (daemon_convert, daemon_list,
                       integration.upload_volume, False),
            'stream': (daemon_convert, daemon_list,
                       integration.upload_volume, True),
        }
        self.use('stock')

    def _recording(self, method, name: str):
        def wrapper(accel, run_as_root):
            self.accel_calls.append('%s.%s' % (type(accel.engine).__name__,
                                               name))
            started = time.monotonic()
            try:
                return method(accel, run_as_root)
            finally:
                self._step(name.split('_')[0], started)
        return wrapper

    def _timed(self, convert):
        def timed_convert(*args, **kwargs):
            started = time.monotonic()
            try:
                return convert(*args, **kwargs)
            finally:
                self._step('convert', started)
        return timed_convert

    def _step(self, name: str, started: float) -> None:
        self.steps[name] = self.steps.get(name, 0.0) + (time.monotonic() -
                                                        started)

    def use(self, path: str) -> None:
        from oslo_config import cfg
        convert, accels, upload, stream = self.settings[path]
        self.image_utils.convert_image = convert
        self.image_utils.upload_volume = upload
        self.accelerator._ACCEL_PATH_PREFERENCE_ORDER_LIST = list(accels)
        self.integration.register_opts(cfg.CONF)
        cfg.CONF.set_override('stream_images', stream,
                              'accel_daemon_cinder')

    def engine_name(self, scratch: str) -> str:
        """The class cinder's ImageAccel selects on the current path."""
        with open(scratch, 'wb'):
            pass
        try:
            engine = self.accelerator.ImageAccel(scratch, scratch).engine
            return type(engine).__name__
        finally:
            os.unlink(scratch)


# -- helpers -----------------------------------------------------------------

def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, **kwargs)


def first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True,
                             check=False).stdout
    except OSError:
        return 'not found'
    return (out.strip().splitlines() or ['?'])[0]


def dpkg_version(package: str) -> str:
    return first_line(['dpkg-query', '-W', '-f', '${Version}', package])


def dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return 'not installed'


def gunzip_sha256(path: str, keep: str | None = None) -> str:
    """sha256 of ``gzip -dc path`` (and the output kept in ``keep``)."""
    h = hashlib.sha256()
    proc = subprocess.Popen(['gzip', '-dc', path], stdout=subprocess.PIPE)
    out = open(keep, 'wb') if keep else None
    try:
        while True:
            chunk = proc.stdout.read(CHUNK)
            if not chunk:
                break
            h.update(chunk)
            if out:
                out.write(chunk)
    finally:
        if out:
            out.close()
    if proc.wait() != 0:
        raise FlowError('gzip -d %s failed (%s)' % (path, proc.returncode))
    return h.hexdigest()


def images_match(fmt: str, path: str, volume: str) -> bool:
    proc = subprocess.run(['qemu-img', 'compare', '-q', '-f', fmt, '-F',
                           'raw', path, volume], capture_output=True)
    return proc.returncode == 0


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def machine() -> dict:
    model = '?'
    with contextlib.suppress(OSError):
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    model = line.split(':', 1)[1].strip()
                    break
    mem = 0
    with contextlib.suppress(OSError, ValueError):
        with open('/proc/meminfo') as f:
            mem = int(f.readline().split()[1]) * 1024
    return {'cpu': model, 'cores': os.cpu_count(), 'mem_gib': mem / 2 ** 30,
            'kernel': platform.release(), 'python': platform.python_version()}


# -- the benchmark -----------------------------------------------------------

class Bench:

    def __init__(self, args) -> None:
        self.args = args
        self.work = os.path.realpath(args.workdir)
        self.size = args.size_mib * MiB
        self.samples: dict[tuple[str, str], list[float]] = {}
        self.outputs: dict[tuple[str, str], list[int]] = {}
        self.what: dict[tuple[str, str], set[str]] = {}
        self.steps: dict[tuple[str, str], dict[str, list[float]]] = {}
        self.failures: list[str] = []
        self.checks: list[str] = []
        # Per run: CPU seconds per group of processes, the peak bytes in
        # image_conversion_dir, the bytes written to the host's disks.
        self.cpu: dict[tuple[str, str], list[dict[str, float]]] = {}
        self.peaks: dict[tuple[str, str], list[int]] = {}
        self.written: dict[tuple[str, str], list[int]] = {}
        self.uploaded: dict[tuple[str, str], str] = {}
        self.glance_api: glance_api.GlanceAPI | None = None

    # -- set-up --------------------------------------------------------------
    def prepare_images(self) -> None:
        cache = os.path.join(self.work, 'cache')
        self.volume, self.volume_sha = mixed_volume.build(cache, self.size)
        self.glance = {}
        for fmt in ('qcow2', 'raw'):
            if 'fetch-%s' % fmt not in self.args.flows and \
                    'create-%s' % fmt not in self.args.flows:
                continue
            gz = os.path.join(cache, 'glance-%s-%s.gz' % (
                self.volume_sha[:16], fmt))
            if not os.path.exists(gz):
                LOG.info('making the gzip\'d %s image (gzip -6)', fmt)
                src = self.volume
                if fmt == 'qcow2':
                    src = gz + '.qcow2'
                    run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                         self.volume, src])
                with open(gz + '.part', 'wb') as out:
                    subprocess.run(['gzip', '-6', '-c', src], stdout=out,
                                   check=True)
                os.replace(gz + '.part', gz)
                if src != self.volume:
                    os.unlink(src)
            self.glance[fmt] = gz

    def start(self) -> None:
        self.daemon = bench_daemon.Daemon(self.work, self.args.transport_url)
        LOG.info('starting accel-daemon as %s', self.daemon.host)
        self.caps = self.daemon.start()
        self.client = self.daemon.client()
        images = self.daemon.images
        self.run_dir = os.path.join(images, 'run-%s' % uuid.uuid4().hex[:8])
        self.conversion = os.path.join(self.run_dir, 'conversion')
        self.volumes = os.path.join(self.run_dir, 'volumes')
        for d in (self.conversion, self.volumes):
            os.makedirs(d)
        # The volume, as a file volume inside the daemon's allowed
        # directory (a file-based backend such as NFS keeps them so).
        self.volume_path = os.path.join(self.volumes, 'volume-source')
        run(['cp', '--sparse=always', self.volume, self.volume_path])
        if self.args.glance:
            self.glance_api = glance_api.GlanceAPI(
                os.path.join(self.run_dir, 'glance'), self.args.glance_venv)
            LOG.info('starting glance-api (%s)', self.args.glance_venv)
            self.glance_api.start()
        self.configure_cinder()
        if self.glance_api is not None:
            self.service = GlanceStore()
        else:
            self.service = FakeImageService(os.path.join(
                self.work, 'store', self.daemon.host))
        self.fetch_ids = {
            fmt: self.service.new_image(self.ctx, 'glance-%s-gz' % fmt, fmt,
                                        'compressed', gz)
            for fmt, gz in self.glance.items()}

    def configure_cinder(self) -> None:
        from oslo_config import cfg

        from cinder.common import config  # noqa: F401 (cinder's options)
        from cinder import context
        from cinder.image import image_utils  # noqa: F401
        path = os.path.join(self.run_dir, 'cinder.conf')
        with open(path, 'w') as f:
            f.write(CINDER_CONF % {
                'url': self.args.transport_url,
                'state': os.path.join(self.run_dir, 'cinder-state'),
                'conversion': self.conversion, 'host': self.daemon.host,
                'self': path, 'privsep_helper': os.path.join(
                    os.path.dirname(sys.executable), 'privsep-helper'),
                'glance': GLANCE_CONF % {'url': self.glance_api.url}
                if self.glance_api is not None else ''})
        cfg.CONF(['--config-file', path], project='cinder')
        self.ctx = context.get_admin_context()
        self.paths = Paths()

    def stop(self) -> None:
        if getattr(self, 'client', None) is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        self.daemon.stop()
        if self.glance_api is not None:
            self.glance_api.stop()
        if not self.args.keep:
            for d in (getattr(self, 'run_dir', None),
                      getattr(getattr(self, 'service', None), 'store',
                              None)):
                if d:
                    shutil.rmtree(d, ignore_errors=True)

    # -- flows ---------------------------------------------------------------
    def daemon_tasks(self) -> dict[str, dict]:
        return {t.id: t.task for t in self.client.tasks(limit=1000)}

    def one(self, flow: str, path: str) -> None:
        """One timed run of ``flow`` on ``path``."""
        kind, fmt = flow.split('-')
        self.paths.use(path)
        before = self.daemon_tasks()
        converts = self.paths.cinder_converts
        del self.paths.accel_calls[:]
        self.paths.steps.clear()
        if kind == 'upload':
            image_id = self.service.new_image(
                self.ctx, '%s-%s' % (flow, path), fmt, 'compressed')
            self.uploaded[(flow, path)] = image_id
            call = self._upload(image_id)
        else:
            out = os.path.join(self.volumes, 'volume-%s-%s' % (flow, path))
            remove(out)
            with open(out, 'wb') as f:       # the new, empty file volume
                f.truncate(self.size)
            call = self._fetch(self.fetch_ids[fmt], out,
                               create=kind == 'create')
        os.sync()
        cpu_before = self.cpu_snapshot()
        disk_before = procstats.disk_written()
        started = time.monotonic()
        try:
            with procstats.PeakBytes(self.conversion) as peak:
                call()
                # What the run wrote is written (in the timed span: the
                # paths write different amounts through the page cache).
                os.sync()
        except Exception as e:
            raise FlowError('%s on the %s path: %s: %s'
                            % (flow, path, type(e).__name__, e)) from e
        wall = time.monotonic() - started
        key = (flow, path)
        self.cpu.setdefault(key, []).append(
            procstats.delta(cpu_before, self.cpu_snapshot()))
        self.written.setdefault(key, []).append(
            procstats.disk_written() - disk_before)
        self.peaks.setdefault(key, []).append(peak.peak)
        tasks = [t for t in self.daemon_tasks().values()
                 if t['id'] not in before]
        tasks.sort(key=lambda t: t.get('created_at') or 0)
        n = self.paths.cinder_converts - converts
        ran = ['cinder qemu-img convert' + (' x%d' % n if n > 1 else '')
               ] if n else []
        ran += self.paths.accel_calls
        if tasks:
            ran.append('daemon: %s' % ', '.join(t['kind'] for t in tasks))
        self.what.setdefault((flow, path), set()).add(', '.join(ran))
        self.samples.setdefault((flow, path), []).append(wall)
        steps = dict(self.paths.steps)
        steps['rest'] = wall - sum(steps.values())
        for step, seconds in steps.items():
            self.steps.setdefault((flow, path), {}).setdefault(
                step, []).append(seconds)
        if kind == 'upload':
            self.outputs.setdefault((flow, path), []).append(
                self.service.stored_size(self.ctx, image_id))
        else:
            self.outputs.setdefault((flow, path), []).append(allocated(out))
            ok = images_match('raw', out, self.volume_path)
            self.checks.append('%s %s: volume %s the source volume' % (
                flow, path, 'matches' if ok else 'DIFFERS FROM'))
            if not ok:
                self.failures.append('%s %s: the volume differs' % (flow,
                                                                    path))
            remove(out)
        LOG.info('%-12s %-6s %7.2f s  %s', flow, path, wall, ', '.join(ran))
        os.sync()

    def cpu_snapshot(self) -> dict[str, float]:
        return procstats.by_group(
            self.daemon.proc.pid, self.daemon.config,
            self.glance_api.pids() if self.glance_api is not None else [],
            os.path.join(self.run_dir, 'cinder.conf'))

    def _upload(self, image_id: str):
        from cinder.image import image_utils
        meta = self.service.show(self.ctx, image_id)
        return lambda: image_utils.upload_volume(
            self.ctx, self.service, meta, self.volume_path,
            volume_format='raw', run_as_root=False)

    def _fetch(self, image_id: str, dest: str, create: bool = False):
        from cinder.image import image_utils
        size_gb = math.ceil(self.size / 2 ** 30)

        def fetch():
            image_utils.fetch_to_volume_format(
                self.ctx, self.service, image_id, dest, 'raw', '1M',
                size=size_gb, run_as_root=False)

        def create_flow():
            # What cinder 29's create flow does around it
            # (_create_from_image_cache_or_download): the image downloaded
            # into image_conversion_dir first, its signature checked (none
            # here: a quick look at its properties) and its virtual size
            # checked on that file.
            with image_utils.TemporaryImages.fetch(
                    self.service, self.ctx, image_id) as tmp:
                image_utils.verify_glance_image_signature(
                    self.ctx, self.service, image_id, tmp)
                data = image_utils.qemu_img_info(tmp, run_as_root=False)
                image_utils.check_virtual_size(data.virtual_size, size_gb,
                                               image_id)
                fetch()
        return create_flow if create else fetch

    def warm(self) -> None:
        """What the first timed run would otherwise pay alone: the
        inputs read from disk, cinder's privsep daemon (its qemu-img info
        runs the format inspector there), the integration's client and
        its connection to the broker."""
        from cinder.image import image_utils
        for path in [self.volume_path] + list(self.glance.values()):
            with open(path, 'rb', buffering=0) as f:
                while f.read(4 * MiB):
                    pass
        image_utils.qemu_img_info(self.volume_path, run_as_root=False)
        self.paths.integration.shared_client().capabilities()

    def run(self) -> None:
        self.warm()
        self.engines = {}
        scratch = os.path.join(self.conversion, 'engine-probe')
        for path in PATHS:
            self.paths.use(path)
            self.engines[path] = self.paths.engine_name(scratch)
        for n in range(self.args.repeat):
            for i, flow in enumerate(self.args.flows):
                k = (n + i) % len(PATHS)
                for path in PATHS[k:] + PATHS[:k]:
                    self.one(flow, path)

    def verify_uploads(self) -> None:
        scratch = os.path.join(self.work, 'check')
        os.makedirs(scratch, exist_ok=True)
        for flow in self.args.flows:
            kind, fmt = flow.split('-')
            if kind != 'upload':
                continue
            digests = {}
            for path in PATHS:
                out = os.path.join(scratch, '%s-%s.gz' % (flow, path))
                self.service.fetch_file(self.ctx,
                                        self.uploaded[(flow, path)], out)
                keep = None if fmt == 'raw' else os.path.join(
                    scratch, '%s-%s.%s' % (flow, path, fmt))
                digests[path] = gunzip_sha256(out, keep)
                remove(out)
                if fmt == 'raw':
                    ok = digests[path] == self.volume_sha
                    what = 'byte-identical to the volume'
                else:
                    ok = images_match(fmt, keep, self.volume_path)
                    what = 'the same image as the volume (qemu-img compare)'
                    remove(keep)
                self.checks.append('%s %s: gzip -d gives %s%s' % (
                    flow, path, '' if ok else 'NOT ', what))
                if not ok:
                    self.failures.append('%s %s: gzip -d output differs'
                                         % (flow, path))
            same = len(set(digests.values())) == 1
            # A qcow2 may differ in layout (the daemon writes clusters out
            # of order, -W; stock compresses them) while holding the same
            # data: qemu-img compare above is its check.
            self.checks.append('%s: the uploads of the %d paths decompress '
                               'to %s' % (
                                   flow, len(PATHS),
                                   'byte-identical images' if same
                                   else 'different bytes%s' % (
                                       ' (cluster layout; the same data, '
                                       'compared above)'
                                       if fmt == 'qcow2' else '')))
            if fmt == 'raw' and not same:
                self.failures.append('%s: the paths differ' % flow)
        shutil.rmtree(scratch, ignore_errors=True)

    # -- report --------------------------------------------------------------
    def report(self, load: tuple, load_end: tuple) -> str:
        m = machine()
        caps = self.caps
        drivers = ', '.join(
            '%s%s' % (d['name'], '' if d.get('available') else ' (n/a)')
            for d in caps.get('drivers') or ())
        vol_mib = self.size / MiB
        lines = [
            '## cinder flows: stock cinder against accel-daemon',
            '',
            '- machine: %s, %s cores, %.0f GiB RAM, kernel %s, Python %s'
            % (m['cpu'], m['cores'], m['mem_gib'], m['kernel'],
               m['python']),
            '- load average (1/5/15 min): %.2f/%.2f/%.2f at the start, '
            '%.2f/%.2f/%.2f at the end' % (load + load_end),
            '- cinder %s, accel-daemon %s, oslo.messaging %s, isal %s; '
            'Debian packages: qemu-utils %s, gzip %s, rabbitmq-server %s' % (
                dist_version('cinder'), dist_version('accel-daemon'),
                dist_version('oslo.messaging'), dist_version('isal'),
                dpkg_version('qemu-utils'), dpkg_version('gzip'),
                dpkg_version('rabbitmq-server')),
            '- daemon: privsep backend, compression engine chosen: **%s** '
            '(hardware: %s; drivers: %s)' % (
                caps.get('default_driver'),
                'yes' if caps.get('hardware') else 'no', drivers),
            '- cinder accelerator selected: %s' % ', '.join(
                '%s path %s' % (p, self.engines[p]) for p in PATHS),
            '- volume: %d MiB raw file (%d MiB allocated), %s'
            % (vol_mib, allocated(self.volume) // MiB,
               mixed_volume.LAYOUT),
        ]
        for fmt, gz in sorted(self.glance.items()):
            lines.append('- fetch-%s image: gzip -6 of the volume%s, %d MiB'
                         % (fmt, ' as qcow2' if fmt == 'qcow2' else '',
                            os.path.getsize(gz) // MiB))
        lines.append('- image service: %s' % (
            'glance-api %s (%s; sqlite, file store, no keystone), reached '
            'through cinder\'s GlanceImageService and python-glanceclient %s'
            % (self.glance_version(), self.glance_api.url,
               dist_version('python-glanceclient'))
            if self.glance_api is not None else
            'a file-backed stand-in (FakeImageService)'))
        lines += [
            '- %d runs per row, interleaved (the paths rotate); times are '
            'wall seconds around the cinder call, with a sync of what it '
            'wrote; steps: convert_image, compress_img or decompress_img, '
            'and the rest (cinder\'s qemu-img info, the image service, '
            'temp files, a stream); MiB/s is the volume size over the '
            'median' % self.args.repeat,
            '- paths: stock = cinder\'s own code; daemon = the integration '
            'with `stream_images = false` (the daemon works on cinder\'s '
            'temporary files); stream = the integration with streams',
            '',
            '| flow | path | what ran (per run) | median s | min-max s | '
            'steps, median s | MiB/s | output MiB | peak MiB in '
            'conversion dir | MiB written to disk | vs stock | vs daemon |',
            '|---|---|---|---|---|---|---|---|---|---|---|---|',
        ]
        for flow in self.args.flows:
            base = statistics.median(self.samples[(flow, 'stock')])
            daemon = statistics.median(self.samples[(flow, 'daemon')])
            for path in PATHS:
                key = (flow, path)
                s = self.samples[key]
                med = statistics.median(s)
                outs = self.outputs[key]
                out = '%.0f' % (statistics.median(outs) / MiB)
                if not flow.startswith('upload'):
                    out += ' alloc'
                ran = ' / '.join(sorted(self.what[key]))
                steps = ', '.join(
                    '%s %.2f' % (step, statistics.median(v))
                    for step, v in self.steps[key].items())
                lines.append(
                    '| %s | %s | %s | %.2f | %.2f-%.2f | %s | %.0f | %s | '
                    '%.0f | %.0f | %s | %s |' % (
                        flow, path, ran or '-', med, min(s), max(s), steps,
                        vol_mib / med, out,
                        max(self.peaks[key]) / MiB,
                        statistics.median(self.written[key]) / MiB,
                        '1.00x' if path == 'stock'
                        else '%.2fx' % (base / med),
                        '-' if path == 'stock'
                        else '%.2fx' % (daemon / med)))
        lines += [
            '',
            'CPU seconds per process group, median of the runs (caller: '
            'this process and everything under it that is not another '
            'group: cinder, its privsep daemon, the qemu-img and gzip it '
            'runs; helper: the daemon\'s privsep helper, which compresses '
            'in-process with isal; tools: what the helper runs, as the '
            'tool user):',
            '',
            '| flow | path | %s | total |' % ' | '.join(CPU_GROUPS),
            '|---|---|%s---|' % ('---|' * len(CPU_GROUPS)),
        ]
        for flow in self.args.flows:
            for path in PATHS:
                runs = self.cpu[(flow, path)]
                cells = [statistics.median(r.get(g, 0.0) for r in runs)
                         for g in CPU_GROUPS]
                total = statistics.median(sum(r.values()) for r in runs)
                lines.append('| %s | %s | %s | %.2f |' % (
                    flow, path, ' | '.join('%.2f' % c for c in cells),
                    total))
        fallbacks = sorted(self.paths.integration._fallbacks_logged)
        lines += ['', "Where the integration left cinder's own code "
                  "running (reasons it logged): %s" % (
                      '; '.join(fallbacks) or 'none'),
                  '', 'Checks:', '']
        counts: dict[str, int] = {}
        for check in self.checks:
            counts[check] = counts.get(check, 0) + 1
        lines += ['- %s%s' % (c, ' (%d runs)' % n if n > 1 else '')
                  for c, n in counts.items()]
        return '\n'.join(lines)

    def glance_version(self) -> str:
        try:
            out = subprocess.run(
                [os.path.join(self.args.glance_venv, 'bin', 'python'), '-c',
                 'import importlib.metadata as m; print(m.version("glance"))'],
                capture_output=True, text=True, check=True).stdout
            return out.strip()
        except (OSError, subprocess.CalledProcessError):
            return '?'

    def dump(self, path: str) -> None:
        with open(path, 'w') as f:
            json.dump({'size': self.size, 'caps': self.caps,
                       'samples': {'%s/%s' % k: v
                                   for k, v in self.samples.items()},
                       'outputs': {'%s/%s' % k: v
                                   for k, v in self.outputs.items()},
                       'cpu': {'%s/%s' % k: v for k, v in self.cpu.items()},
                       'peaks': {'%s/%s' % k: v
                                 for k, v in self.peaks.items()},
                       'written': {'%s/%s' % k: v
                                   for k, v in self.written.items()},
                       'checks': self.checks,
                       'failures': self.failures}, f, indent=1)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="cinder's upload_volume and fetch_to_volume_format, "
                    "stock against accel-daemon, side by side.")
    p.add_argument('--size-mib', type=int, default=1024,
                   help='volume size in MiB (a multiple of 16)')
    p.add_argument('--repeat', type=int, default=3,
                   help='runs of each flow on each path')
    p.add_argument('--flows', default=','.join(DEFAULT_FLOWS),
                   help='comma-separated, of: %s' % ', '.join(FLOWS))
    p.add_argument('--workdir', default='/var/tmp/accel-bench-callers',
                   help='volume cache, daemon dirs, image store')
    p.add_argument('--transport-url', default=DEFAULT_URL)
    p.add_argument('--json', help='also write the samples to this file')
    p.add_argument('--glance', action='store_true',
                   help='a real glance-api (sqlite, file store, no '
                        'keystone) reached through cinder\'s '
                        'GlanceImageService, instead of the file-backed '
                        'stand-in')
    p.add_argument('--glance-venv', default=glance_api.DEFAULT_VENV,
                   help='glance\'s venv (tools/glance-venv.sh)')
    p.add_argument('--keep', action='store_true',
                   help="keep this run's files (uploads, conversion dir)")
    return checked_args(p, argv, FLOWS)


def checked_args(p: argparse.ArgumentParser, argv, flows) -> Any:
    """Parse ``argv``: ``--flows`` a list of ``flows``, ``--size-mib`` a
    positive multiple of 16."""
    args = p.parse_args(argv)
    args.flows = [f.strip() for f in args.flows.split(',') if f.strip()]
    for flow in args.flows:
        if flow not in flows:
            p.error('unknown flow %s' % flow)
    if args.size_mib <= 0 or args.size_mib % 16:
        p.error('--size-mib must be a positive multiple of 16')
    return args


def log_to(workdir: str, name: str, log: logging.Logger) -> None:
    """Everything into ``workdir/name``; ``log`` on the console too; the
    broker clients' chatter left out."""
    os.makedirs(workdir, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO, format='%(asctime)s %(name)s %(message)s',
        filename=os.path.join(workdir, name))
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter('%(message)s'))
    log.addHandler(console)
    for noisy in ('oslo_messaging', 'amqp', 'kombu'):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv=None) -> int:
    args = parse_args(argv)
    log_to(args.workdir, 'cinder-flows.log', LOG)
    load = os.getloadavg()
    bench = Bench(args)
    bench.prepare_images()
    try:
        bench.start()
        bench.run()
        bench.verify_uploads()
    except (FlowError, RuntimeError, subprocess.CalledProcessError) as e:
        print('benchmark stopped: %s' % e, file=sys.stderr)
        return 2
    finally:
        if getattr(bench, 'daemon', None) is not None:
            bench.stop()
    print(bench.report(load, os.getloadavg()))
    if args.json:
        bench.dump(args.json)
    if bench.failures:
        print('\nFAILED: %s' % '; '.join(bench.failures), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
