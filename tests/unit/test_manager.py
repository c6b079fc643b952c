# SPDX-License-Identifier: Apache-2.0
import logging
import threading
import time

import pytest

from accel_daemon import exception
from accel_daemon.manager.backends import Backend
from accel_daemon.manager.journal import Journal
from accel_daemon.manager.tasks import Limits
from accel_daemon.manager.tasks import TaskManager
from tests.fakes.backend import FakeBackend

PARAMS = {'src': '/img/a', 'dst': '/img/b'}


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / 'state' / 'tasks.sqlite')


@pytest.fixture
def make(db):
    managers = []

    def factory(backend=None, workers=2, clock=time.time, **limits):
        backend = backend or FakeBackend()
        mgr = TaskManager(backend, Journal(db), workers=workers,
                          limits=Limits(**limits), clock=clock)
        mgr.start()
        managers.append((mgr, backend))
        return mgr, backend

    yield factory
    for mgr, backend in managers:
        backend.release()
        if mgr._threads:
            mgr.stop(timeout=1.0)


def _submit(mgr, **params):
    return mgr.submit('copy', dict(PARAMS, **params))


def test_fake_backend_is_a_backend():
    assert isinstance(FakeBackend(), Backend)


def test_submit_returns_queued_plain_task(make):
    mgr, backend = make(FakeBackend(hold=True), workers=1)
    task = _submit(mgr)
    assert task['state'] == 'queued'
    assert task['kind'] == 'copy' and task['params'] == PARAMS
    assert task['result'] is None and task['error'] is None
    assert set(task) == {'id', 'kind', 'state', 'params', 'progress',
                         'result', 'error', 'created_at', 'started_at',
                         'finished_at', 'request_id', 'global_request_id',
                         'caller'}
    assert task['caller'] is None
    assert task['request_id'] is None and task['global_request_id'] is None
    backend.release()
    done = mgr.wait(task['id'], 5)
    assert done['state'] == 'succeeded'
    assert done['result']['engine'] == 'fake'
    assert done['progress'] == {'done': 1000, 'total': 1000}
    assert done['started_at'] >= done['created_at']
    assert done['finished_at'] >= done['started_at']


def test_fifo_order_with_one_worker(make):
    mgr, backend = make(FakeBackend(hold=True), workers=1)
    ids = [_submit(mgr, n=n)['id'] for n in range(6)]
    backend.release()
    for task_id in ids:
        assert mgr.wait(task_id, 5)['state'] == 'succeeded'
    assert [c[0] for c in backend.calls] == ids


def test_concurrency_bound_respected(make):
    mgr, backend = make(FakeBackend(duration=0.05), workers=3)
    ids = [_submit(mgr)['id'] for _ in range(10)]
    assert backend.wait_running(3)
    for task_id in ids:
        assert mgr.wait(task_id, 10)['state'] == 'succeeded'
    assert backend.max_running == 3


def test_twenty_concurrent_submits_from_threads(make):
    mgr, backend = make(FakeBackend(duration=0.02), workers=4)
    ids, errors = [], []
    lock = threading.Lock()

    def client(n):
        try:
            for k in range(5):
                tid = _submit(mgr, client=n, k=k)['id']
                with lock:
                    ids.append(tid)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(ids)) == 20
    states = [mgr.wait(i, 10)['state'] for i in ids]
    assert states == ['succeeded'] * 20
    assert backend.max_running <= 4
    assert len(backend.calls) == 20
    assert {t['id'] for t in mgr.list(limit=100)} == set(ids)


def test_cancel_queued_is_immediate(make):
    mgr, backend = make(FakeBackend(hold=True), workers=1)
    first = _submit(mgr)
    assert backend.wait_running(1)
    second = _submit(mgr)
    task = mgr.cancel(second['id'])
    assert task['state'] == 'cancelled'
    assert task['error']['type'] == 'Cancelled'
    assert mgr.cancel(second['id'])['state'] == 'cancelled'  # idempotent
    backend.release()
    assert mgr.wait(first['id'], 5)['state'] == 'succeeded'
    assert [c[0] for c in backend.calls] == [first['id']]


