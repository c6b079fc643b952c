# SPDX-License-Identifier: Apache-2.0
"""Shared helpers of the reliability tests.

Everything here goes through the public client API (``AccelClient`` and
its task handles) or looks at the system from outside (/proc, the allowed
directory, qemu-img run by the test itself): nothing depends on the
daemon's internals, so the tests survive a refactoring of the product.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import threading
import time
import uuid

import pytest

from accel_daemon import exception
from tests.functional.test_rpc_daemon import DaemonProcess
from tests.functional.test_rpc_daemon import require_broker


def marks(timeout: int, *extra) -> list:
    """The marks of every module of this package: real daemon, broker,
    privsep helper and qemu-img, as root."""
    return [pytest.mark.functional, pytest.mark.rpc, pytest.mark.privsep,
            *extra,
            pytest.mark.skipif(os.geteuid() != 0, reason='needs root'),
            pytest.mark.skipif(shutil.which('qemu-img') is None,
                               reason='qemu-img is not installed'),
            pytest.mark.timeout(timeout)]


def module_daemon(name: str):
    """A pytest fixture: one daemon for the module, stopped at its end."""
    @pytest.fixture(scope='module')
    def daemon(tmp_path_factory):
        d = start_daemon(str(tmp_path_factory.mktemp(name)))
        yield d
        stop_daemon(d)
    return daemon


MiB = 1024 * 1024
TEMP_PREFIX = '.accel-'

# Error types that mean "the daemon did not know what happened".
UNTYPED = ('InternalError', 'AccelError', '')


# --- daemons -----
def start_daemon(root: str, extra: str = '', owner: tuple | None = None,
                 mode: int = 0o750, before_start=None) -> DaemonProcess:
    """A real accel-daemon (own exchange and host name) on ``root``.

    ``owner`` (uid, gid) becomes the owner of the allowed directory;
    ``before_start(daemon)`` runs after the directories exist (e.g. to
    mount a file system on the allowed directory).
    """
    require_broker()
    d = DaemonProcess(root, extra=extra)
    if before_start is not None:
        before_start(d)
    if owner is not None:
        os.chown(d.images, *owner)
        os.chmod(d.images, mode)
    d.start()
    return d


def stop_daemon(d: DaemonProcess) -> None:
    try:
        d.stop(timeout=30)
    except Exception:       # already SIGKILLed by stop()
        pass


# --- a throwaway non-root user -----
@contextlib.contextmanager
def throwaway_user():
    """(name, uid, gid) of a new system user, removed afterwards."""
    if os.geteuid() != 0 or shutil.which('useradd') is None:
        pytest.skip('needs root and useradd')
    name = 'accel-rl-%s' % os.urandom(3).hex()
    subprocess.run(['useradd', '--system', '--no-create-home', '--shell',
                    '/usr/sbin/nologin', '--user-group', name], check=True,
                   capture_output=True)
    try:
        out = subprocess.run(['id', '-u', name], check=True,
                             capture_output=True, text=True).stdout
        uid = int(out)
        gid = int(subprocess.run(['id', '-g', name], check=True,
                                 capture_output=True, text=True).stdout)
        yield name, uid, gid
    finally:
        subprocess.run(['userdel', name], check=False, capture_output=True)


# --- task outcomes -----
class Outcome:
    def __init__(self, handle, result, error, seconds):
        self.handle = handle
        self.result = result
        self.error = error
        self.seconds = seconds

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def error_type(self) -> str | None:
        """The error type as the daemon named it (a string, so classes that
        do not exist yet in accel_daemon.exception can be asserted)."""
        if self.ok:
            return None
        err = (self.handle.task.get('error') or {}) if self.handle else {}
        return err.get('type') or type(self.error).__name__

    def __repr__(self):
        if self.ok:
            return '<ok %s>' % (self.result or {}).get('output')
        return '<%s: %s>' % (self.error_type, self.error)


def run_task(submit, bound: float, fail_on_hang: bool = True) -> Outcome:
    """Submit (a callable returning a TaskHandle) and wait at most
    ``bound`` seconds.  A refusal at submission counts as a failed task.
    A task still running after ``bound`` fails the test (or, with
    ``fail_on_hang=False``, is an Outcome whose error is TaskWaitTimeout).
    """
    started = time.monotonic()
    handle = None
    try:
        handle = submit()
        result = handle.wait(timeout=bound)
        return Outcome(handle, result, None, time.monotonic() - started)
    except exception.TaskWaitTimeout as e:
        if fail_on_hang:
            pytest.fail('task %s did not end within %ss' % (handle, bound))
        return Outcome(None, None, e, time.monotonic() - started)
    except exception.AccelError as e:
        return Outcome(handle, None, e, time.monotonic() - started)


def assert_typed(outcome: Outcome) -> None:
    assert outcome.error_type not in UNTYPED, \
        'untyped error: %r' % (outcome,)


# --- the allowed directory -----
def strays(directory: str, ignore_inodes=()) -> list[str]:
    """``.accel-*`` names left in ``directory`` (ignoring inodes the test
    or the attacker made on purpose)."""
    found = []
    for name in os.listdir(directory):
        if not name.startswith(TEMP_PREFIX):
            continue
        try:
            st = os.lstat(os.path.join(directory, name))
        except FileNotFoundError:
            continue
        if (st.st_dev, st.st_ino) in ignore_inodes:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue        # the attacker's symlinks and FIFOs
        found.append(name)
    return sorted(found)


def wait_no_strays(directory: str, timeout: float = 5.0,
                   ignore_inodes=()) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = strays(directory, ignore_inodes)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def allocated(directory: str, exclude=()) -> int:
    """Bytes allocated by the files of ``directory`` (not ``exclude``)."""
    total = 0
    for name in os.listdir(directory):
        if name in exclude:
            continue
        try:
            st = os.lstat(os.path.join(directory, name))
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_blocks * 512
    return total


class AllocationWatch:
    """Samples ``allocated(directory)`` every few ms in a thread; keeps
    the maximum; calls ``on_exceed`` once when ``limit`` is passed."""

    def __init__(self, directory, exclude=(), limit=None, on_exceed=None,
                 interval=0.02):
        self.directory = directory
        self.exclude = set(exclude)
        self.limit = limit
        self.on_exceed = on_exceed
        self.interval = interval
        self.peak = 0
        self.exceeded = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            now = allocated(self.directory, self.exclude)
            self.peak = max(self.peak, now)
            if self.limit is not None and now > self.limit and \
                    not self.exceeded:
                self.exceeded = True
                if self.on_exceed:
                    self.on_exceed()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


# --- images -----
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(MiB), b''):
            h.update(block)
    return h.hexdigest()


def plain(data: bytes, limit: int = 256 * MiB) -> bytes:
    """``data``, gunzipped when it is gzip (capped)."""
    if data[:2] == b'\x1f\x8b':
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as g:
                return g.read(limit)
        except (OSError, EOFError):
            pass
    return data[:limit]


def qemu_info(path: str, fmt: str | None = None) -> dict:
    """``qemu-img info`` run by the test (read-only, no backing chain)."""
    argv = ['qemu-img', 'info', '--output=json', '-U']
    if fmt:
        argv += ['-f', fmt]
    argv.append(path)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return {'error': out.stderr.strip()}
    return json.loads(out.stdout)


def unsafe_image_reason(data: bytes) -> str | None:
    """Why the bytes of a published image would be dangerous to hand to
    qemu-img again (backing file, external data file, VMDK extent)."""
    if data[:4] == b'QFI\xfb' and len(data) >= 104:
        backing_offset = int.from_bytes(data[8:16], 'big')
        if backing_offset:
            return 'qcow2 with a backing file'
        version = int.from_bytes(data[4:8], 'big')
        if version >= 3:
            incompat = int.from_bytes(data[72:80], 'big')
            if incompat & 4:
                return 'qcow2 with an external data file'
    if data[:4] == b'KDMV' or b'createType=' in data[:4096]:
        return 'VMDK with extents'
    return None


def unique(prefix: str) -> str:
    return '%s-%s' % (prefix, uuid.uuid4().hex[:8])


# --- processes -----
def cmdline(pid) -> list[bytes]:
    try:
        with open('/proc/%s/cmdline' % pid, 'rb') as f:
            return f.read().split(b'\0')
    except OSError:
        return []


def proc_stat(pid) -> tuple | None:
    """(ppid, starttime) of a process, None if it is gone or a zombie."""
    try:
        with open('/proc/%s/stat' % pid) as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except OSError:
        return None
    if fields[0] in ('Z', 'X'):
        return None
    return int(fields[1]), int(fields[19])


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir('/proc') if p.isdigit()]


def descendants(pid: int) -> dict[int, tuple]:
    """Every live descendant of ``pid``: {pid: (ppid, starttime)}."""
    table = {p: proc_stat(p) for p in all_pids()}
    table = {p: s for p, s in table.items() if s is not None}
    found, frontier = {}, {pid}
    while frontier:
        kids = {p for p, s in table.items() if s[0] in frontier
                and p not in found}
        for k in kids:
            found[k] = table[k]
        frontier = kids
    return found


def helper_pids(daemon: DaemonProcess) -> list[int]:
    """The privsep helper(s) of ``daemon``.  The helper daemonizes (its
    parent becomes init): find it by its command line, which names
    privsep-helper and the daemon's configuration file, without its own
    forked children."""
    conf = daemon.config.encode()
    found = [p for p in all_pids()
             if any(b'privsep-helper' in a for a in cmdline(p))
             and conf in cmdline(p) and proc_stat(p) is not None]
    return [p for p in found if (proc_stat(p) or (0,))[0] not in found]


def family(daemon: DaemonProcess) -> dict[int, tuple]:
    """The daemon, its privsep helper(s) and all their descendants."""
    procs = {}
    for root in [daemon.proc.pid] + helper_pids(daemon):
        st = proc_stat(root)
        if st is not None:
            procs[root] = st
        procs.update(descendants(root))
    return procs


def still_alive(procs: dict[int, tuple]) -> list[str]:
    """Which of ``procs`` ({pid: (ppid, starttime)}) still run."""
    alive = []
    for pid, (_, start) in procs.items():
        now = proc_stat(pid)
        if now is not None and now[1] == start:
            alive.append('%d %s' % (pid, b' '.join(cmdline(pid))[:120]))
    return alive


def rss_kib(pid: int) -> int:
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return 0


def random_file(path: str, size: int) -> str:
    with open(path, 'wb') as f:
        left = size
        while left > 0:
            n = min(left, MiB)
            f.write(os.urandom(n))
            left -= n
    return path
