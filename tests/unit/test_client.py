# SPDX-License-Identifier: Apache-2.0
"""AccelClient and task handles through oslo.messaging's fake:// transport,
against a real endpoint + TaskManager + FakeBackend.  One server for the
whole module: stopping one costs about a second."""

import os
import socket
import subprocess
import sys
import threading
import time
import uuid

from oslo_config import cfg
from oslo_context import context as oslo_context
from oslo_messaging import conffixture
import pytest

from accel_daemon import client as client_mod
from accel_daemon.client import AccelClient
from accel_daemon.conf import client as client_conf
from accel_daemon.engine.settings import Settings
from accel_daemon import exception
from accel_daemon.manager.journal import Journal
from accel_daemon.manager.tasks import TaskManager
from accel_daemon import request_ids
from accel_daemon.rpc import endpoint as rpc_endpoint
from accel_daemon.rpc import rpcapi
from accel_daemon.rpc import server as rpc_server
from tests.fakes.backend import FakeBackend

HOST = 'unit-%s' % uuid.uuid4().hex[:8]


class Daemon:
    def __init__(self, root):
        self.images = os.path.join(root, 'images')
        os.makedirs(self.images)
        self.backend = FakeBackend(step=0.002)
        self.manager = TaskManager(
            self.backend, Journal(os.path.join(root, 'tasks.sqlite')),
            workers=3)


@pytest.fixture(scope='module')
def conf():
    fixture = conffixture.ConfFixture(cfg.CONF, transport_url='fake:/')
    fixture.setUp()
    fixture.conf.set_override('control_exchange', 'test-%s' % HOST)
    yield fixture.conf
    fixture.cleanUp()


@pytest.fixture(scope='module')
def daemon(conf, tmp_path_factory):
    d = Daemon(str(tmp_path_factory.mktemp('daemon')))
    d.manager.start()
    transport = rpcapi.get_transport(conf)
    endpoint = rpc_endpoint.AccelEndpoint(
        d.manager, d.backend, Settings(allowed_dirs=(d.images,)),
        max_wait=0.5)
    server = rpc_server.build(transport, 'accel_daemon', HOST, [endpoint])
    # A unit test must never reach a real broker.
    assert type(transport._driver).__name__ == 'FakeDriver'
    server.start()
    d.server = server
    yield d
    server.stop()
    d.manager.stop(1.0)
    server.wait()
    transport.cleanup()


@pytest.fixture(scope='module')
def client(conf, daemon):
    c = AccelClient(conf, host=HOST)
    c.wait_interval = 0.2
    yield c
    c.close()


@pytest.fixture
def backend(daemon):
    """The shared fake backend, reset after each test."""
    yield daemon.backend
    daemon.backend.duration = 0.0
    daemon.backend.fail = None


@pytest.fixture
def src(daemon):
    path = os.path.join(daemon.images, 'src-%s.raw' % uuid.uuid4().hex[:6])
    with open(path, 'wb') as f:
        f.write(b'data')
    return path


def out(daemon, name='out'):
    return os.path.join(daemon.images, '%s-%s' % (name, uuid.uuid4().hex[:6]))


def test_executor_is_threading(daemon):
    # oslo.messaging picks it from the process (no executor= argument).
    assert daemon.server.executor_type == 'threading'
    # Only the declared methods are reachable (tests/unit/test_rpc_endpoint).
    assert daemon.server.dispatcher.access_policy.__class__ is \
        rpc_server.DeclaredMethodsPolicy


def test_capabilities_and_info(client, src):
    assert client.capabilities()['drivers'] == ['fake']
    assert client.image_info(src, 'raw')['filename'] == src


def test_compress_wait_returns_result(client, daemon, src, backend):
    dst = out(daemon, 'c.gz')
    handle = client.compress(src, dst, level=1)
    assert handle.kind == 'compress'
    assert handle.state in ('queued', 'running', 'succeeded')
    result = handle.wait(timeout=10)
    assert result['output'] == dst
    assert handle.state == 'succeeded'
    assert handle.result == result
    assert handle.error is None
    assert handle.status()['state'] == 'succeeded'
    assert handle.progress == {'done': 1000, 'total': 1000}
    assert client.task(handle.id).kind == 'compress'


