# SPDX-License-Identifier: Apache-2.0
"""The RPC endpoint: validation, path pre-checks, delegation, typed errors.

Called directly (no transport) first; then through oslo.messaging's
dispatcher over the fake:// transport, with the messages a hostile caller
sends (raw, where the client library would not build them).
"""

import os
import time
import types
import uuid

from oslo_config import cfg
import oslo_messaging
from oslo_messaging._drivers import common as driver_common
from oslo_messaging import conffixture
import pytest

from accel_daemon.engine.settings import Settings
from accel_daemon import exception
from accel_daemon.manager.journal import Journal
from accel_daemon.manager.tasks import TaskManager
from accel_daemon import operations
from accel_daemon.rpc import endpoint as ep
from accel_daemon.rpc import rpcapi
from accel_daemon.rpc import server as rpc_server
from tests.fakes.backend import FakeBackend

CTXT = {}


@pytest.fixture
def images(tmp_path):
    d = tmp_path / 'images'
    d.mkdir()
    (d / 'in.raw').write_bytes(b'x' * 100)
    return str(d)


@pytest.fixture
def service(tmp_path, images):
    backend = FakeBackend()
    manager = TaskManager(backend, Journal(str(tmp_path / 'tasks.sqlite')),
                          workers=2)
    manager.start()
    endpoint = ep.AccelEndpoint(manager, backend,
                                Settings(allowed_dirs=(images,)),
                                max_wait=0.2)
    yield endpoint, manager, backend
    manager.stop(1.0)


def call(endpoint, method, **kwargs):
    """Call like the dispatcher does, unwrapping ExpectedException."""
    try:
        return getattr(endpoint, method)(CTXT, **kwargs)
    except oslo_messaging.ExpectedException as e:
        raise e.exc_info[1]


def test_target_version():
    assert ep.AccelEndpoint.target.version == '1.5'
    assert rpcapi.AccelAPI.VERSION == operations.API_VERSION
    assert ep.AccelEndpoint.target.version == operations.API_VERSION


def test_every_api_method_has_an_endpoint_method():
    for method in ep.METHODS:
        assert callable(getattr(ep.AccelEndpoint, method)), method
        assert callable(getattr(rpcapi.AccelAPI, method)), method


def test_compress_queues_a_task_without_none_arguments(service, images):
    endpoint, manager, backend = service
    src, dst = os.path.join(images, 'in.raw'), os.path.join(images, 'o.gz')
    task = call(endpoint, 'compress', src=src, dst=dst, driver=None,
                level=3, format='gzip')
    assert task['kind'] == 'compress'
    assert task['params'] == {'src': src, 'dst': dst, 'level': 3,
                              'format': 'gzip'}
    done = manager.wait(task['id'], 5)
    assert done['state'] == 'succeeded'
    assert backend.calls[0][1:] == ('compress', task['params'])


@pytest.mark.parametrize('kwargs, word', [
    ({'dst': 'o.gz'}, 'missing argument src'),
    ({'src': 'in.raw', 'dst': 'o.gz', 'colour': 'red'}, 'unknown argument'),
    ({'src': 7, 'dst': 'o.gz'}, 'src: must be a non-empty string'),
    ({'src': 'in.raw', 'dst': ''}, 'dst: must be a non-empty string'),
    ({'src': 'in.raw', 'dst': 'o.gz', 'level': '3'}, 'level: must be an int'),
    ({'src': 'in.raw', 'dst': 'o.gz', 'level': True}, 'level: must be an int'),
    ({'src': 'in.raw', 'dst': 'o.gz', 'level': 0}, 'level: must be between'),
    ({'src': 'in.raw', 'dst': 'o.gz', 'driver': 'a b'}, 'driver: must be'),
    ({'src': 'in.raw', 'dst': 'o.gz', 'driver': ['qat']}, 'driver: must be'),
])
def test_compress_bad_arguments(service, images, kwargs, word):
    endpoint, manager, _ = service
    for key in ('src', 'dst'):
        if isinstance(kwargs.get(key), str) and kwargs[key]:
            kwargs[key] = os.path.join(images, kwargs[key])
    with pytest.raises(exception.InvalidRequest) as err:
        call(endpoint, 'compress', **kwargs)
    assert type(err.value) is exception.InvalidRequest
    assert word in err.value.message
    assert manager.list() == []
    assert os.listdir(images) == ['in.raw']


