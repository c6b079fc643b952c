# SPDX-License-Identifier: Apache-2.0
"""TaskManager: a bounded pool of worker threads running backend operations.

Requests become tasks at once (state ``queued``) and run first-in, first-out
on at most ``workers`` threads.  A task is a dict of plain JSON types whose
keys ``accel_daemon.records.Task`` describes (the one description of it).

Every log line about a task is written with its request ids as the
thread's oslo.context (``request_ids.current``): the RPC thread has the
caller's, and the worker, watchdog and shutdown paths set the task's.

Queued and running tasks live in memory (under one lock); every state change
is also written to the ``Journal`` so finished tasks survive a restart, and
tasks that were in flight when the daemon died are reported as failed with
``TaskInterrupted`` by ``recover()`` (called by ``start()``).

With ``task_timeout``, a ``Watchdog`` thread cancels a task that runs longer
(it ends ``failed`` with ``TaskTimeout``, not ``cancelled``); if the backend
has not stopped it ``timeout_grace`` seconds later, the task is recorded as
failed all the same and its worker thread is abandoned and replaced, so a
hung command cannot hold a worker slot past its deadline.

Plain threads, no eventlet: the daemon does not monkey-patch (see
doc/source/architecture.rst) and the work happens in child processes or
the privsep daemon.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from typing import Any, Callable

from accel_daemon import exception
from accel_daemon.manager.backends import Backend
from accel_daemon.manager.journal import Journal
from accel_daemon.manager.watchdog import Watchdog
from accel_daemon import operations
from accel_daemon import records
from accel_daemon import request_ids as req_ids
from accel_daemon.states import ACTIVE_STATES
from accel_daemon.states import STATES
from accel_daemon import wire

LOG = logging.getLogger(__name__)

MAX_LIST = 1000
# A cancel can arrive after a worker took the task but before the backend
# registered it (backend.cancel() then returns False): retry for this long.
_CANCEL_RETRY_SECONDS = 2.0
_CANCEL_RETRY_STEP = 0.02
_PRUNE_INTERVAL = 60.0
# How long a timed-out task may take to stop after its cancel before its
# worker is abandoned: killing a command and reaping it takes milliseconds,
# so anything still running after this will not stop by itself.
TIMEOUT_GRACE = 30.0


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a TaskManager holds its tasks to ([tasks] in the daemon's
    configuration): queued tasks at most (0: no cap), how long and how many
    finished tasks the journal keeps, a running task's time limit (0: none)
    and the grace before a task that ignores its cancel is abandoned."""
    max_queued: int = 0
    retention_hours: float = 168.0
    max_tasks_kept: int = 10000
    task_timeout: float = 0.0
    timeout_grace: float = TIMEOUT_GRACE


