# SPDX-License-Identifier: Apache-2.0
"""The task commands (compress, decompress, convert, copy, upload,
download: their arguments come from ``accel_daemon.operations``) and
tasks list, show, wait and cancel."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from accel_daemon.cmd.cli import base
from accel_daemon.cmd.cli import progress
from accel_daemon import exception
from accel_daemon import operations
from accel_daemon import records
from accel_daemon.states import STATES

# Operation fields whose flag would collide with the output options of
# every command (cliff's -f/--format): renamed on the command line only.
FLAG_NAMES = {'format': 'compression'}


def _outcome(task: records.Task) -> tuple[tuple, tuple]:
    """The task's fields for output, once it has succeeded (or was left
    to run); a failed or cancelled task raises its typed error."""
    if task['state'] in ('failed', 'cancelled'):
        if task['state'] == 'cancelled' and not task.get('error'):
            raise exception.Cancelled()
        err = exception.AccelError.from_dict(
            task.get('error') or {'message': 'task %s' % task['state']})
        raise err
    return base.TASK_FIELDS, base.task_values(task)


class TaskOperation(base.ShowOne):
    """Base of the six operations: submit, wait with a progress bar, show
    the finished task."""

    operation = ''

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        op = operations.OPERATIONS[self.operation]
        for name, field in op.fields.items():
            if field.role:
                parser.add_argument(name, help=field.help + ' (relative '
                                    'to the working directory, or '
                                    'absolute)')
                continue
            flag = '--' + FLAG_NAMES.get(name, name).replace('_', '-')
            if field.check is operations.boolean:
                parser.add_argument(flag, dest=name, default=None,
                                    action=argparse.BooleanOptionalAction,
                                    help=field.help)
            elif field.check is operations.container:
                parser.add_argument(flag, dest=name,
                                    choices=operations.CONTAINERS,
                                    required=field.required,
                                    help=field.help)
            else:
                kind = str if field.check in (operations.short_name,
                                              operations.path) else int
                parser.add_argument(flag, dest=name, type=kind,
                                    required=field.required,
                                    help=field.help)
        return parser

    def params(self, parsed_args: argparse.Namespace) -> dict[str, Any]:
        """The operation's arguments given on the command line, paths
        made absolute."""
        op = operations.OPERATIONS[self.operation]
        params = {n: getattr(parsed_args, n) for n in op.fields
                  if getattr(parsed_args, n, None) is not None}
        return base.absolute(params, dict(op.fields))

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        params = self.params(parsed_args)
        backend = self.backend()
        handle = backend.submit(self.operation, params)
        if self.app.options.no_wait and hasattr(handle, 'done'):
            return _outcome(handle.task)
        bar = progress.Bar(self.operation, enabled=self.app.progress_wanted())
        task = backend.wait(handle, bar, self.app.options.wait_timeout)
        return _outcome(task)


class Compress(TaskOperation):
    """Compress an image to gzip (or zstd) with the fastest driver."""
    operation = 'compress'


class Decompress(TaskOperation):
    """Decompress a gzip (or zstd) file, capped, with a sparse output."""
    operation = 'decompress'


class Convert(TaskOperation):
    """Convert an image with qemu-img, after inspecting it."""
    operation = 'convert'


class Copy(TaskOperation):
    """Copy an image file, keeping its holes."""
    operation = 'copy'


class Upload(TaskOperation):
    """Convert, then compress (cinder's upload)."""
    operation = 'upload'


class Download(TaskOperation):
    """Decompress, inspect, convert (cinder's download)."""
    operation = 'download'


class StreamIn(TaskOperation):
    """Write the image read from standard input to DST, streamed to the
    daemon (inspected before anything is written, published at the end
    of the input); needs the daemon (not --local)."""
    operation = 'stream_in'

    CHUNK = 4 * 1024 * 1024

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        params = self.params(parsed_args)
        backend = self.backend()
        if not isinstance(backend, base.Remote):
            raise exception.InvalidRequest(
                reason='stream-in needs the daemon (not --local)')
        with backend.guard():
            writer = backend.client.stream_in(**params)
        stdin = sys.stdin.buffer
        try:
            while chunk := stdin.read(self.CHUNK):
                writer.write(chunk)
        except BaseException as e:
            writer.abort('%s reading standard input' % type(e).__name__)
            raise
        writer.close()
        return _outcome(writer.task.status())


class StreamOut(TaskOperation):
    """Read an image from the daemon, streamed (inspected, converted if
    needed and compressed on all cores as it is sent) into OUTPUT, a new
    file, or - for standard output (the task is then shown on standard
    error); needs the daemon (not --local)."""
    operation = 'stream_out'

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument('output', metavar='OUTPUT',
                            help='new file to write, or - for standard '
                                 'output')
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        params = self.params(parsed_args)
        backend = self.backend()
        if not isinstance(backend, base.Remote):
            raise exception.InvalidRequest(
                reason='stream-out needs the daemon (not --local)')
        if parsed_args.output == '-':
            out = sys.stdout.buffer
            self.app.stdout = sys.stderr
        else:
            out = open(parsed_args.output, 'xb')
        try:
            with backend.guard():
                reader = backend.client.stream_out(**params)
            with reader:
                for chunk in reader:
                    out.write(chunk)
        except BaseException:
            if out is not sys.stdout.buffer:
                out.close()
                os.unlink(parsed_args.output)
            raise
        out.flush()
        if out is not sys.stdout.buffer:
            out.close()
        return _outcome(reader.task.status())


class TasksList(base.Lister):
    """List the daemon's tasks, newest first."""

    COLUMNS = ('ID', 'Kind', 'State', 'Progress', 'Created', 'Finished',
               'Source', 'Destination', 'Error')

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument('--state', choices=STATES,
                            help='only the tasks in this state')
        parser.add_argument('--limit', type=int, default=100,
                            help='at most this many tasks (1-1000, '
                                 'default 100)')
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        tasks = self.backend().tasks(parsed_args.state, parsed_args.limit)
        data = []
        for t in tasks:
            params = t.get('params') or {}
            data.append((t.get('id'), t.get('kind'), t.get('state'),
                         base.ShortProgressColumn(t.get('progress')),
                         base.TimeColumn(t.get('created_at')),
                         base.TimeColumn(t.get('finished_at')),
                         params.get('src') or '', params.get('dst') or '',
                         base.ErrorColumn(t.get('error'))))
        return self.COLUMNS, data


class _OneTask(base.ShowOne):

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument('task_id', metavar='TASK_ID',
                            help='the task\'s id')
        return parser


class TasksShow(_OneTask):
    """Show one task, whatever its state."""

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        task = self.backend().task(parsed_args.task_id).task
        return base.TASK_FIELDS, base.task_values(task)


class TasksWait(_OneTask):
    """Wait for a task; show it once finished.

    A progress bar is shown meanwhile; a failed task's error is the
    command's.
    """

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        backend = self.backend()
        handle = backend.task(parsed_args.task_id)
        bar = progress.Bar(handle.kind, enabled=self.app.progress_wanted())
        task = backend.wait(handle, bar, self.app.options.wait_timeout)
        return _outcome(task)


class TasksCancel(_OneTask):
    """Cancel a task; show the task the daemon answers."""

    def take_action(self, parsed_args: argparse.Namespace) -> Any:
        backend = self.backend()
        handle = backend.task(parsed_args.task_id)
        with backend.guard():
            task = handle.cancel()
        return base.TASK_FIELDS, base.task_values(task)
