# SPDX-License-Identifier: Apache-2.0
"""The records of ``accel_daemon.records`` describe what the layers really
build: a ``TypedDict`` is never checked at run time, so a key added to a
task or a result without its declaration would go unseen by mypy and by
every reader of the one description."""

from __future__ import annotations

import os
import pathlib

import pytest
from stevedore import extension

from accel_daemon.cmd.cli import base
from accel_daemon.cmd.cli import progress
from accel_daemon.engine import compression
from accel_daemon.engine import driver
from accel_daemon.engine.engine import Engine
from accel_daemon.engine.settings import Settings
from accel_daemon import exception
from accel_daemon.manager.journal import Journal
from accel_daemon.manager.tasks import TaskManager
from accel_daemon import operations
from accel_daemon import records
from tests.fakes.backend import FakeBackend

FILTERS = str(pathlib.Path(__file__).parents[2] / 'filters')


def _keys(record: type) -> set[str]:
    return set(record.__annotations__)


@pytest.fixture
def manager(tmp_path):
    mgr = TaskManager(FakeBackend(), Journal(str(tmp_path / 'tasks.db')),
                      workers=1)
    mgr.start()
    yield mgr
    mgr.stop(timeout=1.0)


def test_a_queued_and_a_finished_task_have_the_keys_of_task(manager):
    params = {'src': '/x/a', 'dst': '/x/b'}
    queued = manager.submit('copy', params)
    assert set(queued) == _keys(records.Task)
    done = manager.wait(queued['id'], 10)
    assert done['state'] == 'succeeded'
    assert set(done) == _keys(records.Task)
    assert set(done['progress']) == _keys(records.TaskProgress)


def test_a_failed_task_has_a_task_error(manager):
    task = manager.submit('copy', {'src': '/x/a', 'dst': '/x/b',
                                   'fail': 'NoSpace'})
    done = manager.wait(task['id'], 10)
    assert done['state'] == 'failed'
    assert set(done['error']) == _keys(records.TaskError)


def test_an_error_crosses_as_a_task_error():
    err = exception.PathNotAllowed(path='/etc/x', reason='outside')
    assert set(err.to_dict()) == _keys(records.TaskError)


def test_the_command_lines_local_task_has_the_keys_of_task():
    class Idle:
        def task(self, task_id):
            raise exception.Cancelled()
    local = base.Local(Idle())
    try:
        task = local.wait(local.submit('copy', {}),
                          progress.Bar('copy', enabled=False), None)
    finally:
        local.close()
    assert set(task) == _keys(records.Task)


class _Fake(driver.Compressor):
    name = 'fake'

    def availability(self):
        return driver.Availability(True, '', '1.0')

    def compress(self, src, dst, progress):
        raise NotImplementedError

    def open_decompressed(self, src, progress):
        raise NotImplementedError


def test_capabilities_have_the_keys_of_capabilities(tmp_path):
    mgr = extension.ExtensionManager.make_test_instance(
        [extension.Extension('fake', None, _Fake, None)],
        namespace=compression.NAMESPACE)
    settings = Settings(filters_path=(FILTERS,), allowed_dirs=(
        str(tmp_path),))
    drivers = compression.load_drivers(settings, policy=None, manager=mgr)
    caps = Engine(settings, drivers=drivers).capabilities()
    # The RPC endpoint adds the API version it serves.
    assert set(caps) | {'api_version'} == _keys(records.Capabilities)
    [info] = caps['drivers']
    assert set(info) == _keys(records.DriverInfo)
    assert set(caps['formats']) == _keys(records.Formats)


def test_streams_without_their_group_are_said_unavailable_once(tmp_path,
                                                               caplog):
    # A host where tools/install.sh did not make the streams group: the
    # capabilities say there are no streams (callers keep their files),
    # once at info, never as an error (the daemon's log stays quiet).
    settings = Settings(filters_path=(FILTERS,), allowed_dirs=(
        str(tmp_path),), stream_dir=str(tmp_path / 'streams'),
        stream_group='accel-no-such-group-%d' % os.getpid())
    engine = Engine(settings, drivers={})
    with caplog.at_level('DEBUG'):
        assert engine.capabilities()['streams'] is None
        assert engine.capabilities()['streams'] is None
    said = [r for r in caplog.records if 'Image streams' in r.getMessage()]
    assert [r.levelname for r in said] == ['INFO']
    assert not os.path.exists(tmp_path / 'streams')


def test_a_result_has_only_keys_of_result(tmp_path):
    src, dst = tmp_path / 'a', tmp_path / 'b'
    src.write_bytes(os.urandom(4096) + bytes(65536))
    engine = Engine(Settings(filters_path=(FILTERS,),
                             allowed_dirs=(str(tmp_path),)))
    result = operations.run(engine, 'a-task', 'copy',
                            {'src': str(src), 'dst': str(dst)})
    always = {'output', 'size', 'sha256', 'engine', 'hardware',
              'wall_seconds', 'cpu_seconds'}
    assert always <= set(result) <= _keys(records.Result)
