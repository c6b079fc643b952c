# SPDX-License-Identifier: Apache-2.0
"""``accel-image --local``: its tasks run through the daemon's own
TaskManager over a LocalBackend, with the journal in memory."""

import contextlib
import threading

from accel_daemon.cmd.cli import base
from accel_daemon.cmd.cli import progress
from accel_daemon import exception
from accel_daemon.manager import journal


class StoppableEngine:
    """A compress that runs until it is cancelled."""

    def __init__(self):
        self.stop = threading.Event()
        self.cancelled = []

    def progress(self, task_id):
        return {'done': 1, 'total': 4}

    def cancel(self, task_id):
        self.cancelled.append(task_id)
        self.stop.set()
        return True

    @contextlib.contextmanager
    def task(self, task_id):
        yield None

    def compress(self, progress, src, dst, **kwargs):
        if not self.stop.wait(30):
            return {'output': dst, 'size': 4}
        raise exception.Cancelled()


def test_timeout_cancels_the_task_and_waits_for_its_end():
    engine = StoppableEngine()
    local = base.Local(engine)
    try:
        task_id = local.submit('compress', {'src': '/a', 'dst': '/b'})
        task = local.wait(task_id, progress.Bar('compress', enabled=False),
                          timeout=0.3)
    finally:
        local.close()
    assert engine.cancelled == [task_id]
    assert task['state'] == 'cancelled'
    assert task['error']['type'] == 'Cancelled'


def test_no_worker_until_the_first_task():
    local = base.Local(StoppableEngine())
    assert local._manager is None
    local.close()


def test_memory_journal_writes_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    j = journal.Journal(journal.MEMORY)
    j.save({'id': 't', 'kind': 'compress', 'state': 'queued', 'params': {},
            'progress': None, 'result': None, 'error': None,
            'created_at': 1.0, 'started_at': None, 'finished_at': None,
            'request_id': None, 'global_request_id': None})
    assert j.get('t')['state'] == 'queued'
    j.close()
    assert list(tmp_path.iterdir()) == []