@pytest.mark.parametrize('method, kwargs', [
    ('convert', {'src_format': 'raw', 'dst_format': 'qcow2',
                 'compress': 'yes'}),
    ('convert', {'src_format': 'raw', 'dst_format': 'qcow2',
                 'target_is_zero': 1}),
    ('convert', {'src_format': 'raw'}),
    ('decompress', {'max_bytes': -1}),
    ('decompress', {'max_bytes': 1.5}),
    ('download', {'disk_format': 'raw', 'dst_format': 'raw',
                  'max_bytes': '10'}),
    ('upload', {'src_format': 'raw', 'disk_format': None}),
])
def test_operation_bad_arguments(service, images, method, kwargs):
    endpoint, manager, _ = service
    with pytest.raises(exception.InvalidRequest):
        call(endpoint, method, src=os.path.join(images, 'in.raw'),
             dst=os.path.join(images, 'out'), **kwargs)
    assert manager.list() == []


@pytest.mark.parametrize('method, kwargs', [
    ('task_get', {'task_id': 'not-a-uuid'}),
    ('task_get', {'task_id': str(uuid.uuid4()).upper()}),
    ('task_get', {}),
    ('task_wait', {'task_id': str(uuid.uuid4())}),
    ('task_wait', {'task_id': str(uuid.uuid4()), 'timeout': 'soon'}),
    ('task_wait', {'task_id': str(uuid.uuid4()), 'timeout': -1}),
    ('task_wait', {'task_id': str(uuid.uuid4()), 'timeout': float('nan')}),
    ('task_list', {'state': 'sleeping'}),
    ('task_list', {'limit': 0}),
    ('task_cancel', {'task_id': 42}),
    ('capabilities', {'verbose': True}),
    ('image_info', {'path': '/x'}),
])
def test_control_bad_arguments(service, method, kwargs):
    with pytest.raises(exception.InvalidRequest):
        call(service[0], method, **kwargs)


def test_unknown_task_is_typed(service):
    task_id = str(uuid.uuid4())
    with pytest.raises(exception.TaskNotFound) as err:
        call(service[0], 'task_get', task_id=task_id)
    assert err.value.fields == {'task_id': task_id}


def test_path_outside_allowed_dirs(service, images, tmp_path):
    outside = tmp_path / 'outside.raw'
    outside.write_bytes(b'secret')
    endpoint, manager, _ = service
    with pytest.raises(exception.PathNotAllowed) as err:
        call(endpoint, 'copy', src=str(outside),
             dst=os.path.join(images, 'o'))
    assert err.value.fields['path'] == str(outside)
    with pytest.raises(exception.PathNotAllowed):
        call(endpoint, 'copy', src=os.path.join(images, 'in.raw'),
             dst=str(tmp_path / 'o'))
    with pytest.raises(exception.PathNotAllowed):
        call(endpoint, 'copy', src=os.path.join(images, '..', 'outside.raw'),
             dst=os.path.join(images, 'o'))
    assert manager.list() == []
    assert sorted(os.listdir(images)) == ['in.raw']


def test_symlink_escape(service, images, tmp_path):
    endpoint, manager, _ = service
    (tmp_path / 'secret').write_bytes(b'secret')
    os.symlink(str(tmp_path / 'secret'), os.path.join(images, 'link'))
    os.symlink(str(tmp_path), os.path.join(images, 'dirlink'))
    with pytest.raises(exception.SymlinkEscape):
        call(endpoint, 'image_info', path=os.path.join(images, 'link'),
             format='raw')
    with pytest.raises(exception.SymlinkEscape):
        call(endpoint, 'copy', src=os.path.join(images, 'in.raw'),
             dst=os.path.join(images, 'dirlink', 'o'))
    assert manager.list() == []
    assert not (tmp_path / 'o').exists()


def test_existing_output_and_missing_input(service, images):
    endpoint, manager, _ = service
    src = os.path.join(images, 'in.raw')
    with pytest.raises(exception.OutputExists):
        call(endpoint, 'copy', src=src, dst=src)
    with pytest.raises(exception.InputNotFound):
        call(endpoint, 'copy', src=os.path.join(images, 'nope'),
             dst=os.path.join(images, 'o'))
    assert manager.list() == []


def test_unreadable_paths_are_left_to_the_privileged_layer(service, images):
    def denied(*args):
        raise PermissionError(13, 'Permission denied')
    endpoint = ep.AccelEndpoint(service[1], service[2],
                                Settings(allowed_dirs=(images,)),
                                path_checks={'input': denied,
                                             'output': denied})
    # The unprivileged daemon may not see into the directory: that is not
    # a verdict, the privileged layer checks again with the rights to.
    info = call(endpoint, 'image_info', path=os.path.join(images, 'x'),
                format='raw')
    assert info['format'] == 'raw'


