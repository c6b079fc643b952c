# SPDX-License-Identifier: Apache-2.0
"""The task journal: one sqlite file in the state directory.

The journal is what lets a restart of the daemon "never lose a task
silently": every task is written when it is queued, when it starts and when
it ends, so finished tasks stay queryable and in-flight ones can be found and
reported after a crash (``TaskManager.recover``).

Threads: one connection shared by the manager's workers and the RPC threads,
serialised by a lock (``check_same_thread=False``).  Writes are tiny and
rare compared with the image work, so one lock costs nothing measurable and
avoids sqlite's "database is locked" retries between our own connections.
WAL keeps readers from blocking the writer if an operator opens the file.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from typing import cast

from accel_daemon import records
from accel_daemon.states import ACTIVE_STATES
from accel_daemon.states import FINAL_STATES

LOG = logging.getLogger(__name__)

# Rows as tasks.  A name of its own because, inside Journal, ``list``
# is the method of that name, not the builtin.
TaskRows = list[records.Task]

# Schema versions (``PRAGMA user_version``):
#   1 - the tasks table.
#   2 - request_id and global_request_id columns (NULL for older rows).
#   3 - caller column: the name of the caller that made the task (NULL
#       for older rows and for a daemon serving one caller).
# A file of an older version is migrated when opened (``_migrate``); one of
# a newer version is refused, since this code cannot know what it holds.
_SCHEMA_VERSION = 3
_JSON_COLUMNS = ('params', 'progress', 'result', 'error')
_COLUMNS = ('id', 'kind', 'state', 'params', 'progress', 'result', 'error',
            'created_at', 'started_at', 'finished_at', 'request_id',
            'global_request_id', 'caller')
# Columns added after version 1, with their type, oldest first.
_ADDED_COLUMNS = (('request_id', 'TEXT'), ('global_request_id', 'TEXT'),
                  ('caller', 'TEXT'))
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    params TEXT NOT NULL,
    progress TEXT,
    result TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    request_id TEXT,
    global_request_id TEXT,
    caller TEXT
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at);
"""


class JournalClosed(RuntimeError):
    """The journal was used after ``close()`` (a worker outlived stop())."""


class JournalVersionError(RuntimeError):
    """The file was written by a newer accel-daemon (a newer schema)."""


# The path of a journal kept in memory (sqlite's name for it): the tasks of
# a process that runs them itself (``accel-image --local``) and ends with
# them, so nothing is written to disk.
MEMORY = ':memory:'


