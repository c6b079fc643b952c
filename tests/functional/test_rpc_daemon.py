# SPDX-License-Identifier: Apache-2.0
"""The real ``accel-daemon`` console script against the real RabbitMQ broker,
with a real privsep daemon and the real tools, driven by AccelClient.

One daemon for the module (restarted in place by the crash test).  All
daemons and clients share accel-daemon's own exchange (``accel_daemon``)
whatever control_exchange says, so each run is kept apart by its own host
name (the RPC server name): concurrent runs on the same broker never see
each other's messages.  The daemon's config still sets a control_exchange
of its own, which it must ignore.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any
import uuid

from oslo_config import cfg
from oslo_context.context import RequestContext
import pytest

from accel_daemon.client import AccelClient
from accel_daemon.conf import client as client_opts
from accel_daemon.engine import paths
from accel_daemon import exception
from accel_daemon import request_ids
from tests import brokeraccounts
from tests import daemonproc
from tests.functional import imagegen

BROKER = daemonproc.BROKER
TRANSPORT_URL = daemonproc.TRANSPORT_URL
DAEMON = os.path.join(os.path.dirname(sys.executable), 'accel-daemon')
MiB = 1024 * 1024
broker_up = daemonproc.broker_up


def require_broker() -> None:
    """Skip without a broker, except in CI, where these tests must run."""
    if broker_up():
        return
    if os.environ.get('CI'):
        pytest.fail('RabbitMQ is not listening on 127.0.0.1:5672 in CI')
    pytest.skip('RabbitMQ is not listening on 127.0.0.1:5672')


pytestmark = [pytest.mark.functional, pytest.mark.rpc, pytest.mark.privsep]


class DaemonProcess(daemonproc.DaemonProcess):
    """An accel-daemon subprocess with its own config, dirs and names
    (``tests/daemonproc.py``), an exchange of its own on the broker, and
    the filters of the ``filters_without`` tools removed."""

    def __init__(self, root: str, filters_without: tuple[str, ...] = (),
                 extra: str = '', accounts: Any = None) -> None:
        """``accounts`` (``tests/brokeraccounts.Accounts``): deployed as
        tools/install.sh deploys, with an ``operator`` caller on a broker
        account and virtual host of its own, which is also its ``[DEFAULT]
        transport_url`` (how ``accel-image`` as root reaches it); without,
        one caller on guest's default virtual host."""
        transport_url = TRANSPORT_URL
        if accounts is not None:
            transport_url = accounts.caller('operator')
            images = os.path.join(os.path.realpath(root), 'images')
            extra += brokeraccounts.caller_sections({
                accounts.name('operator'): {
                    'transport_url': transport_url, 'allowed_dirs': images,
                    'operator': 'true'}})
        tag = uuid.uuid4().hex[:10]
        sections = {
            'DEFAULT': {'control_exchange': 'accel-test-%s' % tag},
            'accel_daemon_rpc': {'max_task_wait': 2},
            'accel_daemon_client': {'timeout': 30, 'wait_interval': 1},
            'tasks': {'workers': 4, 'stop_timeout': 5}}
        super().__init__(root, 'accel-test-%s' % tag, extra=extra,
                         transport_url=transport_url, sections=sections)
        self._strip_filters(filters_without)

    def _strip_filters(self, tools: tuple[str, ...]) -> None:
        for tool in tools:
            for name in os.listdir(self.filters):
                path = os.path.join(self.filters, name)
                with open(path) as f:
                    lines = [ln for ln in f
                             if not ln.startswith('%s_' % tool)]
                with open(path, 'w') as f:
                    f.writelines(lines)

    def client_conf(self, config: str | None = None) -> cfg.ConfigOpts:
        conf = cfg.ConfigOpts()
        client_opts.register_opts(conf)
        conf(['--config-file', config or self.config],
             project='accel-test-client')
        return conf

    def client(self, config: str | None = None, **kwargs) -> AccelClient:
        return AccelClient(self.client_conf(config), host=self.host,
                           **kwargs)

    def service_config(self, name: str, default_extra: str = '') -> str:
        """A config file of a calling service (as nova or cinder have):
        the broker, ``default_extra`` lines in [DEFAULT], and nothing of
        the daemon's own settings."""
        path = os.path.join(self.root, '%s.conf' % name)
        with open(path, 'w') as f:
            f.write('[DEFAULT]\ntransport_url = %s\n%s\n'
                    '[accel_daemon_client]\ntimeout = 30\n'
                    'wait_interval = 1\n' % (TRANSPORT_URL, default_extra))
        return path

    def start(self, timeout: float = 60.0) -> None:
        self.spawn()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        conf = self.client_conf()
        conf.set_override('timeout', 2, group='accel_daemon_client')
        with AccelClient(conf, host=self.host) as c:
            self.wait_ready(c, timeout, gone=AssertionError)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def crash(self) -> None:
        """kill -9 the daemon and everything in its process group."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        rc = self.terminate(timeout)
        if rc is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise subprocess.TimeoutExpired(self.proc.args, timeout)
        return rc


@pytest.fixture(scope='module')
def daemon(tmp_path_factory):
    require_broker()
    # pigz is forbidden by this daemon's filters: the "denied" test.
    d = DaemonProcess(str(tmp_path_factory.mktemp('rpcd')),
                      filters_without=('pigz',))
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope='module')
def client(daemon):
    with daemon.client() as c:
        yield c


def make_raw(path: str, size: int = 8 * MiB) -> str:
    """Mixed content: text-like runs, random blocks and holes."""
    with open(path, 'wb') as f:
        f.truncate(size)
        for off in range(0, size, MiB):
            f.seek(off)
            f.write((b'accel-daemon %d\n' % off) * 4096)
            f.write(os.urandom(64 * 1024))
    return path


def random_file(path: str, size: int) -> str:
    with open(path, 'wb') as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    return path


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(MiB), b''):
            h.update(block)
    return h.hexdigest()


def same_bytes(a: str, b: str) -> bool:
    return subprocess.run(['cmp', '-s', a, b]).returncode == 0


def snapshot(daemon) -> list[str]:
    return sorted(os.listdir(daemon.images))


def check_result(result: dict, output: str) -> None:
    for key in ('output', 'size', 'sha256', 'engine', 'hardware',
                'wall_seconds', 'cpu_seconds'):
        assert key in result, key
    assert result['output'] == output
    assert result['size'] == os.path.getsize(output)
    if result['sha256'] is not None:
        assert result['sha256'] == sha256(output)


# --- every method, end to end ------------------------------------------------
# --- callers configured like nova and like cinder --------------------------
def test_nova_and_cinder_clients_reach_the_daemon(daemon):
    nova = daemon.service_config('nova', 'control_exchange = nova')
    cinder = daemon.service_config('cinder')
    src = make_raw(os.path.join(daemon.images, 'svc.raw'), 2 * MiB)
    for name, config in (('nova', nova), ('cinder', cinder)):
        with daemon.client(config) as c:
            exchange = c.conf.control_exchange
            assert exchange == ('nova' if name == 'nova' else 'openstack')
            assert c.capabilities()['drivers']
            dst = os.path.join(daemon.images, 'svc-%s.gz' % name)
            check_result(c.compress(src, dst).wait(timeout=120), dst)


def test_request_ids_on_the_daemons_log_lines(daemon):
    cinder = daemon.service_config('cinder-ids')
    ctx = RequestContext(overwrite=False,
                         global_request_id='req-%s' % uuid.uuid4())
    # (overwrite=False still made it this thread's current context, there
    # being none: the later tests' clients would send its ids.)
    request_ids._set_current(None)
    src = make_raw(os.path.join(daemon.images, 'ids.raw'), MiB)
    with daemon.client(cinder) as c:
        handle = c.copy(src, os.path.join(daemon.images, 'ids.copy'),
                        context=ctx)
        handle.wait(timeout=60)
        assert c.task(handle.id).task['request_id'] == ctx.request_id
    lines = [ln for ln in daemon.log_tail(100000).splitlines()
             if handle.id in ln]
    # Queued (RPC thread), started and succeeded (worker thread).
    assert len(lines) >= 3, daemon.log_tail()
    for line in lines:
        assert '[%s %s ' % (ctx.global_request_id, ctx.request_id) in line, \
            line


def test_capabilities(client):
    caps = client.capabilities()
    assert isinstance(caps['drivers'], list) and caps['drivers']
    assert 'pigz' not in caps['drivers']         # denied by our filters
    assert isinstance(caps['hardware'], bool)
    assert caps['tools'] and all(isinstance(v, str)
                                 for v in caps['tools'].values())


def test_image_info(client, daemon):
    path = imagegen.qcow2_with_data(os.path.join(daemon.images, 'i.qcow2'),
                                    size=16 * MiB)
    info = client.image_info(path, 'qcow2')
    assert info.get('format') == 'qcow2'
    assert info.get('virtual-size', info.get('virtual_size')) == 16 * MiB


def test_compress_decompress_round_trip(client, daemon):
    src = make_raw(os.path.join(daemon.images, 'rt.raw'))
    gz = os.path.join(daemon.images, 'rt.raw.gz')
    result = client.compress(src, gz).wait(timeout=120)
    check_result(result, gz)
    assert result['size'] < os.path.getsize(src)
    back = os.path.join(daemon.images, 'rt.back.raw')
    result = client.decompress(gz, back, max_bytes=64 * MiB).wait(120)
    check_result(result, back)
    assert same_bytes(src, back)


def test_convert_both_ways(client, daemon):
    src = make_raw(os.path.join(daemon.images, 'cv.raw'))
    qcow2 = os.path.join(daemon.images, 'cv.qcow2')
    check_result(client.convert(src, qcow2, 'raw', 'qcow2').wait(120), qcow2)
    raw = os.path.join(daemon.images, 'cv.back.raw')
    check_result(client.convert(qcow2, raw, 'qcow2', 'raw').wait(120), raw)
    assert imagegen.compare(src, 'raw', qcow2, 'qcow2')
    assert same_bytes(src, raw)


def test_copy(client, daemon):
    src = make_raw(os.path.join(daemon.images, 'cp.raw'), 4 * MiB)
    dst = os.path.join(daemon.images, 'cp.copy')
    handle = client.copy(src, dst)
    check_result(handle.wait(120), dst)
    assert same_bytes(src, dst)
    # task_get / task_list / task_wait on a finished task
    assert client.task(handle.id).state == 'succeeded'
    assert handle.id in [t.id for t in client.tasks('succeeded', 1000)]
    assert client._api.task_wait(client.host, handle.id, 1)['state'] == \
        'succeeded'


def test_upload_then_download(client, daemon):
    src = make_raw(os.path.join(daemon.images, 'up.raw'))
    image = os.path.join(daemon.images, 'up.image')
    check_result(client.upload(src, image, 'raw', 'qcow2').wait(120), image)
    back = os.path.join(daemon.images, 'up.back.raw')
    handle = client.download(image, back, 'qcow2', 'raw',
                             max_bytes=64 * MiB)
    check_result(handle.wait(120), back)
    assert same_bytes(src, back)


# --- load and control ------------------------------------------------------
def test_twenty_concurrent_tasks_from_four_threads(daemon):
    src = make_raw(os.path.join(daemon.images, 'many.raw'), 2 * MiB)
    results, errors = [], []

    def worker(n):
        try:
            with daemon.client() as c:
                handles = [c.compress(src, os.path.join(
                    daemon.images, 'many-%d-%d.gz' % (n, i)))
                    for i in range(5)]
                results.extend(h.wait(timeout=300) for h in handles)
        except Exception as e:      # asserted below, with the daemon log
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(400)
    assert errors == [], daemon.log_tail()
    assert len(results) == 20
    for r in results:
        check_result(r, r['output'])
    assert len({r['sha256'] for r in results}) == 1


def slow_compress(client, daemon, name, size=128 * MiB):
    """A task that runs for seconds: gzip -9 over random data."""
    src = os.path.join(daemon.images, name + '.bin')
    if not os.path.exists(src):
        random_file(src, size)
    return client.compress(src, os.path.join(daemon.images, name + '.gz'),
                           driver='gzip', level=9)


def wait_running(handle, timeout=30.0):
    deadline = time.monotonic() + timeout
    while handle.status()['state'] == 'queued':
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert handle.state == 'running'


def test_cancel_running_task(client, daemon):
    handle = slow_compress(client, daemon, 'cancel')
    wait_running(handle)
    time.sleep(0.5)
    started = time.monotonic()
    handle.cancel()
    with pytest.raises(exception.Cancelled):
        handle.wait(timeout=30)
    assert time.monotonic() - started < 10
    assert handle.state == 'cancelled'
    assert not os.path.exists(os.path.join(daemon.images, 'cancel.gz'))
    assert paths.stray_temp_files(daemon.images) == []


# --- bad requests: typed error, nothing written, still serving -------------
def bad(daemon, client, error, call):
    before = snapshot(daemon)
    with pytest.raises(error) as err:
        call()
    assert snapshot(daemon) == before
    assert paths.stray_temp_files(daemon.images) == []
    client.tasks(limit=1)           # still serving
    return err.value


def test_unknown_method(client, daemon):
    bad(daemon, client, exception.InvalidRequest,
        lambda: client._api.call(client.host, 'rm_rf', path='/'))


def test_wrong_types_and_missing_fields(client, daemon):
    src = make_raw(os.path.join(daemon.images, 'bad.raw'), MiB)
    out = os.path.join(daemon.images, 'bad.out')
    err = bad(daemon, client, exception.InvalidRequest,
              lambda: client._api.call(client.host, 'compress', src=src,
                                       dst=out, level='fast'))
    assert 'level' in err.message
    err = bad(daemon, client, exception.InvalidRequest,
              lambda: client._api.call(client.host, 'convert', src=src,
                                       dst=out, src_format='raw'))
    assert 'dst_format' in err.message
    bad(daemon, client, exception.InvalidRequest,
        lambda: client._api.call(client.host, 'copy', src=[src], dst=out))
    bad(daemon, client, exception.InvalidRequest,
        lambda: client._api.call(client.host, 'copy', src=src, dst=out,
                                 mode='0777'))


def test_path_outside_allowed_dirs(client, daemon):
    src = make_raw(os.path.join(daemon.images, 'pa.raw'), MiB)
    err = bad(daemon, client, exception.PathNotAllowed,
              lambda: client.copy('/etc/passwd',
                                  os.path.join(daemon.images, 'pw')))
    assert err.fields['path'] == '/etc/passwd'
    bad(daemon, client, exception.PathNotAllowed,
        lambda: client.copy(src, os.path.join(daemon.root, 'escaped')))
    assert not os.path.exists(os.path.join(daemon.root, 'escaped'))


def test_symlink_escape(client, daemon):
    link = os.path.join(daemon.images, 'shadow-link')
    os.symlink('/etc/shadow', link)
    dirlink = os.path.join(daemon.images, 'root-link')
    os.symlink(daemon.root, dirlink)
    src = make_raw(os.path.join(daemon.images, 'se.raw'), MiB)
    bad(daemon, client, exception.SymlinkEscape,
        lambda: client.compress(link, os.path.join(daemon.images, 's.gz')))
    bad(daemon, client, exception.SymlinkEscape,
        lambda: client.copy(src, os.path.join(dirlink, 'escaped')))
    assert not os.path.exists(os.path.join(daemon.root, 'escaped'))


def test_command_denied_by_filters(client, daemon):
    src = make_raw(os.path.join(daemon.images, 'deny.raw'), MiB)
    dst = os.path.join(daemon.images, 'deny.gz')
    # Refused either when queued or when the task runs: a typed error both
    # ways, and no output.
    bad(daemon, client, (exception.CommandDenied, exception.NoEngineAvailable),
        lambda: client.compress(src, dst, driver='pigz').wait(60))
    assert not os.path.exists(dst)


# --- restart with tasks in flight -----------------------------------------
def test_restart_with_tasks_in_flight(client, daemon):
    done = client.copy(make_raw(os.path.join(daemon.images, 'keep.raw'),
                                MiB), os.path.join(daemon.images, 'kept'))
    done_result = done.wait(60)
    flying = [slow_compress(client, daemon, 'fly%d' % n, 64 * MiB)
              for n in range(2)]
    for handle in flying:
        wait_running(handle)
    time.sleep(0.5)
    daemon.crash()
    daemon.start()
    with daemon.client() as c:
        assert c.task(done.id).result == done_result
        for handle in flying:
            task = c.task(handle.id).task
            assert task['state'] == 'failed'
            assert task['error']['type'] == 'TaskInterrupted'
            with pytest.raises(exception.TaskInterrupted):
                c.task(handle.id).wait(5)
            assert not os.path.exists(
                handle.task['params']['dst'])
        # Children of the killed privsep daemon may take a moment to die.
        deadline = time.monotonic() + 10
        while paths.stray_temp_files(daemon.images):
            assert time.monotonic() < deadline, \
                paths.stray_temp_files(daemon.images)
            time.sleep(0.2)
        # Serving again.
        out = os.path.join(daemon.images, 'after-restart')
        check_result(c.copy(os.path.join(daemon.images, 'keep.raw'),
                            out).wait(60), out)


# --- signals (last: SIGTERM ends the daemon) ---------------------------------
def test_sighup_reloads_filters(client, daemon):
    daemon.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while 'Filters reloaded' not in daemon.log_tail(200):
        assert time.monotonic() < deadline, daemon.log_tail()
        time.sleep(0.1)
    assert daemon.proc.poll() is None
    assert client.capabilities()['drivers']


def test_sigterm_exits_cleanly(daemon):
    assert daemon.stop(timeout=60) == 0, daemon.log_tail()
    assert 'accel-daemon stopped' in daemon.log_tail()