def test_quick_calls_go_to_the_backend(service, images):
    endpoint = service[0]
    caps = call(endpoint, 'capabilities')
    assert caps['drivers'] == ['fake']
    info = call(endpoint, 'image_info', path=os.path.join(images, 'in.raw'),
                format='raw')
    assert info['format'] == 'raw'


@pytest.fixture
def two_callers(tmp_path, images):
    """Two endpoints on one task manager, as the daemon builds them: one
    per caller, each with a directory of its own."""
    backend = FakeBackend(hold=True)
    manager = TaskManager(backend, Journal(str(tmp_path / 'tasks.sqlite')),
                          workers=1)
    manager.start()
    settings = Settings(allowed_dirs=(images,))
    endpoints = {}
    for name in ('cinder', 'nova'):
        own = os.path.join(images, name)
        os.mkdir(own)
        with open(os.path.join(own, 'in.raw'), 'wb') as f:
            f.write(b'x' * 100)
        endpoints[name] = ep.AccelEndpoint(
            manager, backend, settings, max_wait=0.2,
            caller=ep.Caller(name, (own,), max_queued=1))
    yield endpoints, manager, backend
    backend.release()
    manager.stop(1.0)


def test_each_caller_sees_and_names_only_its_own(two_callers, images):
    endpoints, manager, backend = two_callers
    cinder, nova = endpoints['cinder'], endpoints['nova']
    cdir, ndir = (os.path.join(images, n) for n in ('cinder', 'nova'))
    caps = call(cinder, 'capabilities')
    assert caps['allowed_dirs'] == [cdir]
    assert caps['allowed_block_devices'] == []
    # Another caller's directory, although inside the host's: refused
    # before anything is queued.
    with pytest.raises(exception.PathNotAllowed):
        call(cinder, 'copy', src=os.path.join(ndir, 'in.raw'),
             dst=os.path.join(cdir, 'o'))
    with pytest.raises(exception.PathNotAllowed):
        call(cinder, 'copy', src=os.path.join(cdir, 'in.raw'),
             dst=os.path.join(ndir, 'in.raw'), replace=True)
    assert manager.list() == []
    theirs = call(nova, 'copy', src=os.path.join(ndir, 'in.raw'),
                  dst=os.path.join(ndir, 'o'))
    assert theirs['caller'] == 'nova'
    assert backend.wait_running(1)
    for method, extra in (('task_get', {}), ('task_wait', {'timeout': 0}),
                          ('task_cancel', {})):
        with pytest.raises(exception.TaskNotFound):
            call(cinder, method, task_id=theirs['id'], **extra)
    assert call(cinder, 'task_list') == []
    assert [t['id'] for t in call(nova, 'task_list')] == [theirs['id']]
    assert call(nova, 'task_get', task_id=theirs['id'])['state'] == 'running'
    # Each caller's own queue cap: nova's running task is not cinder's.
    call(cinder, 'copy', src=os.path.join(cdir, 'in.raw'),
         dst=os.path.join(cdir, 'o1'))
    with pytest.raises(exception.QueueFull):
        call(cinder, 'copy', src=os.path.join(cdir, 'in.raw'),
             dst=os.path.join(cdir, 'o2'))


def test_task_wait_is_capped_by_max_wait(service, images):
    endpoint, _, backend = service
    backend.hold = True
    try:
        task = call(endpoint, 'copy', src=os.path.join(images, 'in.raw'),
                    dst=os.path.join(images, 'o'))
        started = time.monotonic()
        got = call(endpoint, 'task_wait', task_id=task['id'], timeout=30)
        assert time.monotonic() - started < 5
        assert got['state'] in ('queued', 'running')
        cancelled = call(endpoint, 'task_cancel', task_id=task['id'])
        assert cancelled['id'] == task['id']
        final = call(endpoint, 'task_wait', task_id=task['id'], timeout=5)
    finally:
        backend.hold = False
        backend.release()
    assert final['state'] in ('cancelled', 'running')


def test_task_list_filters_by_state(service, images):
    endpoint, manager, _ = service
    task = call(endpoint, 'copy', src=os.path.join(images, 'in.raw'),
                dst=os.path.join(images, 'o'))
    manager.wait(task['id'], 5)
    assert [t['id'] for t in call(endpoint, 'task_list')] == [task['id']]
    assert call(endpoint, 'task_list', state='failed', limit=5) == []