@pytest.mark.parametrize('method, args', [
    ('decompress', ('max_bytes',)),
    ('convert', ('raw', 'qcow2')),
    ('copy', ()),
    ('upload', ('raw', 'raw')),
    ('download', ('raw', 'qcow2')),
])
def test_every_operation_reaches_the_backend(client, daemon, src, backend,
                                             method, args):
    dst = out(daemon)
    if method == 'decompress':
        handle = client.decompress(src, dst, max_bytes=10)
    else:
        handle = getattr(client, method)(src, dst, *args)
    assert handle.wait(timeout=10)['output'] == dst
    kind, params = [c[1:] for c in backend.calls if c[0] == handle.id][0]
    assert kind == method
    assert params['src'] == src and params['dst'] == dst


def test_convert_max_bytes_is_sent_as_1_1_only_when_given(client, daemon,
                                                          src, backend,
                                                          monkeypatch):
    sent = []
    real = rpcapi.AccelAPI.call

    def spy(self, host, method, version='1.0', **kwargs):
        sent.append((method, version, 'max_bytes' in kwargs))
        return real(self, host, method, version=version, **kwargs)

    monkeypatch.setattr(rpcapi.AccelAPI, 'call', spy)
    plain = client.convert(src, out(daemon, 'c1'), 'raw', 'qcow2')
    capped = client.convert(src, out(daemon, 'c2'), 'raw', 'qcow2',
                            max_bytes=4096)
    plain.wait(timeout=10)
    capped.wait(timeout=10)
    assert ('convert', '1.0', False) in sent
    assert ('convert', '1.1', True) in sent
    params = {c[0]: c[2] for c in backend.calls}
    assert params[capped.id]['max_bytes'] == 4096
    assert 'max_bytes' not in params[plain.id]


REPLACE_CALLS = [
    ('compress', ()), ('decompress', ()), ('convert', ('raw', 'qcow2')),
    ('copy', ()), ('upload', ('raw', 'raw')), ('download', ('raw', 'raw')),
]


@pytest.mark.parametrize('method, args', REPLACE_CALLS)
def test_replace_is_sent_as_1_2_only_when_true(client, daemon, src, backend,
                                               monkeypatch, method, args):
    sent = []
    real = rpcapi.AccelAPI.call

    def spy(self, host, name, version='1.0', **kwargs):
        if name == method:
            sent.append((version, kwargs.get('replace')))
        return real(self, host, name, version=version, **kwargs)

    monkeypatch.setattr(rpcapi.AccelAPI, 'call', spy)
    call = getattr(client, method)
    existing = out(daemon, 'existing')
    with open(existing, 'wb') as f:
        f.write(b'old')
    plain = call(src, out(daemon), *args)
    off = call(src, out(daemon), *args, replace=False)
    with pytest.raises(exception.OutputExists):
        call(src, existing, *args)
    over = call(src, existing, *args, replace=True)
    for handle in (plain, off, over):
        handle.wait(timeout=10)
    assert sent == [('1.0', None)] * 3 + [('1.2', True)]
    params = {c[0]: c[2] for c in backend.calls}
    assert params[over.id]['replace'] is True
    assert params[over.id]['dst'] == existing
    assert 'replace' not in params[plain.id]
    assert 'replace' not in params[off.id]


@pytest.mark.parametrize('method, args, new, version', [
    ('decompress', (), {'container': 'gzip'}, '1.3'),
    ('download', ('raw', 'qcow2'), {'container': 'zstd'}, '1.3'),
    ('download', ('raw', 'qcow2'), {'container': 'zstd', 'sparse': False},
     '1.3'),
])
def test_1_3_arguments_are_sent_as_1_3_only_when_given(
        client, daemon, src, backend, monkeypatch, method, args, new,
        version):
    sent = []
    real = rpcapi.AccelAPI.call

    def spy(self, host, name, version='1.0', **kwargs):
        if name == method:
            sent.append((version,
                         {k: kwargs[k] for k in new if k in kwargs}))
        return real(self, host, name, version=version, **kwargs)

    monkeypatch.setattr(rpcapi.AccelAPI, 'call', spy)
    plain = getattr(client, method)(src, out(daemon, 'p'), *args)
    given = getattr(client, method)(src, out(daemon, 'g'), *args, **new)
    for handle in (plain, given):
        try:
            handle.wait(timeout=10)
        except exception.AccelError:
            pass        # the stand-in backend's answer does not matter here
    assert sent == [('1.0', {}), (version, new)]
    params = {c[0]: c[2] for c in backend.calls}
    assert {k: params[given.id][k] for k in new} == new
    assert not set(new) & set(params[plain.id])