def test_cancel_running(make):
    mgr, backend = make(FakeBackend(hold=True), workers=1)
    task = _submit(mgr)
    assert backend.wait_started(task['id'])
    result = mgr.cancel(task['id'])
    assert result['state'] == 'cancelled'
    assert result['error']['type'] == 'Cancelled'
    assert backend.cancelled == [task['id']]
    # Finished tasks are unchanged by a later cancel.
    assert mgr.cancel(task['id'])['state'] == 'cancelled'


class SlowStartBackend(FakeBackend):
    """Registers the task only after ``gate`` is set: the window in which
    the manager has started a task the backend cannot cancel yet."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def run(self, task_id, kind, params, caller=None):
        self.entered.set()
        self.gate.wait(5)
        return super().run(task_id, kind, params, caller)


def test_cancel_in_start_window_is_retried(make):
    backend = SlowStartBackend(hold=True)
    mgr, _ = make(backend, workers=1)
    task = _submit(mgr)
    assert backend.entered.wait(5)
    threading.Timer(0.1, backend.gate.set).start()
    assert mgr.cancel(task['id'])['state'] == 'cancelled'
    assert backend.cancelled == [task['id']]


def test_wait_timeout_returns_running_task(make):
    mgr, backend = make(FakeBackend(hold=True), workers=1)
    task = _submit(mgr)
    assert backend.wait_started(task['id'])
    start = time.monotonic()
    got = mgr.wait(task['id'], 0.2)
    elapsed = time.monotonic() - start
    assert got['state'] == 'running'
    assert 0.2 <= elapsed < 2


def test_wait_wakes_on_finish(make):
    mgr, backend = make(FakeBackend(hold=True), workers=1)
    task = _submit(mgr)
    threading.Timer(0.1, backend.release).start()
    start = time.monotonic()
    assert mgr.wait(task['id'], 30)['state'] == 'succeeded'
    assert time.monotonic() - start < 5


def test_wait_finished_and_unknown(make):
    mgr, _ = make(workers=1)
    task = _submit(mgr)
    mgr.wait(task['id'], 5)
    assert mgr.wait(task['id'], 0)['state'] == 'succeeded'
    with pytest.raises(exception.TaskNotFound):
        mgr.wait('nope', 0)
    with pytest.raises(exception.TaskNotFound):
        mgr.get('nope')


def test_progress_is_live(make):
    mgr, backend = make(FakeBackend(duration=0.6), workers=1)
    task = _submit(mgr)
    assert backend.wait_started(task['id'])
    time.sleep(0.2)
    prog = mgr.get(task['id'])['progress']
    assert prog['total'] == 1000 and 0 < prog['done'] < 1000
    assert mgr.list('running')[0]['progress']['done'] > 0


def test_backend_error_keeps_type_and_fields(make):
    mgr, _ = make(workers=1)
    task = _submit(mgr, fail='CorruptInput')
    got = mgr.wait(task['id'], 5)
    assert got['state'] == 'failed'
    assert got['error']['type'] == 'CorruptInput'
    assert got['error']['fields'] == {'reason': 'fake failure'}
    assert isinstance(exception.AccelError.from_dict(got['error']),
                      exception.CorruptInput)


def test_bug_becomes_internal_error_and_worker_survives(make, caplog):
    mgr, _ = make(workers=1)
    caplog.set_level(logging.ERROR, 'accel_daemon.manager.tasks')
    bad = _submit(mgr, fail='bug')
    got = mgr.wait(bad['id'], 5)
    assert got['state'] == 'failed'
    assert got['error']['type'] == 'InternalError'
    assert 'fake backend bug' not in got['error']['message']
    assert any(r.exc_info for r in caplog.records)
    assert mgr.wait(_submit(mgr)['id'], 5)['state'] == 'succeeded'


def test_invalid_requests(make):
    mgr, _ = make(workers=1)
    with pytest.raises(exception.InvalidRequest):
        mgr.submit('format_disk', PARAMS)
    with pytest.raises(exception.InvalidRequest):
        mgr.submit('copy', ['not', 'a', 'dict'])
    with pytest.raises(exception.InvalidRequest):
        mgr.submit('copy', {'src': object()})
    with pytest.raises(exception.InvalidRequest):
        mgr.list(state='exploded')
    with pytest.raises(exception.InvalidRequest):
        mgr.list(limit=0)
    assert mgr.list() == []


def test_queue_full(make):
    mgr, backend = make(FakeBackend(hold=True), workers=1, max_queued=1)
    _submit(mgr)
    assert backend.wait_running(1)
    _submit(mgr)
    with pytest.raises(exception.QueueFull):
        _submit(mgr)
    assert len(mgr.list()) == 2


def test_a_callers_tasks_are_its_own(make):
    mgr, backend = make(FakeBackend(hold=True), workers=1)
    mine = mgr.submit('copy', dict(PARAMS), caller='cinder')
    theirs = mgr.submit('copy', dict(PARAMS), caller='nova')
    assert mine['caller'] == 'cinder' and theirs['caller'] == 'nova'
    assert backend.wait_running(1)
    # Another caller's task answers exactly like one that does not exist.
    for call in (lambda t: mgr.get(t, owner='cinder'),
                 lambda t: mgr.wait(t, 0.01, owner='cinder'),
                 lambda t: mgr.cancel(t, owner='cinder')):
        with pytest.raises(exception.TaskNotFound) as seen:
            call(theirs['id'])
        with pytest.raises(exception.TaskNotFound) as missing:
            call('00000000-0000-4000-8000-000000000000')
        assert type(seen.value) is type(missing.value)
    assert [t['id'] for t in mgr.list(owner='cinder')] == [mine['id']]
    assert {t['id'] for t in mgr.list()} == {mine['id'], theirs['id']}
    # Nothing of nova's was touched by cinder's cancel.
    assert mgr.get(theirs['id'])['state'] in ('queued', 'running')
    assert mgr.cancel(mine['id'], owner='cinder')['state'] == 'cancelled'
    backend.release()
    done = mgr.wait(theirs['id'], 5, owner='nova')
    assert done['state'] == 'succeeded'
    # The backend ran each task confined to the caller that made it.
    assert backend.callers[theirs['id']] == 'nova'


def test_per_caller_queue_cap(make):
    mgr, backend = make(FakeBackend(hold=True), workers=1, max_queued=10)
    mgr.submit('copy', dict(PARAMS), caller='nova')
    assert backend.wait_running(1)
    for _ in range(2):
        mgr.submit('copy', dict(PARAMS), caller='cinder',
                   caller_max_queued=2)
    with pytest.raises(exception.QueueFull) as err:
        mgr.submit('copy', dict(PARAMS), caller='cinder',
                   caller_max_queued=2)
    assert err.value.fields['limit'] == 2
    # A full caller does not keep another from queueing.
    mgr.submit('copy', dict(PARAMS), caller='nova', caller_max_queued=2)
    assert len(mgr.list(state='queued')) == 3


def test_restart_recovery(db, make):
    old_backend = FakeBackend(hold=True)
    old = TaskManager(old_backend, Journal(db), workers=1)
    old.start()
    old_backend.release()
    done = old.wait(_submit(old)['id'], 5)
    old_backend.hold = True
    old_backend._gate.clear()
    running = _submit(old, dst='/img/running')
    assert old_backend.wait_started(running['id'])
    queued = _submit(old, dst='/img/queued')
    # Crash: the journal goes away under the old manager, nothing stopped.
    old.journal.close()

    mgr, backend = make(workers=1)
    for tid in (running['id'], queued['id']):
        got = mgr.get(tid)
        assert got['state'] == 'failed'
        assert got['error']['type'] == 'TaskInterrupted'
        assert got['finished_at'] is not None
    assert sorted(backend.discarded) == ['/img/queued', '/img/running']
    assert mgr.get(done['id'])['state'] == 'succeeded'
    assert mgr.get(done['id'])['result'] == done['result']
    old_backend.release()
    old.stop(timeout=1)  # writes now fail (logged); the new file is intact
    assert mgr.get(running['id'])['state'] == 'failed'


def test_pruning_by_age_and_count(db, make):
    now = [1000.0]
    mgr, _ = make(workers=1, retention_hours=1.0, max_tasks_kept=3,
                  clock=lambda: now[0])
    ids = []
    for _ in range(5):
        now[0] += 1
        ids.append(mgr.wait(_submit(mgr)['id'], 5)['id'])
    assert mgr.prune() == 2
    assert {t['id'] for t in mgr.list()} == set(ids[2:])
    now[0] += 2 * 3600
    assert mgr.prune() == 3
    assert mgr.list() == []


def test_stop_refuses_fails_queued_cancels_running(db):
    backend = FakeBackend(hold=True)
    mgr = TaskManager(backend, Journal(db), workers=1)
    mgr.start()
    running = _submit(mgr)
    assert backend.wait_started(running['id'])
    queued = _submit(mgr)
    workers = list(mgr._threads)
    mgr.stop(timeout=0.1)
    with pytest.raises(exception.ServiceUnavailable):
        _submit(mgr)
    assert backend.cancelled == [running['id']]
    journal = Journal(db)
    assert journal.get(running['id'])['state'] == 'cancelled'
    assert journal.get(queued['id'])['error']['type'] == 'TaskInterrupted'
    assert not any(t.is_alive() for t in workers)
    journal.close()


def test_stop_waits_for_running_tasks(db):
    backend = FakeBackend(duration=0.2)
    mgr = TaskManager(backend, Journal(db), workers=2)
    mgr.start()
    task = _submit(mgr)
    assert backend.wait_started(task['id'])
    mgr.stop(timeout=5)
    assert backend.cancelled == []
    journal = Journal(db)
    assert journal.get(task['id'])['state'] == 'succeeded'
    journal.close()


def test_from_conf(tmp_path):
    from oslo_config import cfg

    from accel_daemon import conf as accel_conf

    conf = cfg.ConfigOpts()
    accel_conf.register_opts(conf)
    conf([], project='accel-daemon')
    conf.set_override('state_dir', str(tmp_path / 'st'), 'accel_daemon')
    conf.set_override('workers', 3, 'tasks')
    conf.set_override('max_queued', 7, 'tasks')
    conf.set_override('task_timeout', 90, 'tasks')
    mgr = TaskManager.from_conf(FakeBackend(), conf)
    assert (mgr.workers, mgr.max_queued) == (3, 7)
    assert mgr.task_timeout == 90
    assert mgr.journal.path == str(tmp_path / 'st' / 'tasks.sqlite')
    mgr.journal.close()


# --- task deadlines -------------------------------------------------------
def test_task_past_deadline_fails_with_task_timeout(make):
    mgr, backend = make(FakeBackend(hold=True), workers=1, task_timeout=0.3)
    task = _submit(mgr)
    started = time.monotonic()
    got = mgr.wait(task['id'], 5)
    assert 0.3 <= time.monotonic() - started < 2
    assert got['state'] == 'failed'
    assert got['error']['type'] == 'TaskTimeout'
    assert got['error']['fields'] == {'task_id': task['id'], 'timeout': 0.3,
                                      'abandoned': False}
    assert isinstance(exception.AccelError.from_dict(got['error']),
                      exception.TaskTimeout)
    # It was stopped through the backend, which let go of it.
    assert backend.cancelled == [task['id']]
    assert backend.running == []


def test_deadline_counts_from_start_not_from_queueing(make):
    # Each task takes 0.3 s of a 0.6 s limit; the second waits 0.3 s in
    # the queue first, which must not count.
    mgr, _ = make(FakeBackend(duration=0.3), workers=1, task_timeout=0.6)
    ids = [_submit(mgr)['id'] for _ in range(3)]
    assert [mgr.wait(i, 5)['state'] for i in ids] == ['succeeded'] * 3


def test_cancel_before_deadline_is_still_cancelled(make):
    mgr, backend = make(FakeBackend(hold=True), workers=1, task_timeout=5)
    task = _submit(mgr)
    assert backend.wait_started(task['id'])
    assert mgr.cancel(task['id'])['state'] == 'cancelled'


def test_stuck_task_frees_its_worker(make, caplog):
    caplog.set_level(logging.ERROR, 'accel_daemon.manager.tasks')
    backend = FakeBackend(hold=True, ignore_cancel=True)
    mgr, _ = make(backend, workers=1, task_timeout=0.3, timeout_grace=0.3)
    (first_worker,) = mgr._threads
    stuck = _submit(mgr)
    queued = _submit(mgr, hold=False, ignore_cancel=False)
    assert backend.wait_started(stuck['id'])
    started = time.monotonic()
    got = mgr.wait(stuck['id'], 5)
    assert 0.6 <= time.monotonic() - started < 2.5
    assert got['state'] == 'failed'
    assert got['error']['type'] == 'TaskTimeout'
    assert got['error']['fields']['abandoned'] is True
    assert backend.cancelled == [stuck['id']]
    # The backend never let go, yet the queued task ran on a new worker.
    assert mgr.wait(queued['id'], 5)['state'] == 'succeeded'
    assert backend.running == [stuck['id']]
    assert any(r.levelno == logging.ERROR and 'giving up' in r.getMessage()
               for r in caplog.records)
    assert first_worker.is_alive() and first_worker not in mgr._threads
    # When the stuck call finally returns, its result is ignored and its
    # thread leaves: the pool is back to one worker.
    backend.release()
    first_worker.join(5)
    assert not first_worker.is_alive()
    assert mgr.get(stuck['id'])['state'] == 'failed'
    assert len(mgr._threads) == 1 and mgr._threads[0].is_alive()
    assert mgr.wait(_submit(mgr, hold=False)['id'], 5)['state'] == \
        'succeeded'
    assert backend.max_running == 2


class HangingCancelBackend(FakeBackend):
    """A backend whose cancel() itself never returns (until released)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.unblock = threading.Event()

    def cancel(self, task_id):
        self.cancelled.append(task_id)
        self.unblock.wait(10)
        return False