def test_errors_cross_the_wire_typed_with_fields(service, tmp_path):
    """What rabbit does: serialise, rebuild from allowed modules, clean."""
    endpoint = service[0]
    (tmp_path / 'x').write_bytes(b'outside')
    try:
        endpoint.image_info(CTXT, path=str(tmp_path / 'x'), format='raw')
    except oslo_messaging.ExpectedException as e:
        data = driver_common.serialize_remote_exception(e.exc_info)
    remote = driver_common.deserialize_remote_exception(data, rpcapi.EXMODS)
    assert isinstance(remote, exception.PathNotAllowed)
    clean = rpcapi._clean(remote)
    assert type(clean) is exception.PathNotAllowed
    assert clean.fields == {'path': str(tmp_path / 'x'),
                            'reason': 'outside the allowed directories'}
    assert clean.message == remote.message
    assert 'Traceback' not in str(clean)


def test_bugs_become_internal_errors(service, caplog):
    endpoint, _, backend = service

    def broken():
        raise NotImplementedError('not yet')
    backend.capabilities = broken
    with pytest.raises(exception.InternalError) as err:
        call(endpoint, 'capabilities')
    assert 'NotImplementedError: not yet' in err.value.message
    # The traceback stays in the daemon's log.
    assert 'Traceback' in caplog.text


def test_reserved_and_odd_argument_names_are_refused(service):
    endpoint = service[0]
    for name in ('self', 'ctxt', '', 'a b', '1x', 'x\x00'):
        with pytest.raises(exception.InvalidRequest) as err:
            call(endpoint, 'capabilities', **{name: 1})
        assert type(err.value) is exception.InvalidRequest, name


# --- over the fake:// transport: what a hostile caller sends ---------------
# oslo.messaging's dispatcher stands between the wire and the endpoint; these
# go through it, as raw messages where the client library would not build
# them.  One server for the section: stopping one costs about a second.
WIRE_HOST = 'wire-%s' % uuid.uuid4().hex[:8]


@pytest.fixture(scope='module')
def wire(tmp_path_factory):
    root = tmp_path_factory.mktemp('wire')
    images = root / 'images'
    images.mkdir()
    fixture = conffixture.ConfFixture(cfg.CONF, transport_url='fake:/')
    fixture.setUp()
    fixture.conf.set_override('control_exchange', 'test-%s' % WIRE_HOST)
    backend = FakeBackend()
    manager = TaskManager(backend, Journal(str(root / 'tasks.sqlite')),
                          workers=1)
    manager.start()
    transport = rpcapi.get_transport(fixture.conf)
    assert type(transport._driver).__name__ == 'FakeDriver'
    server = rpc_server.build(
        transport, rpcapi.TOPIC, WIRE_HOST,
        [ep.AccelEndpoint(manager, backend,
                          Settings(allowed_dirs=(str(images),)),
                          max_wait=0.2)])
    server.start()
    client = rpcapi.AccelAPI(rpcapi.get_transport(fixture.conf), timeout=5)
    yield types.SimpleNamespace(transport=transport, client=client,
                                images=str(images), manager=manager)
    server.stop()
    manager.stop(1.0)
    server.wait()
    transport.cleanup()
    fixture.cleanUp()


def raw(wire, message, ctxt=None, timeout=5):
    """Send ``message`` as it is (no client-side checks) and return the
    answer or raise what the daemon raised."""
    target = oslo_messaging.Target(exchange=rpcapi.EXCHANGE,
                                   topic=rpcapi.TOPIC, server=WIRE_HOST)
    return wire.transport._send(target, {} if ctxt is None else ctxt,
                                message, wait_for_reply=True,
                                timeout=timeout)


def refused(wire, message, ctxt=None):
    """The daemon answers InvalidRequest itself and still serves."""
    with pytest.raises(exception.AccelError) as err:
        raw(wire, message, ctxt)
    # Not InternalError, not a subclass: the request itself is refused.
    assert type(err.value) is exception.InvalidRequest, err.value
    assert still_serving(wire)
    return err.value


def still_serving(wire):
    return wire.client.call(WIRE_HOST, 'task_list') == []


def test_server_uses_the_guarded_dispatcher(wire):
    policy = rpc_server.DeclaredMethodsPolicy()
    endpoint = object()
    assert [m for m in dir(ep.AccelEndpoint)
            if policy.is_allowed(endpoint, m)] == sorted(ep.METHODS)
    for method in ('target', '_submit', '__init__', None, ['capabilities']):
        assert not policy.is_allowed(endpoint, method)