@pytest.mark.parametrize('method, args, new', [
    ('compress', (), {'bps_limit': 1 << 20}),
    ('decompress', (), {'bps_limit': 1 << 20}),
    ('convert', ('raw', 'qcow2'), {'bps_limit': 1 << 20}),
    ('convert', ('raw', 'raw'), {'sparse': False}),
    ('convert', ('raw', 'raw'), {'sparse': True, 'max_bytes': 1 << 30}),
    ('copy', (), {'bps_limit': 1 << 20}),
    ('upload', ('raw', 'raw'), {'bps_limit': 1 << 20}),
    ('download', ('raw', 'qcow2'), {'bps_limit': 7, 'sparse': False}),
])
def test_1_2_arguments_are_sent_as_1_2_only_when_given(
        client, daemon, src, backend, monkeypatch, method, args, new):
    sent = []
    real = rpcapi.AccelAPI.call

    def spy(self, host, name, version='1.0', **kwargs):
        sent.append((version, {k: kwargs[k] for k in new if k in kwargs}))
        return real(self, host, name, version=version, **kwargs)

    monkeypatch.setattr(rpcapi.AccelAPI, 'call', spy)
    plain = getattr(client, method)(src, out(daemon, 'p'), *args)
    given = getattr(client, method)(src, out(daemon, 'g'), *args, **new)
    plain.wait(timeout=10)
    given.wait(timeout=10)
    assert sent[0] == ('1.0', {})
    assert sent[1] == ('1.2', new)
    params = {c[0]: c[2] for c in backend.calls}
    assert {k: params[given.id][k] for k in new} == new
    assert not set(new) & set(params[plain.id])


def test_replace_pre_check_refuses_a_symlink(client, daemon, src):
    link = out(daemon, 'link')
    os.symlink('/etc/passwd', link)
    with pytest.raises(exception.SymlinkEscape):
        client.copy(src, link, replace=True)
    with pytest.raises(exception.InvalidRequest) as err:
        client._api.call(client.host, 'copy', version='1.2', src=src,
                         dst=out(daemon), replace='yes')
    assert 'replace' in err.value.message


def test_refused_request_is_typed_with_fields(client, daemon, tmp_path):
    outside = tmp_path / 'outside'
    outside.write_bytes(b'x')
    with pytest.raises(exception.PathNotAllowed) as err:
        client.copy(str(outside), out(daemon))
    assert type(err.value) is exception.PathNotAllowed
    assert err.value.fields['path'] == str(outside)


def test_wrong_type_is_invalid_request(client, daemon, src):
    with pytest.raises(exception.InvalidRequest) as err:
        client.compress(src, out(daemon), level='fast')
    assert 'level' in err.value.message


def test_unknown_and_private_methods_are_invalid_requests(client):
    with pytest.raises(exception.InvalidRequest):
        client._api.call(client.host, 'format_disk')
    # DefaultRPCAccessPolicy: names starting with _ are not callable.
    with pytest.raises(exception.InvalidRequest):
        client._api.call(client.host, '_submit', kind='copy', kwargs={})


def test_newer_version_is_an_invalid_request(client):
    with pytest.raises(exception.InvalidRequest):
        client._api.call(client.host, 'capabilities', version='1.9')


def test_failed_task_raises_typed_error(client, daemon, src, backend):
    backend.fail = 'CorruptInput'
    handle = client.decompress(src, out(daemon))
    with pytest.raises(exception.CorruptInput) as err:
        handle.wait(timeout=10)
    assert type(err.value) is exception.CorruptInput
    assert handle.state == 'failed'
    assert isinstance(handle.error, exception.CorruptInput)


def test_wait_timeout_without_cancel_then_cancel(client, daemon, src,
                                                 backend):
    backend.duration = 60
    handle = client.copy(src, out(daemon))
    started = time.monotonic()
    with pytest.raises(exception.TaskWaitTimeout) as err:
        handle.wait(timeout=0.3, cancel=False)
    assert 0.3 <= time.monotonic() - started < 3
    assert err.value.fields['task_id'] == handle.id
    assert handle.state in ('queued', 'running')
    handle.cancel()
    with pytest.raises(exception.Cancelled):
        handle.wait(timeout=10)
    assert handle.state == 'cancelled'


def test_unknown_task(client):
    with pytest.raises(exception.TaskNotFound):
        client.task(str(uuid.uuid4()))


def test_tasks_listing(client, daemon, src, backend):
    handle = client.copy(src, out(daemon))
    handle.wait(timeout=10)
    ids = [t.id for t in client.tasks(state='succeeded', limit=1000)]
    assert handle.id in ids
    assert all(t.state == 'succeeded' for t in client.tasks('succeeded'))