class Journal:
    """Tasks stored by id; ``accel_daemon.records.Task`` is their shape.
    ``path`` is the sqlite file, or ``MEMORY``."""

    def __init__(self, path: str) -> None:
        self.path = path
        if path != MEMORY:
            _create_private(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None)
        try:
            with self._lock:
                self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        db = self._conn()
        db.execute('PRAGMA journal_mode=WAL')
        # NORMAL in WAL mode may lose the last commits on power loss, never
        # corrupt the file; a lost "succeeded" row shows as TaskInterrupted.
        db.execute('PRAGMA synchronous=NORMAL')
        version = db.execute('PRAGMA user_version').fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise JournalVersionError(
                'task journal %s has schema version %d; this accel-daemon '
                'knows versions up to %d' % (self.path, version,
                                             _SCHEMA_VERSION))
        db.executescript(_SCHEMA)
        self._migrate(db, version)
        db.execute('PRAGMA user_version=%d' % _SCHEMA_VERSION)

    def _migrate(self, db: sqlite3.Connection, version: int) -> None:
        """Bring a table of an older version up to date.

        Columns are added when missing, whatever the version says: a file
        that an older daemon opened after a newer one (it writes its own
        version back) already has them."""
        have = {row[1] for row in db.execute('PRAGMA table_info(tasks)')}
        missing = [(n, t) for n, t in _ADDED_COLUMNS if n not in have]
        if not missing:
            return
        db.execute('BEGIN IMMEDIATE')
        try:
            for name, kind in missing:
                # Only module constants are formatted in.
                db.execute('ALTER TABLE tasks ADD COLUMN %s %s'
                           % (name, kind))
            db.execute('COMMIT')
        except BaseException:
            db.execute('ROLLBACK')
            raise
        LOG.info('Task journal %s migrated from schema version %d to %d '
                 '(added %s)', self.path, version, _SCHEMA_VERSION,
                 ', '.join(n for n, _ in missing))

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalClosed(self.path)
        return self._db

    # -- writes ------------------------------------------------------------
    def save(self, task: records.Task) -> None:
        """Insert or replace one task."""
        row = _to_row(task)
        # Only module constants are formatted in; values are bound.
        sql = 'INSERT OR REPLACE INTO tasks (%s) VALUES (%s)' % (  # nosec B608
            ', '.join(_COLUMNS), ', '.join('?' * len(_COLUMNS)))
        with self._lock:
            self._conn().execute(sql, row)

    def prune(self, finished_before: float, keep: int) -> int:
        """Delete finished tasks that ended before ``finished_before``, then
        the oldest finished ones beyond the newest ``keep``.  Returns the
        number of rows deleted; queued and running tasks are never pruned."""
        marks = ', '.join('?' * len(FINAL_STATES))
        with self._lock:
            db = self._conn()
            # ``marks`` is only '?' placeholders; values are bound.
            old = db.execute(
                'DELETE FROM tasks WHERE state IN (%s) AND finished_at < ?'
                % marks,  # nosec B608
                (*FINAL_STATES, finished_before)).rowcount
            extra = db.execute(
                'DELETE FROM tasks WHERE id IN (SELECT id FROM tasks '
                'WHERE state IN (%s) '
                'ORDER BY finished_at DESC, created_at DESC '
                'LIMIT -1 OFFSET ?)' % marks,  # nosec B608
                (*FINAL_STATES, max(0, keep))).rowcount
        return old + extra

    # -- reads -------------------------------------------------------------
    def get(self, task_id: str) -> records.Task | None:
        rows = self._select('WHERE id = ?', (task_id,))
        return rows[0] if rows else None

    def list(self, state: str | None = None, limit: int = 100,
             caller: str | None = None) -> TaskRows:
        """Newest first; of one state, of one caller's, when given."""
        terms = [(c, v) for c, v in (('state', state), ('caller', caller))
                 if v is not None]
        where = ('WHERE ' + ' AND '.join('%s = ?' % c for c, _ in terms)
                 if terms else '')
        return self._select(where + ' ORDER BY created_at DESC LIMIT ?',
                            (*(v for _, v in terms), limit))

    def unfinished(self) -> TaskRows:
        """Queued and running tasks, oldest first."""
        return self._select('WHERE state IN (?, ?) ORDER BY created_at',
                            ACTIVE_STATES)

    def _select(self, tail: str, args: tuple) -> TaskRows:
        # ``tail`` is one of this module's literal clauses; values are bound.
        sql = 'SELECT %s FROM tasks %s' % (  # nosec B608
            ', '.join(_COLUMNS), tail)
        with self._lock:
            rows = self._conn().execute(sql, args).fetchall()
        return [_from_row(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _create_private(path: str) -> None:
    """Create the state directory (0700) and the file (0600) ourselves:
    task params name volumes and images, which other local users should not
    read.  sqlite gives the -wal and -shm files the same mode as the main
    file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700,
                exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _to_row(task: records.Task) -> tuple:
    return tuple(json.dumps(task.get(c)) if c in _JSON_COLUMNS
                 else task.get(c) for c in _COLUMNS)


def _from_row(row: tuple) -> records.Task:
    task = dict(zip(_COLUMNS, row))
    for col in _JSON_COLUMNS:
        task[col] = json.loads(task[col]) if task[col] is not None else None
    # Every row was written by save() from a Task, column by column.
    return cast(records.Task, task)