@pytest.mark.parametrize('method', [
    'target', '_submit', '_checked', '_manager', '__init__', '__class__',
    '__dict__', 'validate', 'oslo_rpc_server_ping', 'rm_rf', 'Capabilities',
    'capabilities ', '', 'x' * 10000, 'cap\x00abilities', '\udc80'])
def test_only_declared_methods_are_callable(wire, method):
    # Through the client library and raw: InvalidRequest both ways.
    with pytest.raises(exception.AccelError) as err:
        wire.client.call(WIRE_HOST, method)
    assert type(err.value) is exception.InvalidRequest
    refused(wire, {'method': method, 'args': {}})


def test_target_is_not_a_method(wire):
    # It was a TypeError ("'Target' object is not callable") before.
    err = refused(wire, {'method': 'target', 'args': {}, 'version': '1.0'})
    assert 'no such method' in err.message
    assert err.fields == {'reason': "no such method 'target'"}


@pytest.mark.parametrize('args', [
    {'self': 1}, {'ctxt': {}}, {'': 1}, {'a b': 1}, {'1x': 1},
    {'x\x00': 1}, {'state': 'queued', 'self': None}])
def test_reserved_argument_names_over_the_wire(wire, args):
    err = refused(wire, {'method': 'task_list', 'args': args})
    assert 'task_list' in err.message


@pytest.mark.parametrize('version', [
    '1', 'x.y', '', 1.0, 1, '1.0.0', None, 'a' * 100000, '1.', '.0',
    '-1.0', '1.0a', ' 1.0', '1.0\n', '\u0661.\u0660', '1' * 40 + '.0',
    [1, 0], {'major': 1}, True, '2.0', '1.6', '0.9'])
def test_malformed_or_unsupported_versions(wire, version):
    err = refused(wire, {'method': 'capabilities', 'args': {},
                         'version': version})
    assert 'version' in err.message
    assert len(err.message) < 200


@pytest.mark.parametrize('version', ['1.0', '01.00'])
def test_good_versions_still_work(wire, version):
    assert raw(wire, {'method': 'capabilities', 'args': {},
                      'version': version})['drivers'] == ['fake']
    # oslo.messaging reads an absent version as 1.0.
    assert raw(wire, {'method': 'capabilities'})['drivers'] == ['fake']


@pytest.mark.parametrize('message', [
    {'method': None}, {'method': 5}, {'method': ['capabilities']},
    {'method': {'capabilities': 1}}, {'args': {}},
    {'method': 'capabilities', 'args': None},
    {'method': 'capabilities', 'args': [1, 2]},
    {'method': 'capabilities', 'args': 'x'},
    {'method': 'capabilities', 'namespace': 'other'},
    {'method': 'capabilities', 'namespace': ['x']}])
def test_malformed_messages(wire, message):
    refused(wire, message)


@pytest.mark.parametrize('ctxt', [[], 'ctxt', 7, ['a', 'b']])
def test_context_that_is_not_a_mapping(wire, ctxt):
    err = refused(wire, {'method': 'capabilities', 'args': {}}, ctxt=ctxt)
    assert 'context' in err.message


def test_bad_values_are_typed_not_internal(wire):
    for args in ({'limit': 10 ** 30}, {'limit': -(10 ** 30)},
                 {'limit': 1.5}, {'state': '\x00'}, {'state': ['queued']},
                 {'limit': float('inf')}):
        refused(wire, {'method': 'task_list', 'args': args})
    for path in ('/etc/passwd', '\x00', '\udc80', 'x' * 5000, '../..'):
        with pytest.raises(exception.AccelError) as err:
            wire.client.call(WIRE_HOST, 'copy', src=path,
                             dst=os.path.join(wire.images, 'o'))
        assert isinstance(err.value, exception.InvalidRequest), err.value
    assert os.listdir(wire.images) == []
    assert still_serving(wire)


@pytest.mark.parametrize('version', [
    'x.y', '1', '', '1.0.0', '2.0', '1.6', 1.0, None, ['1', '0']])
def test_client_maps_bad_versions_to_invalid_request(wire, version):
    # Refused by the client (malformed) or by the daemon (unsupported):
    # InvalidRequest either way, never an oslo.messaging or builtin error.
    with pytest.raises(exception.AccelError) as err:
        wire.client.call(WIRE_HOST, 'capabilities', version=version)
    assert type(err.value) is exception.InvalidRequest
    assert wire.client.call(WIRE_HOST, 'capabilities', version='1.0')
