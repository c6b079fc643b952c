# SPDX-License-Identifier: Apache-2.0
"""A real glance-api on loopback, for the benchmarks that move images
through cinder's own image service code.

    python -m benchmarks.glance_api [--venv DIR] [--workdir DIR]
        [--size-mib 64]          # self-test: upload, download, compare

The glance release pinned in local-constraints.txt, installed from PyPI by
``bash tools/glance-venv.sh`` (default venv: ``$ACCEL_GLANCE_VENV`` or
/var/cache/accel-daemon/glance-venv). glance 33 (2026.2) runs only under
a WSGI server (its glance-api script just says so); the venv has gunicorn
(OpenStack's global requirements), and :class:`GlanceAPI` runs
``glance.wsgi.api:application`` in it: one gunicorn worker of native
threads (``gthread``), on a socket it binds itself on 127.0.0.1 (a free
port, handed over as ``fd://``, so two harnesses never race for a port).

Everything lives in the work directory::

    glance-api.conf, glance-api-paste.ini   written here
    glance.sqlite                           the database (glance-manage
                                            db_sync on start)
    images/                                 the file store
    staging/, locks/                        glance's own scratch
    glance-api.log                          glance's and gunicorn's log

No keystone: the paste pipeline is ``versionnegotiation
unauthenticated-context rootapp``, so every request runs in glance's
unauthenticated context (no user, no project, ``is_admin=True``), which
passes every policy check; images get no owner. Uploads are the classic
``PUT /v2/images/{id}/file`` (glance-direct/web-download imports are off,
and so are the import plugins: no conversion, no metadata injection).

What glance 33 does to uploaded data (glance/location.py):

* every upload is hashed: ``checksum`` (md5) and the multihash
  ``os_hash_algo`` = sha512, ``os_hash_value``; python-glanceclient checks
  the sha512 on download (``images.data()``) and fails on a mismatch;
* images with container_format ``bare`` are inspected in flight
  (oslo.utils format_inspector, ~0.15 CPU s/GiB): a detected format other
  than the image's disk_format fails the upload with HTTP 415 (cinder sees
  glanceclient's HTTPException; the image goes back to ``queued``) unless
  the disk_format is ``raw`` (then glance only logs a warning); the
  detected format's safety checks (a qcow2 data file, an invalid GPT...)
  fail it too. gzip is not a format it knows: gzip'd data as bare/raw
  passes (as raw), as bare/qcow2 fails ("Image disk_format qcow2 does not
  match stream data raw"). ``options={'image_format':
  {'require_image_format_match': 'false'}}`` logs a mismatch instead;
* any other container_format (``compressed``, cinder's gzip uploads,
  ``ovf``, ...) is not inspected at all: the data is stored as sent;
* ``image_size_cap`` is set to 64 GiB here, ``user_storage_quota`` is 0
  (no quota).

How cinder's code talks to it (``cinder.image.glance``; what
benchmarks/cinder_flows.py must set up in the cinder venv's Python)::

    from cinder.common import config  # noqa: registers [DEFAULT] options
    from cinder import context
    from cinder.image import image_utils  # noqa: first, see below
    from cinder.image import glance
    from eventlet import tpool
    from oslo_config import cfg

    cfg.CONF([], project='cinder', default_config_files=[])
    cfg.CONF.set_override('glance_api_servers', [api.url])  # [DEFAULT]
    cfg.CONF.set_override('auth_strategy', 'noauth')        # [DEFAULT]
    ctxt = context.get_admin_context()
    service = glance.get_default_image_service()  # GlanceImageService()
    image_id = service.create(ctxt, {'name': 'vol', 'disk_format': 'raw',
                                     'container_format': 'bare'})['id']
    with open(path, 'rb') as f:     # as image_utils.upload_volume() does
        service.update(ctxt, image_id, {}, tpool.Proxy(f))
    with open(out, 'wb') as f:      # as image_utils.fetch() does
        service.download(ctxt, image_id, tpool.Proxy(f))

* ``[DEFAULT] glance_api_servers`` is the option (cinder 29 has no
  ``[glance] api_servers``; its ``[glance]`` group is keystoneauth's, for
  the service user, and stays unset). With ``auth_strategy = noauth`` and
  an ``http://`` server cinder builds ``glanceclient.Client('2', url,
  global_request_id=...)``: no session, no token, glanceclient's own
  HTTPClient (requests; 1 MiB chunks, chunked transfer encoding up,
  sha512 check down). ``glance_request_timeout`` (None: glanceclient's
  600 s) and ``glance_num_retries`` (3) may stay at their defaults;
  ``allowed_direct_url_schemes`` must stay empty (downloads over HTTP).
* The context must be an admin one (``context.get_admin_context()``, or
  any ``RequestContext(..., is_admin=True)``): without a token, cinder's
  ``_is_image_available()`` accepts only public images or ones whose
  owner/user properties match the context, and these images have no
  owner.
* Import ``cinder.image.image_utils`` before ``cinder.image.glance``:
  importing glance first fails on a circular import (cinder 29).
* ``tpool.Proxy`` is what cinder's own callers wrap the file in; a plain
  file object works too, at the same speed here.
* glanceclient exceptions that cinder does not translate reach the caller
  as they are: glance's format-inspection refusal is a
  ``glanceclient.exc.HTTPException`` (HTTP 415).

Standard library only: this module is imported by the caller venvs'
Python (which has glanceclient and cinder) and by others; glance runs in
its own venv, in a process group of its own, stopped on exit.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import Any
import urllib.error
import urllib.request

DEFAULT_VENV = os.environ.get('ACCEL_GLANCE_VENV',
                              '/var/cache/accel-daemon/glance-venv')
IMAGE_SIZE_CAP = 64 << 30
CHUNK = 1 << 20
HTTP_TIMEOUT = 600.0
_CLK_TCK = os.sysconf('SC_CLK_TCK')


class GlanceError(Exception):
    """glance-api did not start, or a request to it failed."""


def _api_conf(workdir: str, paste: str, policy: str,
              threads: int) -> dict[str, dict[str, str]]:
    """glance-api.conf as {section: {option: value}}."""
    return {
        'DEFAULT': {
            'debug': 'false',
            'use_stderr': 'true',
            'image_size_cap': str(IMAGE_SIZE_CAP),
            'user_storage_quota': '0',
            'show_image_direct_url': 'false',
            'show_multiple_locations': 'false',
            # The classic PUT .../file upload needs no import method.
            'enabled_import_methods': '[]',
            'node_staging_uri': 'file://' + os.path.join(workdir, 'staging'),
        },
        'database': {
            'connection': 'sqlite:///' + os.path.join(workdir,
                                                      'glance.sqlite'),
        },
        'paste_deploy': {'config_file': paste},
        'glance_store': {
            'stores': 'file',
            'default_store': 'file',
            'filesystem_store_datadir': os.path.join(workdir, 'images') + '/',
        },
        'image_format': {
            # glance's default list, which has cinder's 'compressed'.
            'container_formats':
                'ami,ari,aki,bare,ovf,ova,docker,compressed',
            'require_image_format_match': 'true',
        },
        'image_import_opts': {'image_import_plugins': '[]'},
        'oslo_concurrency': {'lock_path': os.path.join(workdir, 'locks')},
        'oslo_policy': {'policy_file': policy},
        'wsgi': {'task_pool_threads': str(threads)},
    }


def _render(conf: dict[str, dict[str, str]]) -> str:
    return '\n'.join(
        f'[{section}]\n' + ''.join(f'{k} = {v}\n' for k, v in opts.items())
        for section, opts in conf.items())


# No keystone, no cache, no profiler, no CORS: the v2 API behind version
# negotiation, with glance's unauthenticated (admin) context.
_PASTE = """\
[pipeline:glance-api]
pipeline = versionnegotiation unauthenticated-context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[filter:versionnegotiation]
paste.filter_factory = \
glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:unauthenticated-context]
paste.filter_factory = \
glance.api.middleware.context:UnauthenticatedContextMiddleware.factory
"""

# glance's unauthenticated context is is_admin=True with no roles, but the
# 2026.2 policies (new defaults, enforced) ask for the admin *role*
# ("context_is_admin": "role:admin"): every caller here is the admin.
_POLICY = """\
"context_is_admin": "@"
"service_api": "rule:context_is_admin"
"""


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would point glance's
    Python at another venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV')}
    env.update(extra)
    return env


def _proc_cpu(pid: int) -> tuple[int, float]:
    """(process group, utime + stime in seconds) of a live process."""
    with open(f'/proc/{pid}/stat') as f:
        # The command name may hold spaces and parentheses: split after it.
        fields = f.read().rsplit(')', 1)[1].split()
    # fields[0] is field 3 (state): pgrp is field 5, utime 14, stime 15.
    return int(fields[2]), (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _group_members(pgrp: int) -> list[int]:
    """The processes (zombies too) of process group ``pgrp``."""
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                if _proc_cpu(int(entry))[0] == pgrp:
                    found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass  # gone meanwhile
    return sorted(found)


class GlanceAPI:
    """glance-api (gunicorn + glance.wsgi.api) on 127.0.0.1, set up in
    ``workdir`` and stopped on exit.

    ``workers`` gunicorn processes of ``threads`` threads each serve the
    API. ``options`` ({section: {option: value}}) is merged into
    glance-api.conf over the settings above, e.g. ``{'image_format':
    {'require_image_format_match': 'false'}}`` or ``{'DEFAULT': {'debug':
    'true'}}``.
    """

    def __init__(self, workdir: str, venv: str = DEFAULT_VENV, *,
                 workers: int = 1, threads: int = 8,
                 options: dict[str, dict[str, str]] | None = None,
                 start_timeout: float = 120.0) -> None:
        self.workdir = os.path.realpath(workdir)
        self.venv = venv
        self.workers = workers
        self.threads = threads
        self.options = options or {}
        self.start_timeout = start_timeout
        self.conf = os.path.join(self.workdir, 'glance-api.conf')
        self.paste = os.path.join(self.workdir, 'glance-api-paste.ini')
        self.policy = os.path.join(self.workdir, 'policy.yaml')
        self.images_dir = os.path.join(self.workdir, 'images')
        self.log_path = os.path.join(self.workdir, 'glance-api.log')
        self.url = ''
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The gunicorn master's pid (its process group's id too)."""
        if self._proc is None:
            raise GlanceError('glance-api is not running')
        return self._proc.pid

    def __enter__(self) -> GlanceAPI:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _bin(self, name: str) -> str:
        path = os.path.join(self.venv, 'bin', name)
        if not os.access(path, os.X_OK):
            raise GlanceError(f'{path} missing: run bash tools/glance-venv.sh'
                              f' (ACCEL_GLANCE_VENV={self.venv})')
        return path

    def write_config(self) -> None:
        """glance-api.conf and its paste config, and the directories they
        name."""
        for sub in ('images', 'staging', 'locks'):
            os.makedirs(os.path.join(self.workdir, sub), exist_ok=True)
        with open(self.paste, 'w') as f:
            f.write(_PASTE)
        with open(self.policy, 'w') as f:
            f.write(_POLICY)
        conf = _api_conf(self.workdir, self.paste, self.policy,
                         self.threads)
        for section, opts in self.options.items():
            conf.setdefault(section, {}).update(opts)
        with open(self.conf, 'w') as f:
            f.write(_render(conf))

    def db_sync(self) -> None:
        """Create (or upgrade) the sqlite database: glance-manage db_sync."""
        with open(self.log_path, 'ab') as log:
            rc = subprocess.call(
                [self._bin('glance-manage'), '--config-file', self.conf,
                 'db_sync'],
                cwd=self.workdir, env=_clean_env(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT)
        if rc:
            raise GlanceError(f'glance-manage db_sync failed ({rc}); see '
                              f'{self.log_path}:\n{self.log_tail()}')

    def start(self) -> None:
        """Write the config, sync the database, start glance-api and wait
        until it answers."""
        if self._proc is not None:
            raise GlanceError('glance-api already started')
        gunicorn = self._bin('gunicorn')
        self.write_config()
        self.db_sync()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(('127.0.0.1', 0))
            sock.listen(128)
            self.port = sock.getsockname()[1]
            self.url = f'http://127.0.0.1:{self.port}'
            argv = [gunicorn, '--bind', f'fd://{sock.fileno()}',
                    '--workers', str(self.workers),
                    '--worker-class', 'gthread',
                    '--threads', str(self.threads),
                    # Uploads and downloads take as long as they take.
                    '--timeout', '0', '--graceful-timeout', '5',
                    '--log-level', 'info',
                    '--chdir', self.workdir,
                    'glance.wsgi.api:application']
            with open(self.log_path, 'ab') as log:
                self._proc = subprocess.Popen(
                    argv, cwd=self.workdir, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT,
                    env=_clean_env(OS_GLANCE_CONFIG_DIR=self.workdir),
                    pass_fds=(sock.fileno(),), start_new_session=True)
        finally:
            sock.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                raise GlanceError(
                    f'glance-api exited ({self._proc.returncode}); see '
                    f'{self.log_path}:\n{self.log_tail()}')
            try:
                _request('GET', f'{self.url}/versions', timeout=5)
                return
            except (OSError, GlanceError):
                pass
            if time.monotonic() > deadline:
                raise GlanceError(
                    f'glance-api did not answer in {self.start_timeout} s;'
                    f' see {self.log_path}:\n{self.log_tail()}')
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM to gunicorn (graceful: it stops its workers), SIGKILL
        after 10 s; then SIGKILL to whatever is left of its process group,
        and wait until the group is empty (a worker that outlives the
        master is reaped by init)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        deadline = time.monotonic() + 10
        while _group_members(proc.pid) and time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.05)

    def pids(self) -> list[int]:
        """The live processes of glance-api: gunicorn's master first, then
        its workers."""
        master = self.pid
        return [master] + [p for p in _group_members(master) if p != master]

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of glance-api's live processes
        (/proc/PID/stat), master and workers: take it before and after a
        step. (Workers live as long as the server: gunicorn restarts none
        unless one dies.)"""
        total = 0.0
        for pid in self.pids():
            try:
                total += _proc_cpu(pid)[1]
            except (OSError, IndexError, ValueError):
                pass
        return total

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, 'rb') as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 16384))
                text = f.read().decode(errors='replace')
        except OSError:
            return ''
        return '\n'.join(text.splitlines()[-lines:])


def _request(method: str, url: str, body: Any = None,
             headers: dict[str, str] | None = None,
             timeout: float = HTTP_TIMEOUT) -> tuple[int, bytes]:
    """One HTTP request; (status, body). 4xx/5xx raise GlanceError, other
    statuses (glance's 300 on /versions) are returned."""
    req = urllib.request.Request(url, data=body, method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        if e.code < 400:
            return e.code, e.read()
        raise GlanceError(f'{method} {url}: {e.code} {e.reason}: '
                          f'{e.read().decode(errors="replace")[:2000]}')


def _file_chunks(path: str, size: int = CHUNK) -> Iterator[bytes]:
    with open(path, 'rb') as f:
        while chunk := f.read(size):
            yield chunk


def create_image_record(url: str, name: str, disk_format: str,
                        container_format: str, **properties: str) -> str:
    """POST /v2/images: a queued image, no data yet; its id."""
    meta: dict[str, str] = dict(properties, name=name,
                                disk_format=disk_format,
                                container_format=container_format)
    _, body = _request('POST', f'{url}/v2/images',
                       json.dumps(meta).encode(),
                       {'Content-Type': 'application/json'})
    return str(json.loads(body)['id'])


def upload_image(url: str, image_id: str, path: str) -> None:
    """PUT /v2/images/{id}/file, the classic upload, with the file's
    content in chunks of 1 MiB (chunked transfer encoding)."""
    _request('PUT', f'{url}/v2/images/{image_id}/file', _file_chunks(path),
             {'Content-Type': 'application/octet-stream',
              'Transfer-Encoding': 'chunked'})


def create_image(url: str, name: str, disk_format: str,
                 container_format: str, path: str) -> str:
    """Create an image and upload ``path`` as its data; its id."""
    image_id = create_image_record(url, name, disk_format, container_format)
    try:
        upload_image(url, image_id, path)
    except BaseException:
        try:
            delete_image(url, image_id)
        except (OSError, GlanceError):
            pass
        raise
    return image_id


def get_image(url: str, image_id: str) -> dict[str, Any]:
    """GET /v2/images/{id}: the image's record."""
    _, body = _request('GET', f'{url}/v2/images/{image_id}')
    image: dict[str, Any] = json.loads(body)
    return image


def download_image(url: str, image_id: str, path: str) -> int:
    """GET /v2/images/{id}/file into ``path``; the bytes written."""
    req = urllib.request.Request(f'{url}/v2/images/{image_id}/file')
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp, \
                open(path, 'wb') as out:
            shutil.copyfileobj(resp, out, CHUNK)
            return out.tell()
    except urllib.error.HTTPError as e:
        raise GlanceError(f'GET {req.full_url}: {e.code} {e.reason}')


def delete_image(url: str, image_id: str) -> None:
    """DELETE /v2/images/{id} (its data goes from the store too)."""
    _request('DELETE', f'{url}/v2/images/{image_id}')


def _digest(path: str, algo: str) -> str:
    h = hashlib.new(algo)
    for chunk in _file_chunks(path):
        h.update(chunk)
    return h.hexdigest()


def _self_test(workdir: str, venv: str, size_mib: int) -> None:
    src = os.path.join(workdir, 'source.raw')
    out = os.path.join(workdir, 'download.raw')
    with open(src, 'wb') as f:
        for _ in range(size_mib):
            f.write(os.urandom(CHUNK))
    started = time.monotonic()
    with GlanceAPI(os.path.join(workdir, 'glance'), venv) as api:
        up = time.monotonic()
        print(f'glance-api {api.url} pid {api.pid}: up in '
              f'{up - started:.1f} s (db_sync included)')
        cpu0 = api.cpu_seconds()
        t0 = time.monotonic()
        image_id = create_image(api.url, 'self-test', 'raw', 'bare', src)
        t1 = time.monotonic()
        cpu1 = api.cpu_seconds()
        image = get_image(api.url, image_id)
        size = download_image(api.url, image_id, out)
        t2 = time.monotonic()
        cpu2 = api.cpu_seconds()
        mb = size_mib * CHUNK / 1e6
        print(f'upload   {mb / (t1 - t0):7.1f} MB/s, glance CPU '
              f'{cpu1 - cpu0:.2f} s')
        print(f'download {mb / (t2 - t1):7.1f} MB/s, glance CPU '
              f'{cpu2 - cpu1:.2f} s')
        problems = []
        if image['status'] != 'active' or image['size'] != size_mib * CHUNK:
            problems.append(f"image {image['status']}, {image['size']} B")
        if (image.get('os_hash_algo') != 'sha512' or
                image.get('os_hash_value') != _digest(src, 'sha512')):
            problems.append('multihash (sha512) differs from the source')
        if size != size_mib * CHUNK or \
                _digest(out, 'sha256') != _digest(src, 'sha256'):
            problems.append('download differs from the source')
        delete_image(api.url, image_id)
        if os.listdir(api.images_dir):
            problems.append('image data left in the store after delete')
    if problems:
        raise SystemExit('self-test FAILED: ' + '; '.join(problems))
    print(f'self-test passed: {size_mib} MiB raw/bare image, sha256 and '
          f'sha512 multihash match')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description='Self-test: start glance-api, upload a raw image, '
                    'download it, compare, stop.')
    parser.add_argument('--venv', default=DEFAULT_VENV)
    parser.add_argument('--workdir',
                        help='kept afterwards (default: a temporary '
                             'directory in /var/tmp, removed)')
    parser.add_argument('--size-mib', type=int, default=64)
    args = parser.parse_args(argv)
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        _self_test(args.workdir, args.venv, args.size_mib)
        return
    with tempfile.TemporaryDirectory(prefix='glance-api-',
                                     dir='/var/tmp') as workdir:
        _self_test(workdir, args.venv, args.size_mib)


if __name__ == '__main__':
    main()
