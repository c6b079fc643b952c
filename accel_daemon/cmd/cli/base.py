# SPDX-License-Identifier: Apache-2.0
"""What every accel-image command shares: the backend it talks to (the
daemon over RPC, or the engine in-process with ``--local``), the output
columns (ISO-8601 times, sizes, nested values) and the global output
options."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from typing import Any, Callable, Iterable, Mapping

from cliff import columns as cliff_columns
from cliff import display
from cliff import lister
from cliff import show

from accel_daemon.cmd.cli import progress
from accel_daemon.cmd.cli import usage
from accel_daemon import exception
from accel_daemon import operations
from accel_daemon import records
from accel_daemon.states import ACTIVE_STATES


# --- values ---------------------------------------------------------------
def iso(t: float | None) -> str | None:
    """An epoch time as ISO-8601 in UTC, to the second: 2026-12-01T18:30:05Z
    (None stays None)."""
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(
        float(t), datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def size(n: float | None) -> str:
    if n is None:
        return ''
    value = float(n)
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if abs(value) < 1024 or unit == 'TiB':
            break
        value /= 1024.0
    return '%d B' % value if unit == 'B' else '%.1f %s' % (value, unit)


def percent(prog: records.TaskProgress | None) -> str:
    if not prog or not prog.get('total'):
        return ''
    return '%d%%' % min(100, 100 * prog['done'] // prog['total'])


class TimeColumn(cliff_columns.FormattableColumn):
    """An epoch time, shown (and given to JSON) as ISO-8601 UTC."""

    def human_readable(self) -> str:
        return iso(self._value) or ''

    def machine_readable(self) -> Any:
        return iso(self._value)


class ProgressColumn(cliff_columns.FormattableColumn):
    """A ``records.TaskProgress``: a percentage for people, the dict for
    JSON."""

    def human_readable(self) -> str:
        prog = self._value
        pct = percent(prog)
        if not pct:
            return ''
        return '%s (%s of %s)' % (pct, size(prog['done']),
                                  size(prog['total']))


class ShortProgressColumn(ProgressColumn):
    def human_readable(self) -> str:
        return percent(self._value)


class ErrorColumn(cliff_columns.FormattableColumn):
    """A task's ``records.TaskError``: ``Type: message`` for people."""

    def human_readable(self) -> str:
        if not self._value:
            return ''
        return '%s: %s' % (self._value.get('type', 'AccelError'),
                           self._value.get('message', ''))


class MappingColumn(cliff_columns.FormattableColumn):
    """A dict (or list): one ``key=value`` per line for people."""

    def human_readable(self) -> str:
        value = self._value
        if value is None:
            return ''
        if isinstance(value, dict):
            return '\n'.join('%s=%s' % (k, _plain(v))
                             for k, v in sorted(value.items()))
        if isinstance(value, (list, tuple)):
            return '\n'.join(_plain(v) for v in value)
        return _plain(value)


