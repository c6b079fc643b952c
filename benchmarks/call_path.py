# SPDX-License-Identifier: Apache-2.0
"""Hops from ``AccelClient.compress()`` to the exec of the compressor.

    python benchmarks/call_path.py CHECKOUT [--driver gzip] [--size-mib 4]
        [--no-warmup] [--json FILE]

Runs one compress in one process against CHECKOUT (any checkout of this
project, old or new layout; it is put first on ``sys.path``), wired as the
daemon is but in-process: ``AccelClient`` -> oslo.messaging ``fake://``
transport -> the real RPC server and ``AccelEndpoint`` -> the real
``TaskManager`` (one worker, journal in a temp directory) -> ``LocalBackend``
-> a real ``Engine`` confined to a temp allowed directory with the shipped
filters (``tests/envfixture.make_env``).  A CLI driver is forced (``gzip``
by default) so that the compressor is an exec.

``sys.setprofile`` and ``threading.setprofile`` record, per thread, every
call of a Python function whose code lives in ``CHECKOUT/accel_daemon/``.
By default one untraced compress runs first, so lazy imports and one-time
driver loading are not counted as the path of a call.

Definitions (the same for every checkout):

* A *frame* is a Python frame whose code is in ``CHECKOUT/accel_daemon/``;
  frames of oslo.messaging, the standard library and the test fixture are
  not counted.
* The three boundaries of the path:

  - **send**: on the client thread, the call of oslo.messaging's
    ``Transport._send`` (the RPC message leaves the caller);
  - **submit**: on the RPC server's dispatch thread, the call of
    ``TaskManager.submit`` (the task is handed to the queue);
  - **exec**: on the task worker thread, the call of ``subprocess.Popen``
    (``Popen.__init__``, before the fork) whose argv[0] is the driver's
    tool and which is not a ``--version`` probe (driver selection runs
    one the first time a driver is used).

* The *depth* at a boundary is the number of accel_daemon frames on that
  thread's stack at that moment (``submit`` itself counts; ``_send`` and
  ``Popen.__init__`` do not, they are not accel_daemon code).
* **hops** = depth at send + depth at submit + depth at exec: how many
  accel_daemon functions are stacked on the way from the caller to the
  exec, thread hand-offs (message, queue) marking the boundaries.
* **distinct functions**: accel_daemon code objects that were called on a
  thread of the path, or that are on one of the three boundary stacks
  (the worker loop was entered before the call started).  Recording on a
  thread: the client thread from the ``compress()`` call until it returns;
  the task worker until the exec; any other thread from the ``compress()``
  call until both the exec has been reached and ``compress()`` has
  returned (by then the server has answered), threads first seen after the
  exec excluded (the reader threads the exec itself starts).  Named
  functions are shown apart from comprehensions, generator expressions and
  lambdas.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
import warnings

SEND = ('oslo_messaging', 'transport.py', '_send')


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description='accel_daemon frames from AccelClient.compress() to the '
                    'exec of the compressor, in one process.')
    p.add_argument('checkout', help='root of an accel-daemon checkout')
    p.add_argument('--driver', default='gzip',
                   help='CLI compression driver to force (default gzip)')
    p.add_argument('--size-mib', type=int, default=4,
                   help='size of the source file (default 4 MiB)')
    p.add_argument('--no-warmup', action='store_true',
                   help='trace the first compress (imports included)')
    p.add_argument('--tool-user', metavar='NAME',
                   help='run the tools as NAME (Settings.tool_user, as the '
                        'daemon does; only the layout that has it)')
    p.add_argument('--json', metavar='FILE', help='also write results here')
    return p.parse_args(argv)


# --- the two layouts ---------------------------------------------------------
def layout_of(checkout: str) -> str:
    """'after' once the operation table exists, 'before' for the layout
    with a top-level backends module (commit ac7382d and its ancestors)."""
    pkg = os.path.join(checkout, 'accel_daemon')
    if os.path.exists(os.path.join(pkg, 'operations.py')):
        return 'after'
    if os.path.exists(os.path.join(pkg, 'backends.py')):
        return 'before'
    raise SystemExit('%s: neither accel_daemon/operations.py nor '
                     'accel_daemon/backends.py; unknown layout' % checkout)


def import_layout(layout: str):
    """(get_transport, LocalBackend) for the layout."""
    if layout == 'after':
        from accel_daemon.manager.backends import LocalBackend
        from accel_daemon.rpc.rpcapi import get_transport
    else:
        from accel_daemon.backends import LocalBackend
        from accel_daemon.rpc.server import get_transport
    return get_transport, LocalBackend


# --- the profiler ------------------------------------------------------------
class Recorder:
    def __init__(self, checkout: str, driver: str) -> None:
        self.pkg = os.path.join(checkout, 'accel_daemon') + os.sep
        self.root = checkout + os.sep
        self.driver = driver
        self.active = False
        self.exec_seen = False
        self.compress_returned = False
        self.done = threading.Event()
        self.calls: dict[int, list[tuple]] = {}     # thread -> code keys
        self.names: dict[int, str] = {}
        self.stopped: set[int] = set()
        self.boundaries: dict[str, dict] = {}
        self.popens: list[dict] = []
        self._keys: dict[object, tuple] = {}

    def _key(self, code) -> tuple:
        key = self._keys.get(code)
        if key is None:
            rel = code.co_filename[len(self.root):]
            module = rel[:-3].replace(os.sep, '.') if rel.endswith('.py') \
                else rel
            key = (module, code.co_qualname, code.co_firstlineno)
            self._keys[code] = key
        return key

    def _ours(self, code) -> bool:
        return code.co_filename.startswith(self.pkg)

    def stack(self, frame) -> list[tuple]:
        """accel_daemon frames from the outermost to ``frame``."""
        out = []
        while frame is not None:
            if self._ours(frame.f_code):
                out.append(self._key(frame.f_code))
            frame = frame.f_back
        return out[::-1]

    @staticmethod
    def total_depth(frame) -> int:
        n = 0
        while frame is not None:
            n += 1
            frame = frame.f_back
        return n

    def _boundary(self, name: str, frame, **extra) -> None:
        if name in self.boundaries:
            return
        t = threading.current_thread()
        self.boundaries[name] = dict(
            thread=t.name, stack=self.stack(frame),
            python_frames=self.total_depth(frame), **extra)

    def profile(self, frame, event, arg) -> None:
        if event != 'call' or not self.active:
            return
        tid = threading.get_ident()
        if tid in self.stopped:
            return
        code = frame.f_code
        if self._ours(code):
            if tid not in self.calls:
                if self.exec_seen:      # started by the exec's caller
                    self.stopped.add(tid)
                    return
                self.calls[tid] = []
                self.names[tid] = threading.current_thread().name
            self.calls[tid].append(self._key(code))
            if code.co_qualname == 'TaskManager.submit':
                self._boundary('submit', frame)
            return
        fname = code.co_filename
        if code.co_name == SEND[2] and fname.endswith(
                os.sep.join(SEND[:2])):
            self._boundary('send', frame)
        elif (code.co_qualname == 'Popen.__init__'
              and os.path.basename(fname) == 'subprocess.py'):
            self._popen(frame, tid)

    def _popen(self, frame, tid: int) -> None:
        args = frame.f_locals.get('args')
        argv = args.split() if isinstance(args, (str, bytes)) else \
            [os.fsdecode(a) for a in (args or ())]
        self.popens.append({'thread': threading.current_thread().name,
                            'argv': argv})
        # The compressor: the driver's tool run for data, not a probe.
        if (argv and os.path.basename(argv[0]) == self.driver
                and '--version' not in argv):
            self._boundary('exec', frame, argv=argv)
            self.exec_seen = True
            self.stopped.add(tid)
            self._maybe_done()

    def client_returned(self) -> None:
        self.compress_returned = True
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.exec_seen and self.compress_returned:
            self.active = False
            self.done.set()


# --- the in-process daemon ---------------------------------------------------
class InProcess:
    def __init__(self, layout: str, tmp: str, driver: str,
                 tool_user: str | None = None) -> None:
        from oslo_config import cfg
        from oslo_messaging import conffixture

        from accel_daemon.client import AccelClient
        from accel_daemon.engine.settings import Settings
        from accel_daemon.manager.journal import Journal
        from accel_daemon.manager.tasks import TaskManager
        from accel_daemon.rpc import endpoint as rpc_endpoint
        from accel_daemon.rpc import server as rpc_server
        from tests.envfixture import make_env

        get_transport, LocalBackend = import_layout(layout)
        host = 'call-path-%s' % uuid.uuid4().hex[:8]
        overrides = {}
        if tool_user:
            if layout != 'after':
                raise SystemExit('--tool-user: the %s layout has no '
                                 'tool_user setting' % layout)
            overrides['tool_user'] = tool_user
        self.env = make_env(os.path.join(tmp, 'env'), **overrides)
        self.fixture = conffixture.ConfFixture(cfg.CONF,
                                               transport_url='fake:/')
        self.fixture.setUp()
        conf = self.fixture.conf
        conf.set_override('control_exchange', 'call-path-%s' % host)
        self.backend = LocalBackend(self.env.settings)
        self.manager = TaskManager(
            self.backend, Journal(os.path.join(tmp, 'tasks.sqlite')),
            workers=1)
        self.manager.start()
        self.transport = get_transport(conf)
        if type(self.transport._driver).__name__ != 'FakeDriver':
            raise SystemExit('not the fake transport; refusing to run')
        endpoint = rpc_endpoint.AccelEndpoint(
            self.manager, self.backend,
            Settings(allowed_dirs=(self.env.images,)), max_wait=0.5)
        self.server = rpc_server.build(self.transport, 'accel_daemon', host,
                                       [endpoint])
        self.server.start()
        self.client = AccelClient(conf, host=host)
        self.client.wait_interval = 0.05
        self.driver = driver

    def source(self, size: int) -> str:
        """A file that compresses like a volume: text and random bytes."""
        path = os.path.join(self.env.images, 'src.raw')
        chunk = (b'accel-daemon call path ' * 2048)[:1 << 16]
        with open(path, 'wb') as f:
            for n in range(max(1, size >> 16)):
                f.write(os.urandom(1 << 16) if n % 2 else chunk)
        return path

    def compress(self, src: str, tag: str, before=None, after=None):
        dst = os.path.join(self.env.images, 'out-%s.gz' % tag)
        if before:
            before()
        try:
            handle = self.client.compress(src, dst, driver=self.driver)
        finally:
            if after:
                after()
        return handle

    def close(self) -> None:
        self.client.close()
        self.server.stop()
        self.manager.stop(5.0)
        self.server.wait()
        self.transport.cleanup()
        self.fixture.cleanUp()


# --- report ------------------------------------------------------------------
def named(key: tuple) -> bool:
    return not key[1].rsplit('.', 1)[-1].startswith('<')


def fmt(key: tuple) -> str:
    return '%s:%s' % (key[0], key[1])


def summarise(rec: Recorder, layout: str, checkout: str) -> dict:
    missing = [b for b in ('send', 'submit', 'exec')
               if b not in rec.boundaries]
    if missing:
        raise SystemExit('boundary not reached: %s (Popen seen: %s)'
                         % (', '.join(missing), rec.popens))
    per_thread = {}
    every: set[tuple] = set()
    for tid, keys in rec.calls.items():
        per_thread[rec.names[tid]] = {
            'calls': len(keys), 'distinct': len(set(keys)),
            'distinct_named': len({k for k in keys if named(k)})}
        every |= set(keys)
    for b in rec.boundaries.values():
        every |= set(b['stack'])
    depths = {b: len(rec.boundaries[b]['stack'])
              for b in ('send', 'submit', 'exec')}
    return {
        'checkout': checkout, 'layout': layout,
        'commit': _head(checkout),
        'hops': sum(depths.values()), 'depth': depths,
        'distinct_functions': len(every),
        'distinct_named_functions': len({k for k in every if named(k)}),
        'calls': sum(len(k) for k in rec.calls.values()),
        'threads': per_thread,
        'boundaries': {b: dict(v, stack=[fmt(k) for k in v['stack']])
                       for b, v in rec.boundaries.items()},
        'popens': rec.popens,
        'functions': sorted(fmt(k) for k in every),
    }


def _head(checkout: str) -> str | None:
    git = os.path.join(checkout, '.git')
    try:
        if os.path.isfile(git):     # a worktree: "gitdir: ..."
            with open(git) as f:
                git = f.read().split(':', 1)[1].strip()
        with open(os.path.join(git, 'HEAD')) as f:
            head = f.read().strip()
        if head.startswith('ref: '):
            ref = head[5:]
            common = git
            if os.path.exists(os.path.join(git, 'commondir')):
                with open(os.path.join(git, 'commondir')) as f:
                    common = os.path.join(git, f.read().strip())
            with open(os.path.join(common, ref)) as f:
                head = f.read().strip()
        return head
    except (OSError, IndexError):
        return None


def print_report(s: dict) -> None:
    print('checkout %s (%s layout, HEAD %s)' % (s['checkout'], s['layout'],
                                                (s['commit'] or '?')[:12]))
    print('hops: %d = send %d + submit %d + exec %d' % (
        s['hops'], s['depth']['send'], s['depth']['submit'],
        s['depth']['exec']))
    print('distinct accel_daemon functions: %d (%d named), %d calls' % (
        s['distinct_functions'], s['distinct_named_functions'], s['calls']))
    for name, t in s['threads'].items():
        print('  thread %-28s %4d calls, %3d distinct (%d named)' % (
            name, t['calls'], t['distinct'], t['distinct_named']))
    for b in ('send', 'submit', 'exec'):
        v = s['boundaries'][b]
        print('\n%s on thread %s: %d accel_daemon frames (%d Python frames)'
              % (b, v['thread'], len(v['stack']), v['python_frames']))
        if 'argv' in v:
            print('  argv: %s' % ' '.join(v['argv']))
        for n, frame in enumerate(v['stack'], 1):
            print('  %2d %s' % (n, frame))
    others = [p for p in s['popens']
              if p['argv'] != s['boundaries']['exec'].get('argv')]
    if others:
        print('\nother execs on the way: %s' % '; '.join(
            ' '.join(p['argv']) for p in others))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    checkout = os.path.realpath(args.checkout)
    layout = layout_of(checkout)
    sys.path.insert(0, checkout)
    warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')
    # As the daemon does: oslo.service's threading backend before anything
    # imports oslo.messaging.
    from oslo_service import backend as service_backend
    service_backend.init_backend(service_backend.BackendType.THREADING)
    import accel_daemon
    if not os.path.realpath(accel_daemon.__file__).startswith(
            checkout + os.sep):
        raise SystemExit('accel_daemon came from %s, not %s'
                         % (accel_daemon.__file__, checkout))
    if shutil.which(args.driver) is None:
        raise SystemExit('%s is not installed' % args.driver)

    rec = Recorder(checkout, args.driver)
    # Before any server, executor or worker thread exists.
    threading.setprofile(rec.profile)
    tmp = tempfile.mkdtemp(prefix='accel-call-path-')
    daemon = None
    try:
        daemon = InProcess(layout, tmp, args.driver, args.tool_user)
        src = daemon.source(args.size_mib << 20)
        if not args.no_warmup:
            daemon.compress(src, 'warmup').wait(timeout=120)

        def start() -> None:
            rec.active = True
            sys.setprofile(rec.profile)

        def stop() -> None:
            sys.setprofile(None)
            rec.client_returned()

        handle = daemon.compress(src, 'traced', start, stop)
        client_tid = threading.get_ident()
        if client_tid in rec.calls:
            rec.names[client_tid] = 'client (%s)' % rec.names[client_tid]
        if not rec.done.wait(60):
            rec.active = False
        result = handle.wait(timeout=120)
        time.sleep(0.1)
    finally:
        threading.setprofile(None)
        if daemon is not None:
            daemon.close()
        shutil.rmtree(tmp, ignore_errors=True)
    summary = summarise(rec, layout, checkout)
    summary['task_engine'] = (result or {}).get('engine')
    summary['tool_user'] = args.tool_user
    print_report(summary)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