class TaskManager:
    def __init__(self, backend: Backend, journal: Journal, workers: int = 4,
                 limits: Limits = Limits(),
                 clock: Callable[[], float] = time.time) -> None:
        if workers < 1:
            raise ValueError('workers must be at least 1')
        self.backend = backend
        self.journal = journal
        self.workers = workers
        self.max_queued = limits.max_queued
        self.retention_seconds = limits.retention_hours * 3600.0
        self.max_tasks_kept = limits.max_tasks_kept
        self._clock = clock
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)     # workers wait here
        self._changed = threading.Condition(self._lock)  # wait() waits here
        self._active: dict[str, records.Task] = {}
        self._queue: collections.deque[str] = collections.deque()
        self._cancel_requested: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._accepting = False
        self._stopping = False
        self._last_prune = 0.0
        self.task_timeout = task_timeout = limits.task_timeout
        self._watchdog = (Watchdog(task_timeout, limits.timeout_grace,
                                   self._expire, self._abandon)
                          if task_timeout > 0 else None)
        self._owners: dict[str, threading.Thread] = {}
        self._abandoned_tasks: set[str] = set()
        self._abandoned_threads: set[threading.Thread] = set()
        self._started_threads = 0

    @classmethod
    def from_conf(cls, backend: Backend, conf: Any) -> TaskManager:
        """Build from oslo.config: journal at [accel_daemon] state_dir."""
        t = conf.tasks
        path = os.path.join(conf.accel_daemon.state_dir, 'tasks.sqlite')
        return cls(backend, Journal(path), workers=t.workers,
                   limits=Limits(max_queued=t.max_queued,
                                 retention_hours=t.task_retention_hours,
                                 max_tasks_kept=t.max_tasks_kept,
                                 task_timeout=t.task_timeout))

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        """Recover tasks of a previous run, prune, start the workers."""
        self.recover()
        self.prune()
        with self._lock:
            self._accepting = True
            self._stopping = False
        if self._watchdog is not None:
            self._watchdog.start()
        for _ in range(self.workers):
            self._start_worker()
        LOG.info('Task manager started with %d workers, task timeout %s',
                 self.workers, self.task_timeout or 'none')

    def _start_worker(self) -> None:
        t = threading.Thread(target=self._worker, daemon=True,
                             name='accel-task-worker-%d'
                             % self._started_threads)
        self._started_threads += 1
        t.start()
        self._threads.append(t)

    def recover(self) -> int:
        """Report queued/running tasks of a previous run as failed
        (TaskInterrupted) and remove their partial outputs."""
        count = 0
        for task in self.journal.unfinished():
            with req_ids.current(task):
                removed = self._discard(task)
                err = exception.TaskInterrupted(task_id=task['id'],
                                                removed=removed)
                self._finish(task, 'failed', error=err.to_dict())
            count += 1
        if count:
            LOG.warning('%d task(s) interrupted by the previous stop', count)
        return count

    def _discard(self, task: records.Task) -> list[str]:
        dst = (task.get('params') or {}).get('dst')
        if not dst:
            return []
        try:
            return list(self.backend.discard_partial(dst,
                                                     task.get('caller')))
        except Exception:
            LOG.exception('Could not remove partial output of %s', dst)
            return []

    def stop(self, timeout: float = 10.0) -> None:
        """Refuse new tasks, fail queued ones (TaskInterrupted), wait up to
        ``timeout`` for running ones, cancel the rest, close the journal.

        A task still running after the grace period stays 'running' in the
        journal and is recovered by the next start."""
        with self._lock:
            self._accepting = False
            queued = [self._mark_locked(
                self._active[i], 'failed', error=exception.TaskInterrupted(
                    task_id=i, removed=[]).to_dict()) for i in self._queue]
            self._queue.clear()
        for task in queued:
            with req_ids.current(task):
                self._commit(task)
        if not self._wait_idle(timeout):
            for task_id in self._running_ids():
                with req_ids.current(self._ids(task_id)):
                    self._cancel_running(task_id)
            self._wait_idle(max(timeout, 5.0))
        with self._lock:
            self._stopping = True
            self._work.notify_all()
        if self._watchdog is not None:
            self._watchdog.stop()
        for t in self._threads:
            t.join(1.0)
        self._threads = []
        self.journal.close()
        LOG.info('Task manager stopped')

    def _wait_idle(self, timeout: float) -> bool:
        with self._lock:
            return self._changed.wait_for(
                lambda: not any(t['state'] in ACTIVE_STATES
                                for t in self._active.values()), timeout)

    def _running_ids(self) -> list[str]:
        with self._lock:
            return [i for i, t in self._active.items()
                    if t['state'] == 'running']

    # -- API ---------------------------------------------------------------
    def submit(self, operation: str, params: dict[str, Any],
               request_ids: dict[str, Any] | None = None,
               caller: str | None = None,
               caller_max_queued: int = 0) -> records.Task:
        """Queue a task; ``request_ids`` are the checked ids of the call
        (``accel_daemon.request_ids.from_ctxt``).  ``caller`` owns it: the
        task runs confined to that caller's directories and only that
        caller sees it (``owner`` of the other calls); no more than
        ``caller_max_queued`` of its tasks wait at once (0: no cap of its
        own, only ``max_queued``)."""
        _validate(operation, params)
        ids = req_ids.from_ctxt(request_ids)
        task: records.Task = {
            'id': str(uuid.uuid4()), 'kind': operation, 'state': 'queued',
            'params': params, 'progress': {'done': 0, 'total': 0},
            'result': None, 'error': None, 'created_at': self._clock(),
            'started_at': None, 'finished_at': None,
            'request_id': ids['request_id'],
            'global_request_id': ids['global_request_id'],
            'caller': caller}
        with self._lock:
            if not self._accepting:
                raise exception.ServiceUnavailable(
                    reason='the task manager is not running')
            if self.max_queued and len(self._queue) >= self.max_queued:
                raise exception.QueueFull(limit=self.max_queued)
            if caller_max_queued and sum(
                    1 for i in self._queue
                    if self._active[i].get('caller') == caller
            ) >= caller_max_queued:
                raise exception.QueueFull(limit=caller_max_queued)
            # Journal before the task can start, so a crash never loses it;
            # under the lock, so the queue order is the journal order.
            self.journal.save(task)
            self._active[task['id']] = task
            self._queue.append(task['id'])
            self._work.notify()
            LOG.info('Task %s queued: %s', task['id'], operation)
            return wire.copy_plain(task)

    def get(self, task_id: str, owner: str | None = None) -> records.Task:
        """The task ``task_id``; with ``owner``, only if that caller made
        it: another caller's task is not found, exactly like a task that
        does not exist."""
        return self._with_live_progress(self._stored(task_id, owner))

    def _stored(self, task_id: str, owner: str | None) -> records.Task:
        """The task as this manager holds it (no live progress: no call to
        the backend), or TaskNotFound (``get``)."""
        with self._lock:
            task = self._active.get(task_id)
            task = wire.copy_plain(task) if task else None
        if task is None:
            task = self.journal.get(task_id)
        if task is None or not _visible(task, owner):
            raise exception.TaskNotFound(task_id=task_id)
        return task

    def list(self, state: str | None = None, limit: int = 100,
             owner: str | None = None) -> list[records.Task]:
        """Tasks, newest first, optionally of one state and (``owner``)
        of one caller."""
        if state is not None and state not in STATES:
            raise exception.InvalidRequest(reason='unknown state %r' % state)
        if not isinstance(limit, int) or not 0 < limit <= MAX_LIST:
            raise exception.InvalidRequest(
                reason='limit must be an integer from 1 to %d' % MAX_LIST)
        rows = self.journal.list(state, limit, caller=owner)
        with self._lock:
            live = {i: wire.copy_plain(t) for i, t in self._active.items()}
        return [self._with_live_progress(live[r['id']])
                if r['id'] in live else r for r in rows]

    def wait(self, task_id: str, timeout: float | None,
             owner: str | None = None) -> records.Task:
        """Return the task once finished or after ``timeout`` seconds,
        whichever is first; a timeout is not an error."""
        self._stored(task_id, owner)
        if timeout is not None and timeout < 0:
            timeout = 0
        with self._lock:
            if task_id in self._active:
                self._changed.wait_for(
                    lambda: self._state_locked(task_id)
                    not in ACTIVE_STATES, timeout)
        return self.get(task_id)

    def cancel(self, task_id: str, owner: str | None = None) -> records.Task:
        """Cancel a queued task at once, or ask the backend to stop a running
        one and wait briefly for it to end.  Finished tasks are unchanged.
        With ``owner``, only that caller's tasks (``get``)."""
        self._stored(task_id, owner)
        final = None
        with self._lock:
            task = self._active.get(task_id)
            state = task['state'] if task else None
            if task is not None and state == 'queued':
                self._queue.remove(task_id)
                # Marked under the same lock, so a second cancel or stop()
                # sees it finished and never touches the queue again.
                final = self._mark_locked(
                    task, 'cancelled', error=exception.Cancelled().to_dict())
            elif state == 'running':
                self._cancel_requested.add(task_id)
        if final is not None:
            self._commit(final)
        elif state == 'running':
            self._cancel_running(task_id)
            self.wait(task_id, _CANCEL_RETRY_SECONDS)
        return self.get(task_id)

    def prune(self) -> int:
        now = self._clock()
        self._last_prune = now
        try:
            n = self.journal.prune(now - self.retention_seconds,
                                   self.max_tasks_kept)
        except Exception:
            LOG.exception('Pruning the task journal failed')
            return 0
        if n:
            LOG.info('Pruned %d finished task(s) from the journal', n)
        return n

    # -- internals ---------------------------------------------------------
    def _with_live_progress(self, task: records.Task) -> records.Task:
        if task['state'] == 'running':
            try:
                live = self.backend.progress(task['id'])
            except Exception:
                LOG.exception('Progress of task %s unavailable', task['id'])
                live = None
            if live:
                task['progress'] = {'done': int(live['done']),
                                    'total': int(live['total'])}
                with self._lock:
                    if task['id'] in self._active:
                        self._active[task['id']]['progress'] = (
                            task['progress'].copy())
        return task

    def _cancel_running(self, task_id: str) -> None:
        """backend.cancel(), retried while the task is running but not yet
        registered by the backend (the race described at the top)."""
        deadline = time.monotonic() + _CANCEL_RETRY_SECONDS
        while not self._try_cancel(task_id):
            with self._lock:
                if self._state_locked(task_id) != 'running':
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    LOG.warning('Task %s did not accept the cancel', task_id)
                    return
                self._changed.wait(min(left, _CANCEL_RETRY_STEP))

    def _state_locked(self, task_id: str) -> str | None:
        """The state of an active task; None once it has left memory
        (caller holds the lock)."""
        task = self._active.get(task_id)
        return task['state'] if task is not None else None

    def _try_cancel(self, task_id: str) -> bool:
        try:
            return bool(self.backend.cancel(task_id))
        except Exception:
            LOG.exception('Cancel of task %s failed', task_id)
            return False

    def _worker(self) -> None:
        while True:
            task = self._next()
            if task is None:
                return
            self._run(task)

    def _next(self) -> records.Task | None:
        me = threading.current_thread()
        with self._lock:
            if me in self._abandoned_threads:
                # Replaced while stuck: a new worker holds this slot now.
                self._abandoned_threads.discard(me)
                return None
            self._work.wait_for(lambda: self._queue or self._stopping)
            if not self._queue:
                return None
            task = self._active[self._queue.popleft()]
            task['state'] = 'running'
            task['started_at'] = self._clock()
            snapshot = wire.copy_plain(task)
            self._owners[task['id']] = me
            if self._watchdog is not None:
                self._watchdog.track(task['id'])
            self._changed.notify_all()
        self._save(snapshot)
        return snapshot

    def _ids(self, task_id: str) -> req_ids.RequestIds | None:
        """The request ids of an active task (None once it is gone)."""
        with self._lock:
            task = self._active.get(task_id)
            return {k: task.get(k) for k in req_ids.KEYS} if task else None

    def _run(self, task: records.Task) -> None:
        # The worker's oslo.context for the whole run: every line logged
        # here, down to the backend's, carries the task's request ids.
        with req_ids.current(task):
            self._run_task(task)

    def _run_task(self, task: records.Task) -> None:
        task_id = task['id']
        LOG.info('Task %s started: %s', task_id, task['kind'])
        try:
            result = self.backend.run(task_id, task['kind'], task['params'],
                                      task.get('caller'))
        except exception.AccelError as e:
            self._end_with_error(task, e)
        except Exception as e:
            # A bug, not a refusal: keep the worker alive, log the traceback
            # and give the caller a typed error without internals.
            LOG.exception('Task %s failed unexpectedly', task_id)
            err = exception.InternalError(reason=type(e).__name__)
            self._finish(task, 'failed', error=err.to_dict())
        else:
            self._finish(task, 'succeeded', result=wire.to_plain(dict(result)))

    def _end_with_error(self, task: records.Task,
                        err: exception.AccelError) -> None:
        if isinstance(err, exception.HelperUnavailable):
            # The helper died mid-task: nothing of its run can clean up
            # after it.  Where outputs have a temp name (no O_TMPFILE),
            # remove it now, through the helper started again.
            removed = self._discard(task)
            if removed:
                err.fields['removed'] = removed
        with self._lock:
            requested = task['id'] in self._cancel_requested
        if self._watchdog is not None and self._watchdog.expired(task['id']):
            # Whatever the backend raised, the cancel we sent caused it.
            LOG.warning('Task %s timed out (%s)', task['id'], err)
            self._finish(task, 'failed', error=self._timeout_error(task))
        elif isinstance(err, exception.Cancelled) or requested:
            if not isinstance(err, exception.Cancelled):
                LOG.info('Task %s ended with %s after a cancel', task['id'],
                         err.to_dict())
            self._finish(task, 'cancelled',
                         error=exception.Cancelled().to_dict())
        else:
            LOG.info('Task %s failed: %s', task['id'], err)
            self._finish(task, 'failed', error=err.to_dict())

    def _finish(self, task: records.Task, state: str,
                result: records.Result | None = None,
                error: records.TaskError | None = None) -> None:
        with self._lock:
            if task['id'] in self._abandoned_tasks:
                self._abandoned_tasks.discard(task['id'])
                LOG.warning('Abandoned task %s came back %s; it stays failed '
                            '(TaskTimeout)', task['id'], state)
                return
            final = self._mark_locked(task, state, result, error)
        self._commit(final)

    # -- deadlines (called by the watchdog thread) -------------------------
    def _timeout_error(self, task: records.Task,
                       abandoned: bool = False) -> records.TaskError:
        return exception.TaskTimeout(task_id=task['id'],
                                     timeout=self.task_timeout,
                                     abandoned=abandoned).to_dict()

    def _expire(self, task_id: str) -> None:
        ids = self._ids(task_id)
        with req_ids.current(ids):
            LOG.warning('Task %s passed its time limit of %s s; cancelling '
                        'it', task_id, self.task_timeout)
        # Not on the watchdog's own thread: a backend whose cancel() hangs
        # (a wedged privsep channel) must not stop it from enforcing the
        # other deadlines, or from abandoning this very task.  Expiries are
        # rare, and each of these threads ends within the cancel retry.
        threading.Thread(target=self._cancel_with_ids, args=(task_id, ids),
                         daemon=True,
                         name='accel-task-timeout-%s' % task_id[:8]).start()

    def _cancel_with_ids(self, task_id: str,
                         ids: req_ids.RequestIds | None) -> None:
        with req_ids.current(ids):
            self._cancel_running(task_id)

    def _abandon(self, task_id: str) -> None:
        """The backend did not stop a timed-out task: record it as failed,
        leave its thread to its fate and start a worker in its place."""
        with req_ids.current(self._ids(task_id)):
            self._abandon_task(task_id)

    def _abandon_task(self, task_id: str) -> None:
        with self._lock:
            task = self._active.get(task_id)
            if task is None or task['state'] != 'running':
                return
            stuck = self._owners.get(task_id)
            final = self._mark_locked(task, 'failed',
                                      error=self._timeout_error(task, True))
            self._abandoned_tasks.add(task_id)
            if stuck is not None and stuck in self._threads:
                self._threads.remove(stuck)
                self._abandoned_threads.add(stuck)
                if not self._stopping:
                    self._start_worker()
        LOG.error('Task %s is still running %s s after it was cancelled for '
                  'passing its time limit; giving up on it. Its worker '
                  'thread %s is abandoned and replaced, and whatever it is '
                  'blocked in (a process in uninterruptible I/O?) may still '
                  'hold resources: investigate this host.', task_id,
                  self._watchdog.grace if self._watchdog else '?',
                  stuck.name if stuck else '?')
        self._commit(final)

    def _mark_locked(self, task: records.Task, state: str,
                     result: records.Result | None = None,
                     error: records.TaskError | None = None
                     ) -> records.Task:
        """Set the final state in memory (caller holds the lock)."""
        final = wire.copy_plain(self._active.get(task['id'], task))
        final.update({'state': state, 'result': result, 'error': error,
                      'finished_at': self._clock()})
        if state == 'succeeded':
            final['progress'] = _final_progress(final)
        if task['id'] in self._active:
            self._active[task['id']] = final
        return wire.copy_plain(final)

    def _commit(self, final: records.Task) -> None:
        """Journal a finished task, then forget it and wake waiters."""
        task_id = final['id']
        saved = self._save(final)
        with self._lock:
            if saved:
                # Else keep answering from memory: the journal cannot.
                self._active.pop(task_id, None)
            self._cancel_requested.discard(task_id)
            self._owners.pop(task_id, None)
            if self._watchdog is not None:
                self._watchdog.forget(task_id)
            self._changed.notify_all()
            due = self._clock() - self._last_prune > _PRUNE_INTERVAL
        LOG.info('Task %s %s', task_id, final['state'])
        if due:
            self.prune()

    def _save(self, task: records.Task) -> bool:
        try:
            self.journal.save(task)
            return True
        except Exception:
            LOG.exception('Could not journal task %s', task['id'])
            return False


def _validate(operation: Any, params: Any) -> None:
    if operation not in operations.TASK_OPERATIONS:
        raise exception.InvalidRequest(
            reason='unknown operation %r' % (operation,))
    if not isinstance(params, dict):
        raise exception.InvalidRequest(reason='params must be a dict')
    try:
        json.dumps(params)
    except (TypeError, ValueError):
        raise exception.InvalidRequest(reason='params must be plain JSON')


def _visible(task: records.Task, owner: str | None) -> bool:
    return owner is None or task.get('caller') == owner


def _final_progress(task: records.Task) -> records.TaskProgress:
    prog: records.TaskProgress = {'done': 0, 'total': 0}
    prog.update(task.get('progress') or {})
    size = (task.get('result') or {}).get('size')
    if prog.get('total', 0) <= 0 and isinstance(size, int):
        prog['total'] = size
    prog['done'] = prog['total']
    return prog
