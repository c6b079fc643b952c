"""accel-image: the operators' command line.

By default it talks to the accel-daemon of this host (or ``--host``) over
RPC; ``--local`` runs the engine in this process instead (root is needed for
paths only root may read).  Every refused request prints one line and exits
non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
import warnings
from typing import Any

from accel_daemon import exception
from accel_daemon import operations

EXIT_ERROR = 1          # argparse exits 2 on usage errors


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='accel-image', description=__doc__.split(
        '\n\n')[0])
    p.add_argument('--config-file', action='append', default=[],
                   help='oslo.config file (repeatable); default: '
                        '/etc/accel-daemon/accel-daemon.conf when present')
    p.add_argument('--local', action='store_true',
                   help='run the engine in this process, not via the daemon')
    p.add_argument('--host', help='daemon host to talk to (default: this one)')
    p.add_argument('--json', action='store_true',
                   help='machine-readable output')
    p.add_argument('--no-wait', action='store_true',
                   help='print the task and return at once (RPC mode)')
    p.add_argument('--timeout', type=float, default=0,
                   help='seconds to wait for a task (0: no limit)')
    sub = p.add_subparsers(dest='command', required=True)
    sub.add_parser('capabilities', help='engines and tools available')
    s = sub.add_parser('info', help='inspect an image, then qemu-img info')
    s.add_argument('path')
    s.add_argument('--format', required=True)
    for name in operations.TASK_OPERATIONS:
        op = operations.OPERATIONS[name]
        _add_fields(sub.add_parser(name, help=op.help), op)
    t = sub.add_parser('tasks', help='list, show, wait for or cancel tasks')
    tsub = t.add_subparsers(dest='action', required=True)
    tl = tsub.add_parser('list')
    tl.add_argument('--state')
    tl.add_argument('--limit', type=int, default=100)
    for action in ('show', 'wait', 'cancel'):
        tsub.add_parser(action).add_argument('task_id')
    return p


def _add_fields(s: argparse.ArgumentParser,
                op: operations.Operation) -> None:
    """Arguments of one operation, from the operation table: paths are
    positional, the rest are --flags typed by their check."""
    for name, field in op.fields.items():
        if field.role:
            s.add_argument(name, help=field.help)
            continue
        flag = '--' + name.replace('_', '-')
        if field.check is operations.boolean:
            s.add_argument(flag, action=argparse.BooleanOptionalAction,
                           default=None, help=field.help)
        else:
            value_type = str if field.check in (operations.short_name,
                                                operations.path) else int
            s.add_argument(flag, type=value_type, required=field.required,
                           help=field.help)


def _params(args: argparse.Namespace) -> dict:
    fields = operations.OPERATIONS[args.command].fields
    return {n: getattr(args, n) for n in fields
            if getattr(args, n, None) is not None}


# --- output -------------------------------------------------------------
def _size(n: float | None) -> str:
    if n is None:
        return '-'
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if abs(n) < 1024 or unit == 'TiB':
            return '%.1f %s' % (n, unit) if unit != 'B' else '%d B' % n
        n /= 1024.0
    return str(n)


def _summary(operation: str, result: dict) -> str:
    parts = ['%s: done in %.2f s'
             % (operation, result.get('wall_seconds', 0.0))]
    if 'engine' in result:
        parts.append('engine %s (%s)' % (
            result['engine'], 'hardware' if result.get('hardware')
            else 'software'))
    if result.get('bytes_in') and result.get('size'):
        parts.append('%s -> %s (ratio %.2f)' % (
            _size(result['bytes_in']), _size(result['size']),
            result['bytes_in'] / max(1, result['size'])))
    elif 'size' in result:
        parts.append('size %s' % _size(result['size']))
    if result.get('cpu_seconds') is not None:
        parts.append('cpu %.2f s' % result['cpu_seconds'])
    if result.get('sha256'):
        parts.append('sha256 %s' % result['sha256'])
    if result.get('output'):
        parts.append('-> %s' % result['output'])
    return ', '.join(parts)


def _emit(args, data, text: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(text)


class _Bar:
    """A progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.shown = False

    def show(self, progress: dict | None) -> None:
        if not self.enabled or not progress or not progress.get('total'):
            return
        frac = min(1.0, progress['done'] / progress['total'])
        width = 30
        fill = int(frac * width)
        sys.stderr.write('\r[%s%s] %3d%% %s/%s ' % (
            '#' * fill, '.' * (width - fill), frac * 100,
            _size(progress['done']), _size(progress['total'])))
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            sys.stderr.write('\n')


# --- local mode ------------------------------------------------------------
class _LocalTask:
    def __init__(self, engine, operation: str, params: dict) -> None:
        self.engine = engine
        self.id = str(uuid.uuid4())
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run,
                                        args=(operation, params), daemon=True)
        self._thread.start()

    def _run(self, operation, params) -> None:
        try:
            self.result = operations.run(self.engine, self.id, operation,
                                         params)
        except BaseException as e:   # re-raised in the main thread
            self.error = e

    def wait(self, bar: _Bar, timeout: float) -> dict:
        deadline = time.monotonic() + timeout if timeout else None
        try:
            while self._thread.is_alive():
                bar.show(self.engine.progress(self.id))
                self._thread.join(0.2)
                if deadline and time.monotonic() > deadline:
                    self.engine.cancel(self.id)
                    self._thread.join()
        except KeyboardInterrupt:
            self.engine.cancel(self.id)
            self._thread.join()
        bar.close()
        if self.error is not None:
            raise self.error
        # The thread has ended without an error: it stored its result.
        assert self.result is not None  # nosec B101
        return self.result