def test_concurrent_clients(client, daemon, src, backend):
    backend.duration = 0.05
    results, errors = [], []

    def worker(n):
        try:
            for i in range(5):
                h = client.copy(src, out(daemon, 'cc%d-%d' % (n, i)))
                results.append(h.wait(timeout=30))
        except Exception as e:      # collected and asserted below
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(results) == 20
    assert len({r['output'] for r in results}) == 20
    assert backend.max_running <= 3


def test_unreachable_daemon_is_service_unavailable(conf, daemon):
    conf.set_override('timeout', 1, group='accel_daemon_client')
    try:
        with AccelClient(conf, host='nobody-%s' % HOST) as c:
            with pytest.raises(exception.ServiceUnavailable):
                c.capabilities()
    finally:
        conf.clear_override('timeout', group='accel_daemon_client')


def test_client_options_registered_on_callers_conf():
    conf = cfg.ConfigOpts()
    fixture = conffixture.ConfFixture(conf, transport_url='fake:/')
    fixture.setUp()
    conf([], project='cinder')
    try:
        with AccelClient(conf) as c:
            assert conf.accel_daemon_client.timeout == 60
            assert c.host == socket.gethostname()
        conf.set_override('host', 'h1', group='accel_daemon_client')
        with AccelClient(conf) as c:
            assert c.host == 'h1'
        with AccelClient(conf, host='h2') as c:
            assert c.host == 'h2'
    finally:
        fixture.cleanUp()


def test_client_transport_url_overrides_the_services(tmp_path):
    """A nova-compute whose [DEFAULT] transport_url names its cell's
    virtual host still reaches the daemon's broker when
    [accel_daemon_client] transport_url says where that is."""
    conf_file = tmp_path / 'nova.conf'
    conf_file.write_text('[DEFAULT]\n'
                         'transport_url = rabbit://u:p@192.0.2.1:5672/cell1\n'
                         '[accel_daemon_client]\n'
                         'transport_url = fake:/\n')
    conf = cfg.ConfigOpts()
    conf(['--config-file', str(conf_file)], project='nova')
    with AccelClient(conf) as c:
        assert type(c._transport._driver).__name__ == 'FakeDriver'
    assert conf.transport_url.startswith('rabbit://')

    unset = tmp_path / 'cinder.conf'
    unset.write_text('[DEFAULT]\ntransport_url = fake:/\n')
    conf = cfg.ConfigOpts()
    conf(['--config-file', str(unset)], project='cinder')
    with AccelClient(conf) as c:
        assert conf.accel_daemon_client.transport_url is None
        assert type(c._transport._driver).__name__ == 'FakeDriver'


# --- the exchange ------------------------------------------------------------
def test_client_and_server_use_accel_daemons_own_exchange(client, daemon):
    assert rpcapi.EXCHANGE == 'accel_daemon'
    assert client._api._client.target.exchange == rpcapi.EXCHANGE
    assert rpc_server.target('t', HOST).exchange == rpcapi.EXCHANGE


# --- request ids -------------------------------------------------------------
RID = 'req-0123abcd-4567-89ab-cdef-0123456789ab'
GID = 'req-fedcba98-7654-3210-fedc-ba9876543210'


@pytest.fixture
def sent_ctxts(monkeypatch):
    """The RPC ctxt of every call, as the daemon received it."""
    seen = []
    real = rpc_endpoint.call_ids

    def spy(ctxt):
        seen.append(dict(ctxt))
        return real(ctxt)
    monkeypatch.setattr(rpc_endpoint, 'call_ids', spy)
    return seen


@pytest.fixture
def run_contexts(backend, monkeypatch):
    """The thread's oslo.context inside backend.run(), per task id."""
    seen = {}
    real = backend.run

    def run(task_id, kind, params, caller=None):
        ctx = oslo_context.get_current()
        seen[task_id] = (ctx.request_id, ctx.global_request_id) \
            if ctx else None
        return real(task_id, kind, params, caller)
    monkeypatch.setattr(backend, 'run', run)
    return seen


def test_context_ids_reach_the_task_and_the_worker(client, daemon, src,
                                                   backend, sent_ctxts,
                                                   run_contexts):
    ctx = oslo_context.RequestContext(request_id=RID, global_request_id=GID,
                                      auth_token='secret', overwrite=False)
    handle = client.copy(src, out(daemon), context=ctx)
    assert handle.task['request_id'] == RID == handle.request_id
    assert handle.task['global_request_id'] == GID
    handle.wait(timeout=10)
    assert run_contexts[handle.id] == (RID, GID)
    # Only the two ids travel, on every call about the task.
    assert sent_ctxts and all(c == {'request_id': RID,
                                    'global_request_id': GID}
                              for c in sent_ctxts)
    assert client.task(handle.id).task['request_id'] == RID