def _plain(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return '' if value is None else str(value)


def cell(value: Any) -> Any:
    """A plain value, or a MappingColumn for a nested one."""
    if isinstance(value, (dict, list, tuple)):
        return MappingColumn(value)
    return value


# --- tasks as rows ----------------------------------------------------------
TASK_FIELDS = ('id', 'kind', 'state', 'progress', 'source', 'destination',
               'created_at', 'started_at', 'finished_at', 'error', 'result',
               'params', 'request_id')


def task_values(task: records.Task) -> tuple:
    params = task.get('params') or {}
    return (task.get('id'), task.get('kind'), task.get('state'),
            ProgressColumn(task.get('progress')), params.get('src'),
            params.get('dst'), TimeColumn(task.get('created_at')),
            TimeColumn(task.get('started_at')),
            TimeColumn(task.get('finished_at')),
            ErrorColumn(task.get('error')), MappingColumn(task.get('result')),
            MappingColumn(params), task.get('request_id'))


def absolute(params: dict[str, Any],
             fields: dict[str, operations.Field]) -> dict[str, Any]:
    """Path arguments made absolute against the working directory (the
    daemon still checks them against its allowed directories)."""
    out = dict(params)
    for name, field in fields.items():
        value = out.get(name)
        if field.role and isinstance(value, str) and value:
            out[name] = os.path.abspath(value)
    return out


# --- backends ---------------------------------------------------------------
class Remote:
    """The daemon, over oslo.messaging, every call bounded by ``guard``."""

    def __init__(self, client: Any, guard: Callable[[str], Any],
                 step: float, what: str = 'the daemon') -> None:
        self.client = client
        self._guard = guard
        self.step = step
        self.what = what

    def guard(self, what: str | None = None) -> Any:
        return self._guard(what or self.what)

    def capabilities(self) -> records.Capabilities:
        with self.guard():
            return self.client.capabilities()

    def image_info(self, path: str, format: str) -> dict[str, Any]:
        with self.guard():
            return self.client.image_info(path, format)

    def submit(self, operation: str, params: dict[str, Any]) -> Any:
        with self.guard():
            return getattr(self.client, operation)(**params)

    def task(self, task_id: str) -> Any:
        with self.guard():
            return self.client.task(task_id)

    def tasks(self, state: str | None,
              limit: int) -> list[records.Task]:
        with self.guard():
            return [h.task for h in self.client.tasks(state=state,
                                                      limit=limit)]

    def wait(self, handle: Any, bar: progress.Bar,
             timeout: float | None) -> records.Task:
        """Wait for the task of ``handle``; the task as it ended.  Raises
        ``AccelError`` after ``timeout`` (the daemon's task goes on)."""
        deadline = time.monotonic() + timeout if timeout else None
        ok = False
        try:
            while not handle.done:
                bar.update(handle.progress)
                with self.guard():
                    try:
                        handle.wait(timeout=self.step, cancel=False)
                    except exception.TaskWaitTimeout:
                        pass
                    except exception.AccelError:
                        if not handle.done:
                            raise
                if (not handle.done and deadline
                        and time.monotonic() > deadline):
                    raise exception.TaskWaitTimeout(
                        'Task %s did not finish within %g s; it goes on in '
                        'the daemon (%s)' % (handle.id, timeout or 0,
                                             handle.state),
                        task_id=handle.id, timeout=timeout)
            bar.update(handle.progress)
            ok = handle.state == 'succeeded'
        except KeyboardInterrupt:
            bar.close(ok=False)
            with self.guard():
                handle.cancel()
            raise
        finally:
            bar.close(ok=ok)
        return handle.task

    def close(self) -> None:
        self.client.close()


class Local:
    """The engine in this process (``--local``): the daemon's own task
    manager over a ``LocalBackend``, with its journal in memory, so a task
    runs, reports progress, times out and is cancelled as in the daemon;
    the tasks end with this process (``tasks`` commands need the daemon).
    """

    # How often the progress bar is updated, in seconds.
    STEP = 0.2

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._manager: Any = None

    def _tasks(self) -> Any:
        """The task manager, started on the first task: the other commands
        need no worker.  Imported here: the manager brings the engine and
        oslo.privsep, which the quick commands must not load
        (tests/unit/test_cli_imports.py)."""
        if self._manager is None:
            from accel_daemon.manager import backends
            from accel_daemon.manager import journal
            from accel_daemon.manager import tasks
            self._manager = tasks.TaskManager(
                backends.LocalBackend(self.engine),
                journal.Journal(journal.MEMORY), workers=1)
            self._manager.start()
        return self._manager

    def capabilities(self) -> records.Capabilities:
        return self.engine.capabilities()

    def image_info(self, path: str, format: str) -> dict[str, Any]:
        return self.engine.image_info(path, format)

    def submit(self, operation: str, params: dict[str, Any]) -> str:
        """The new task's id."""
        return self._tasks().submit(operation, params)['id']

    def _no_tasks(self) -> exception.AccelError:
        return exception.InvalidRequest(
            reason='tasks live in the daemon; drop --local')

    def task(self, task_id: str) -> Any:
        raise self._no_tasks()

    def tasks(self, state: str | None,
              limit: int) -> list[records.Task]:
        raise self._no_tasks()

    def wait(self, task_id: str, bar: progress.Bar,
             timeout: float | None) -> records.Task:
        """Wait for the task, showing its progress; cancel it after
        ``timeout`` (or on Ctrl-C) and wait for it to end."""
        manager = self._tasks()
        deadline = time.monotonic() + timeout if timeout else None
        ok = False
        try:
            task = manager.wait(task_id, self.STEP)
            while task['state'] in ACTIVE_STATES:
                bar.update(task['progress'])
                if deadline and time.monotonic() > deadline:
                    task = self._cancel(task_id)
                else:
                    task = manager.wait(task_id, self.STEP)
            ok = task['state'] == 'succeeded'
        except KeyboardInterrupt:
            self._cancel(task_id)
            raise
        finally:
            bar.close(ok=ok)
        return task

    def _cancel(self, task_id: str) -> records.Task:
        self._manager.cancel(task_id)
        return self._manager.wait(task_id, None)

    def close(self) -> None:
        if self._manager is not None:
            self._manager.stop()
            self._manager = None


# --- commands ---------------------------------------------------------------
class _GlobalOutput(display.DisplayCommandBase):
    """What every command with output shares: ``-f``/``--json``/``-c``
    given anywhere on the line (the application's parser takes them) apply
    to the command's output, one-line argument errors, and the
    application's backend."""

    app: Any

    def backend(self) -> Any:
        return self.app.backend()

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        return _parser(super().get_parser(prog_name))

    def run(self, parsed_args: argparse.Namespace) -> int:
        self._apply_global_output(parsed_args)
        return super().run(parsed_args)

    def _apply_global_output(self, parsed_args: argparse.Namespace) -> None:
        options = getattr(self.app, 'options', None)
        if options is None:
            return
        if getattr(options, 'json', False):
            parsed_args.formatter = 'json'
        if getattr(options, 'formatter', None):
            parsed_args.formatter = options.formatter
        if getattr(options, 'columns', None):
            parsed_args.columns = (list(parsed_args.columns or [])
                                   + list(options.columns))
        names = getattr(self, '_formatter_plugins', None)
        if names is not None and parsed_args.formatter not in names.names():
            raise exception.InvalidRequest(
                reason='output format %r: choose from %s'
                % (parsed_args.formatter, ', '.join(sorted(names.names()))))


def _parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    usage.one_line_errors(parser)
    return parser


class Lister(_GlobalOutput, lister.Lister):
    pass


class ShowOne(_GlobalOutput, show.ShowOne):
    pass


def rows(items: Iterable[Mapping[str, Any]],
         keys: tuple[str, ...]) -> list[tuple]:
    return [tuple(cell(item.get(k)) for k in keys) for item in items]
