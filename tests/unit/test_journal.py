# SPDX-License-Identifier: Apache-2.0
import os
import sqlite3
import stat
import threading

import pytest

from accel_daemon.manager import journal as journal_mod
from accel_daemon.manager.journal import Journal


def _task(task_id, state='succeeded', created=1.0, finished=2.0, **extra):
    task = {'id': task_id, 'kind': 'copy', 'state': state,
            'params': {'src': '/a', 'dst': '/b'},
            'progress': {'done': 5, 'total': 10}, 'result': None,
            'error': None, 'created_at': created, 'started_at': None,
            'finished_at': finished, 'request_id': None,
            'global_request_id': None, 'caller': None}
    task.update(extra)
    return task


@pytest.fixture
def journal(tmp_path):
    j = Journal(str(tmp_path / 'state' / 'tasks.sqlite'))
    yield j
    j.close()


def test_round_trip_keeps_plain_types(journal):
    task = _task('a', result={'output': '/b', 'size': 3, 'hardware': False},
                 error=None)
    journal.save(task)
    assert journal.get('a') == task
    assert journal.get('missing') is None


def test_file_and_wal_are_private(tmp_path, journal):
    journal.save(_task('a'))
    state = tmp_path / 'state'
    for name in os.listdir(state):
        mode = stat.S_IMODE(os.stat(state / name).st_mode)
        assert mode == 0o600, (name, oct(mode))


def test_existing_file_mode_is_tightened(tmp_path):
    path = tmp_path / 'tasks.sqlite'
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    Journal(str(path)).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_wal_mode(journal):
    with journal._lock:
        mode = journal._conn().execute('PRAGMA journal_mode').fetchone()[0]
    assert mode == 'wal'


def test_list_newest_first_and_by_state(journal):
    journal.save(_task('old', created=1.0))
    journal.save(_task('new', created=3.0))
    journal.save(_task('run', state='running', created=2.0, finished=None))
    assert [t['id'] for t in journal.list()] == ['new', 'run', 'old']
    assert [t['id'] for t in journal.list('running')] == ['run']
    assert [t['id'] for t in journal.list(limit=1)] == ['new']


def test_unfinished_oldest_first(journal):
    journal.save(_task('q', state='queued', created=5.0, finished=None))
    journal.save(_task('r', state='running', created=4.0, finished=None))
    journal.save(_task('done', created=1.0))
    assert [t['id'] for t in journal.unfinished()] == ['r', 'q']


def test_survives_reopen(tmp_path):
    path = str(tmp_path / 'tasks.sqlite')
    j = Journal(path)
    j.save(_task('a'))
    j.close()
    j2 = Journal(path)
    assert j2.get('a')['state'] == 'succeeded'
    j2.close()


def test_prune_by_age_and_count_never_active(journal):
    for n in range(5):
        journal.save(_task('f%d' % n, finished=100.0 + n))
    journal.save(_task('ancient', finished=1.0))
    journal.save(_task('q', state='queued', created=0.0, finished=None))
    journal.save(_task('r', state='running', created=0.0, finished=None))
    assert journal.prune(finished_before=50.0, keep=3) == 3
    left = {t['id'] for t in journal.list(limit=100)}
    assert left == {'f2', 'f3', 'f4', 'q', 'r'}


def test_closed_journal_raises(tmp_path):
    j = Journal(str(tmp_path / 't.sqlite'))
    j.close()
    j.close()  # idempotent
    with pytest.raises(journal_mod.JournalClosed):
        j.save(_task('a'))


def test_concurrent_writers(journal):
    def write(prefix):
        for n in range(50):
            journal.save(_task('%s-%d' % (prefix, n), created=float(n)))

    threads = [threading.Thread(target=write, args=(p,)) for p in 'abcd']
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(journal.list(limit=1000)) == 200


# --- schema versions ---------------------------------------------------------
# The version 1 schema, as accel-daemon wrote it before request ids.
V1_SCHEMA = """
CREATE TABLE tasks (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL,
    params TEXT NOT NULL, progress TEXT, result TEXT, error TEXT,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL);
CREATE INDEX tasks_state ON tasks (state);
CREATE INDEX tasks_finished ON tasks (finished_at);
CREATE INDEX tasks_created ON tasks (created_at);
PRAGMA user_version=1;
"""


def _v1_file(path):
    db = sqlite3.connect(str(path))
    db.executescript(V1_SCHEMA)
    db.execute("INSERT INTO tasks VALUES ('old', 'copy', 'succeeded', "
               "'{\"src\": \"/a\"}', 'null', '{\"size\": 3}', 'null', "
               "1.0, 1.5, 2.0)")
    db.commit()
    db.close()


def _user_version(path):
    db = sqlite3.connect(str(path))
    try:
        return db.execute('PRAGMA user_version').fetchone()[0]
    finally:
        db.close()


def test_version_1_file_is_migrated(tmp_path):
    path = tmp_path / 'tasks.sqlite'
    _v1_file(path)
    j = Journal(str(path))
    try:
        old = j.get('old')
        assert old['request_id'] is None and old['global_request_id'] is None
        assert old['caller'] is None
        assert old['result'] == {'size': 3} and old['state'] == 'succeeded'
        rid = 'req-0123abcd-4567-89ab-cdef-0123456789ab'
        j.save(_task('new', request_id=rid, global_request_id=None))
        assert j.get('new')['request_id'] == rid
    finally:
        j.close()
    assert _user_version(path) == journal_mod._SCHEMA_VERSION == 3
    # Opening it again is a no-op.
    Journal(str(path)).close()
    assert _user_version(path) == 3


def test_file_an_older_daemon_reopened_is_not_migrated_twice(tmp_path):
    # A version 1 daemon opened a version 2 file: it wrote its own
    # version back, the new columns stayed.
    path = tmp_path / 'tasks.sqlite'
    Journal(str(path)).close()
    db = sqlite3.connect(str(path))
    db.execute('PRAGMA user_version=1')
    db.close()
    j = Journal(str(path))
    j.save(_task('a'))
    assert j.get('a')['request_id'] is None
    j.close()
    assert _user_version(path) == 3


def test_tasks_listed_by_caller(journal):
    journal.save(_task('a', caller='cinder', created=1.0))
    journal.save(_task('b', caller='nova', created=2.0))
    journal.save(_task('c', caller='cinder', state='queued', created=3.0,
                       finished=None))
    assert [t['id'] for t in journal.list(caller='cinder')] == ['c', 'a']
    assert [t['id'] for t in journal.list('succeeded', caller='cinder')] \
        == ['a']
    assert [t['id'] for t in journal.list()] == ['c', 'b', 'a']
    assert journal.get('b')['caller'] == 'nova'


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / 'tasks.sqlite'
    Journal(str(path)).close()
    db = sqlite3.connect(str(path))
    db.execute('PRAGMA user_version=99')
    db.close()
    with pytest.raises(journal_mod.JournalVersionError) as err:
        Journal(str(path))
    assert 'schema version 99' in str(err.value)
    assert _user_version(path) == 99