def test_dict_context_and_current_context(client, daemon, src, backend,
                                          run_contexts):
    handle = client.copy(src, out(daemon), context={'request_id': RID})
    assert (handle.task['request_id'], handle.task['global_request_id']) == \
        (RID, None)
    oslo_context.RequestContext(request_id=GID, overwrite=True)
    try:
        handle = client.copy(src, out(daemon))
    finally:
        request_ids._set_current(None)
    assert handle.task['request_id'] == GID
    handle.wait(timeout=10)
    assert run_contexts[handle.id][0] == GID


def test_malformed_ids_are_dropped_and_one_is_made_up(client, daemon, src,
                                                      backend, sent_ctxts,
                                                      run_contexts):
    handle = client.copy(src, out(daemon), context={
        'request_id': 'req-1\n2024-01-01 CRITICAL forged line',
        'global_request_id': 'x' * 10000})
    assert handle.task['global_request_id'] is None
    made_up = handle.task['request_id']
    assert request_ids.valid(made_up)
    handle.wait(timeout=10)
    assert run_contexts[handle.id] == (made_up, None)
    # Later calls through the handle send the id the daemon gave the task.
    assert sent_ctxts[-1] == {'request_id': made_up}


def test_older_clients_empty_ctxt_still_works(client, daemon, src, backend):
    task = client._api.copy(client.host, src, out(daemon))
    assert request_ids.valid(task['request_id'])
    assert task['global_request_id'] is None


# --- deadlines ---------------------------------------------------------------
def test_wait_timeout_cancels_the_task(client, daemon, src, backend):
    backend.duration = 60
    handle = client.copy(src, out(daemon))
    started = time.monotonic()
    with pytest.raises(exception.TaskWaitTimeout):
        handle.wait(timeout=0.3)
    assert time.monotonic() - started < 5
    assert handle.state == 'cancelled'
    assert client.task(handle.id).state == 'cancelled'


def test_configured_task_timeout_is_the_default(client, daemon, src,
                                                backend, monkeypatch):
    backend.duration = 60
    monkeypatch.setattr(client, 'task_timeout', 0.3)
    handle = client.copy(src, out(daemon))
    with pytest.raises(exception.TaskWaitTimeout) as err:
        handle.wait()
    assert err.value.fields['timeout'] == 0.3
    assert handle.state == 'cancelled'


def test_interrupted_wait_cancels_then_reraises(client, daemon, src,
                                                backend, monkeypatch):
    backend.duration = 60
    handle = client.copy(src, out(daemon))
    backend.wait_started(handle.id)
    real = rpcapi.AccelAPI.task_wait
    calls = []

    def interrupted(self, host, task_id, timeout):
        calls.append(task_id)
        if len(calls) == 2:
            raise KeyboardInterrupt()   # Ctrl-C inside the blocking call
        return real(self, host, task_id, timeout)
    monkeypatch.setattr(rpcapi.AccelAPI, 'task_wait', interrupted)
    with pytest.raises(KeyboardInterrupt):
        handle.wait(timeout=30)
    assert handle.state == 'cancelled'
    assert daemon.manager.get(handle.id)['state'] == 'cancelled'
    assert handle.id in backend.cancelled


def test_failed_cancel_keeps_the_original_error(client, daemon, src, backend,
                                                monkeypatch):
    backend.duration = 60
    handle = client.copy(src, out(daemon))

    def unreachable(self, host, task_id):
        raise exception.ServiceUnavailable(reason='gone')
    monkeypatch.setattr(rpcapi.AccelAPI, 'task_cancel', unreachable)
    with pytest.raises(exception.TaskWaitTimeout):
        handle.wait(timeout=0.2)
    monkeypatch.undo()
    handle.cancel()
    assert handle.state == 'cancelled'


def test_typed_errors_of_wait_do_not_cancel(client, daemon, src, backend,
                                            monkeypatch):
    backend.duration = 60
    handle = client.copy(src, out(daemon))

    def unreachable(self, host, task_id, timeout):
        raise exception.ServiceUnavailable(reason='broker restarting')
    monkeypatch.setattr(rpcapi.AccelAPI, 'task_wait', unreachable)
    with pytest.raises(exception.ServiceUnavailable):
        handle.wait(timeout=5)
    monkeypatch.undo()
    assert handle.status()['state'] in ('queued', 'running')
    handle.cancel()