def _run_local(args, conf) -> int:
    from accel_daemon import conf as accel_conf
    from accel_daemon.engine.engine import Engine
    engine = Engine(accel_conf.settings(conf))
    if args.command == 'capabilities':
        caps = engine.capabilities()
        _emit(args, caps, _caps_text(caps))
    elif args.command == 'info':
        info = engine.image_info(args.path, args.format)
        _emit(args, info, json.dumps(info, indent=2, sort_keys=True))
    elif args.command == 'tasks':
        raise exception.InvalidRequest(
            reason='tasks live in the daemon; drop --local')
    else:
        task = _LocalTask(engine, args.command, _params(args))
        result = task.wait(_Bar(not args.json), args.timeout)
        _emit(args, result, _summary(args.command, result))
    return 0


def _caps_text(caps: dict) -> str:
    lines = []
    for d in caps.get('drivers', []):
        lines.append('%-6s %-9s %-8s %s%s' % (
            d['name'], 'available' if d['available'] else 'missing',
            'hardware' if d.get('hardware') else 'software',
            d.get('format', ''),
            '' if d['available'] else '  (%s)' % d.get('reason', '')))
    lines.append('default driver: %s' % caps.get('default_driver'))
    for tool, version in sorted((caps.get('tools') or {}).items()):
        lines.append('%s: %s' % (tool, version))
    return '\n'.join(lines)


# --- RPC mode --------------------------------------------------------------
def _run_remote(args, conf) -> int:
    from accel_daemon import client as client_mod
    client = client_mod.AccelClient(conf, host=args.host)
    if args.command == 'capabilities':
        caps = client.capabilities()
        _emit(args, caps, _caps_text(caps))
        return 0
    if args.command == 'info':
        info = client.image_info(args.path, args.format)
        _emit(args, info, json.dumps(info, indent=2, sort_keys=True))
        return 0
    if args.command == 'tasks':
        return _tasks(args, client)
    handle = getattr(client, args.command)(**_params(args))
    if args.no_wait:
        _emit(args, handle.task, 'task %s %s' % (handle.id, handle.state))
        return 0
    return _wait_remote(args, handle)


def _wait_remote(args, handle) -> int:
    bar = _Bar(not args.json)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    try:
        while not handle.done:
            try:
                handle.wait(timeout=1.0)
            except exception.TaskWaitTimeout:
                bar.show(handle.progress)
                if deadline and time.monotonic() > deadline:
                    raise exception.AccelError(
                        'timed out waiting for task %s (still %s)'
                        % (handle.id, handle.state))
            except exception.AccelError:
                if not handle.done:
                    raise
    except KeyboardInterrupt:
        handle.cancel()
        raise exception.Cancelled()
    finally:
        bar.close()
    return _task_outcome(args, handle.task)


def _task_outcome(args, task: dict) -> int:
    if task['state'] == 'succeeded':
        _emit(args, task, _summary(task['kind'], task['result']))
        return 0
    if args.json:
        _emit(args, task, '')
        return EXIT_ERROR
    if task['state'] == 'cancelled' and not task.get('error'):
        raise exception.Cancelled()
    raise exception.AccelError.from_dict(
        task.get('error') or {'message': 'task %s' % task['state']})


def _tasks(args, client) -> int:
    if args.action == 'list':
        tasks = [h.task for h in client.tasks(state=args.state,
                                              limit=args.limit)]
        _emit(args, tasks, '\n'.join(
            '%s %-10s %-9s %s' % (t['id'], t['kind'], t['state'],
                                  _pct(t.get('progress'))) for t in tasks))
        return 0
    handle = client.task(args.task_id)
    if args.action == 'show':
        _emit(args, handle.task, json.dumps(handle.task, indent=2,
                                            sort_keys=True))
        return 0
    if args.action == 'cancel':
        task = handle.cancel()
        _emit(args, task, 'task %s: %s' % (args.task_id, task['state']))
        return 0
    return _wait_remote(args, handle)


def _pct(progress: dict | None) -> str:
    if not progress or not progress.get('total'):
        return ''
    return '%d%%' % (100 * progress['done'] / progress['total'])


def _load_conf(args):
    from accel_daemon.conf import CONF
    cli = []
    for f in args.config_file:
        cli += ['--config-file', f]
    CONF(cli, project='accel-daemon', default_config_files=None
         if not args.config_file else [])
    return CONF


def _threading_backend() -> None:
    """A command line never runs green threads: pick oslo.service's
    threading backend before oslo.messaging is imported (it otherwise loads
    the deprecated eventlet backend and warns on every call)."""
    # oslo.messaging's imports still touch eventlet, which warns at import
    # time; that warning is for eventlet users, not for this tool's users.
    warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')
    from oslo_service import backend
    from oslo_service.backend import exceptions
    try:
        backend.init_backend(backend.BackendType.THREADING)
    except exceptions.BackendAlreadySelected:
        pass


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _threading_backend()
    try:
        conf = _load_conf(args)
        return (_run_local if args.local else _run_remote)(args, conf)
    except exception.AccelError as e:
        print('accel-image: %s: %s' % (type(e).__name__, e.message),
              file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        print('accel-image: %s' % e, file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print('accel-image: interrupted', file=sys.stderr)
        return EXIT_ERROR


if __name__ == '__main__':
    sys.exit(main())