def test_hanging_cancel_does_not_stall_the_watchdog(make):
    backend = HangingCancelBackend(hold=True)
    mgr, _ = make(backend, workers=2, task_timeout=0.3, timeout_grace=0.3)
    first = _submit(mgr)
    assert backend.wait_started(first['id'])
    time.sleep(0.15)
    second = _submit(mgr)
    for task in (first, second):
        got = mgr.wait(task['id'], 3)
        assert got['state'] == 'failed'
        assert got['error']['type'] == 'TaskTimeout'
    assert sorted(backend.cancelled) == sorted([first['id'], second['id']])
    backend.unblock.set()


def test_no_timeout_means_no_watchdog(make):
    mgr, backend = make(FakeBackend(duration=0.3), workers=1)
    assert mgr.task_timeout == 0 and mgr._watchdog is None
    assert mgr.wait(_submit(mgr)['id'], 5)['state'] == 'succeeded'


def test_helper_death_discards_the_tasks_named_temps(make):
    mgr, backend = make()
    task = mgr.submit('copy', {'src': '/img/a', 'dst': '/img/b',
                               'fail': 'HelperUnavailable'})
    final = mgr.wait(task['id'], 5)
    assert final['state'] == 'failed'
    assert final['error']['type'] == 'HelperUnavailable'
    assert backend.discarded == ['/img/b']