@pytest.fixture
def full_queue(client, daemon, src, backend):
    """Every worker busy and the one queue slot taken."""
    # The daemon is the module's: let what earlier tests cancelled leave
    # the workers first (slow on a loaded machine), so the three running
    # below are these three.
    deadline = time.monotonic() + 30
    while backend.running or daemon.manager._queue:
        assert time.monotonic() < deadline, 'earlier tasks still running'
        time.sleep(0.05)
    backend.duration = 60
    daemon.manager.max_queued = 1
    busy = [client.copy(src, out(daemon)) for _ in range(3)]
    assert backend.wait_running(3)
    queued = client.copy(src, out(daemon))
    assert list(daemon.manager._queue) == [queued.id]
    yield queued
    daemon.manager.max_queued = 0
    for h in busy + [queued]:
        h.cancel()


def test_queue_full_is_raised_after_the_deadline(client, daemon, src,
                                                 full_queue, monkeypatch):
    monkeypatch.setattr(client, 'queue_full_timeout', 1.0)
    sent = []
    real = rpcapi.AccelAPI.copy

    def spy(self, *args, **kwargs):
        sent.append(time.monotonic())
        return real(self, *args, **kwargs)
    monkeypatch.setattr(rpcapi.AccelAPI, 'copy', spy)
    started = time.monotonic()
    with pytest.raises(exception.QueueFull):
        client.copy(src, out(daemon))
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 3.0
    # Backoff: several attempts, further and further apart.
    assert len(sent) >= 3
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert gaps[0] < 0.5 and max(gaps) > gaps[0]


def test_queue_full_waits_for_a_slot(client, daemon, src, full_queue,
                                     monkeypatch):
    monkeypatch.setattr(client, 'queue_full_timeout', 20.0)
    timer = threading.Timer(0.6, full_queue.cancel)
    timer.start()
    started = time.monotonic()
    handle = client.copy(src, out(daemon))
    timer.join()
    assert time.monotonic() - started >= 0.5
    assert handle.state == 'queued'
    handle.cancel()


def test_queue_full_at_once_when_no_wait_is_configured(client, daemon, src,
                                                       full_queue,
                                                       monkeypatch):
    monkeypatch.setattr(client, 'queue_full_timeout', 0.0)
    started = time.monotonic()
    with pytest.raises(exception.QueueFull):
        client.copy(src, out(daemon))
    assert time.monotonic() - started < 0.5


def test_queue_full_delay_is_bounded_and_jittered():
    for attempt in range(40):
        base = min(client_conf.QUEUE_RETRY_MAX,
                   client_conf.QUEUE_RETRY_FIRST * 2 ** attempt)
        delays = {client_mod.queue_full_delay(attempt) for _ in range(20)}
        assert all(base / 2 <= d <= base for d in delays)
        assert len(delays) > 1
    assert client_mod.queue_full_delay(10 ** 6) <= client_conf.QUEUE_RETRY_MAX


def test_client_deadline_options_defaults():
    conf = cfg.ConfigOpts()
    fixture = conffixture.ConfFixture(conf, transport_url='fake:/')
    fixture.setUp()
    conf([], project='nova')
    try:
        with AccelClient(conf) as c:
            assert c.task_timeout == 0.0
            assert c.queue_full_timeout == 60.0
    finally:
        fixture.cleanUp()


def test_client_puts_no_daemon_group_on_the_callers_conf(tmp_path):
    """cinder-volume and nova-compute import the client into their own
    global configuration: only [accel_daemon_client] may appear there."""
    conf_file = tmp_path / 'cinder.conf'
    conf_file.write_text('[DEFAULT]\ntransport_url = fake:/\n')
    code = (
        'import sys\n'
        'from oslo_config import cfg\n'
        'from accel_daemon.client import AccelClient\n'
        'cfg.CONF(["--config-file", sys.argv[1]], project="cinder")\n'
        'AccelClient(cfg.CONF).close()\n'
        'from accel_daemon.conf import opts\n'
        'daemon = {g.name if hasattr(g, "name") else g\n'
        '          for g, _ in opts.list_opts()}\n'
        'print(sorted(daemon & set(cfg.CONF)))\n')
    out = subprocess.run([sys.executable, '-c', code, str(conf_file)],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['accel_daemon_client']"
