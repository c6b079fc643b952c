# SPDX-License-Identifier: Apache-2.0
"""The real accel-daemon, started the way a host starts it, for the flow
tests that run inside the cinder and nova venvs.

``Daemon(...).start()`` runs the venv's installed ``accel-daemon`` console
script (``sys.prefix/bin``) as its own process group (the process, its
layout and configuration are ``tests/daemonproc.py``'s, which the
functional tests and the benchmarks start too), with its privsep
backend: the daemon starts ``accel-privsep-helper`` from the same bin directory
itself (``accel_daemon.privileged.start``; as root, without sudo), and the
tools run as the tool user (``[accel_daemon] tool_user``, default
``accel-tools``, which ``tools/setup.sh`` creates).  It talks to the real
RabbitMQ at 127.0.0.1:5672 under a host name and topic of its own, so runs
of several checkouts at once never meet.  Its allowed directory and state
directory are temporary; the shipped filters are rendered for them by
``tools/render_filters.py``, as ``tools/install.sh`` does.  Block devices
are allowed only when ``block_devices`` names patterns.

``start()`` returns once the daemon answers an RPC call; ``stop()``
(SIGTERM) and ``kill()`` (SIGKILL of the whole group, helper and tools
included: a crash in the middle of a task) end it.  ``service_conf()``
writes the part of a caller's configuration that reaches it.

Standard library, oslo and accel_daemon only: it runs in both venvs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Optional, Sequence

from oslo_config import cfg

from accel_daemon.client import AccelClient
from accel_daemon.conf import client as client_conf
from accel_daemon import exception

CHECKOUT = os.path.realpath(os.path.join(os.path.dirname(
    os.path.abspath(__file__)), os.pardir, os.pardir))


def _daemonproc() -> Any:
    """tests/daemonproc.py, by its path: the checkout is not on this venv's
    sys.path (it would hide the accel_daemon installed here)."""
    path = os.path.join(CHECKOUT, 'tests', 'daemonproc.py')
    spec = importlib.util.spec_from_file_location('daemonproc', path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


daemonproc = _daemonproc()
BROKER = daemonproc.BROKER
TRANSPORT_URL = daemonproc.TRANSPORT_URL
BIN = os.path.join(sys.prefix, 'bin')
MIB = 1024 * 1024
broker_up = daemonproc.broker_up


class Daemon(daemonproc.DaemonProcess):
    """One accel-daemon process; ``images`` is its allowed directory."""

    def __init__(self, prefix: str,
                 block_devices: Sequence[str] = (),
                 root: Optional[str] = None) -> None:
        if not broker_up():
            raise RuntimeError('RabbitMQ is not listening on %s:%d: the '
                               'flow tests need it' % BROKER)
        tag = uuid.uuid4().hex[:10]
        self.topic = 'accel_daemon_test_%s' % tag
        self.block_devices = tuple(block_devices)
        super().__init__(
            root or tempfile.mkdtemp(prefix=prefix + '-'),
            '%s-%s' % (prefix, tag), sections={
                'DEFAULT': {'debug': 'true' if os.environ.get('ACCEL_DEBUG')
                            else 'false'},
                'accel_daemon': {
                    'allowed_block_devices': ','.join(self.block_devices)},
                'accel_daemon_rpc': {'topic': self.topic,
                                     'max_task_wait': 1},
                'tasks': {'workers': 2, 'stop_timeout': 5}})
        if not os.access(self.executable, os.X_OK):
            raise RuntimeError('no accel-daemon console script in %s' % BIN)

    # -- the process -------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Daemon:
        self.spawn()
        try:
            with self.client(timeout=2) as client:
                self.wait_ready(client, timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL the daemon's process group (privsep helper and tools
        too): a crash, mid-task if one runs."""
        if self.running:
            self.kill_group()

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """SIGTERM, as a service manager stops it; SIGKILL after
        ``timeout``.  Returns the exit status."""
        if self.proc is None:
            return None
        self.terminate(timeout)
        # The helper and tools leave with it; make sure of it.
        self.kill_group()
        return self.proc.returncode

    def cleanup(self) -> None:
        self.stop()
        self.delete_queues()
        shutil.rmtree(self.root, ignore_errors=True)

    def delete_queues(self) -> None:
        """Remove this daemon's RPC queues from the broker (oslo.messaging
        leaves topic queues behind; each run has a topic of its own)."""
        import amqp
        conn = amqp.Connection('%s:%d' % BROKER, userid='guest',
                               password='guest')
        try:
            conn.connect()
            for name in (self.topic, '%s.%s' % (self.topic, self.host)):
                channel = conn.channel()
                try:
                    channel.queue_delete(name)
                except amqp.exceptions.AMQPError:
                    pass
                finally:
                    if channel.is_open:
                        channel.close()
        except OSError:
            pass
        finally:
            conn.collect()

    # -- callers -------------------------------------------------------------
    def client(self, timeout: int = 10) -> AccelClient:
        """A client of this daemon on a configuration of its own."""
        path = self.service_conf(
            os.path.join(self.root, 'client-%d.conf' % timeout), {},
            timeout=timeout)
        conf = cfg.ConfigOpts()
        client_conf.register_opts(conf)
        conf(['--config-file', path], project='accel-daemon-test-client',
             default_config_files=[])
        return AccelClient(conf)

    def client_options(self, timeout: int = 10) -> dict[str, Any]:
        """``[accel_daemon_client]`` of a service that calls this daemon:
        short RPC timeouts, so that a dead daemon is noticed quickly."""
        return {'host': self.host, 'topic': self.topic, 'timeout': timeout,
                'wait_interval': 0.5}

    def service_conf(self, path: str, default: dict[str, Any],
                     sections: Optional[dict[str, dict[str, Any]]] = None,
                     timeout: int = 10) -> str:
        """Write a service's config file (cinder.conf, nova.conf): the
        broker and ``default`` in [DEFAULT], this daemon in
        [accel_daemon_client], then ``sections``."""
        groups: dict[str, dict[str, Any]] = {
            'DEFAULT': dict({'transport_url': TRANSPORT_URL}, **default),
            'accel_daemon_client': self.client_options(timeout)}
        groups.update(sections or {})
        with open(path, 'w') as f:
            for group, values in groups.items():
                f.write('[%s]\n' % group)
                for key, value in values.items():
                    if isinstance(value, bool):
                        value = 'true' if value else 'false'
                    f.write('%s = %s\n' % (key, value))
                f.write('\n')
        return path

    def task_states(self) -> list[dict[str, Any]]:
        with self.client(timeout=5) as client:
            return [h.task for h in client.tasks(limit=50)]


# -- helpers of the flow tests ----------------------------------------------

def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, check=False)
    if check and done.returncode:
        raise AssertionError('%s exited %d: %s' % (
            ' '.join(argv), done.returncode,
            done.stderr.decode(errors='replace').strip()))
    return done


def qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(('qemu-img',) + args, capture_output=True,
                          text=True, check=False)


def same_image(a: str, fa: str, b: str, fb: str) -> tuple[bool, str]:
    proc = qemu_img('compare', '-f', fa, '-F', fb, a, b)
    return proc.returncode == 0, proc.stdout + proc.stderr


def same_bytes(a: str, b: str, length: Optional[int] = None) -> bool:
    """Byte for byte; ``length`` bytes of each when given (a device is
    larger than the image written on it)."""
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
        left = length
        while True:
            n = MIB if left is None else min(MIB, left)
            x, y = fa.read(n), fb.read(n)
            if x != y:
                return False
            if not x or (left is not None and not (left := left - len(x))):
                return True


def make_volume(path: str, size: int = 24 * MIB, seed: int = 1) -> str:
    """A raw volume: data blocks of several kinds, zeros and holes."""
    import random
    rng = random.Random(seed)
    with open(path, 'wb') as f:
        f.truncate(size)
        for offset in range(0, size, 3 * MIB):
            f.seek(offset)
            kind = (offset // (3 * MIB)) % 3
            if kind == 0:
                f.write(rng.randbytes(512 * 1024))
            elif kind == 1:
                f.write(b'volume text block %d\n' % offset * 20000)
            # kind 2: a hole
        f.seek(size - 4096)
        f.write(b'\xa5' * 4096)
    return path


class LoopDevice:
    """A loop device over a backing file, made with losetup."""

    def __init__(self, backing: str, size: int) -> None:
        with open(backing, 'wb') as f:
            f.truncate(size)
        self.backing = backing
        out = run('losetup', '--find', '--show', backing)
        self.path = out.stdout.decode().strip()
        if not self.path.startswith('/dev/loop'):
            raise RuntimeError('losetup gave %r' % self.path)

    def fill(self, byte: bytes) -> None:
        """Write ``byte`` over the whole device (old data a conversion
        must overwrite)."""
        size = self.size()
        with open(self.path, 'r+b') as f:
            block = byte * MIB
            for _ in range(size // MIB):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())

    def size(self) -> int:
        with open(self.path, 'rb') as f:
            return f.seek(0, os.SEEK_END)

    def detach(self) -> None:
        run('losetup', '-d', self.path, check=False)
        try:
            os.unlink(self.backing)
        except FileNotFoundError:
            pass


class KillWhenRunning:
    """Kill ``daemon`` (SIGKILL of its group) as soon as it reports a
    running task of ``kind``, from a thread of its own; ``killed`` tells
    whether it did, ``task`` is what the daemon last said of that task.
    Use as a context manager around the caller's call."""

    def __init__(self, daemon: Daemon, kind: str,
                 timeout: float = 60.0) -> None:
        import threading
        self.daemon = daemon
        self.kind = kind
        self.timeout = timeout
        self.killed = False
        self.task: Optional[dict[str, Any]] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._client = daemon.client(timeout=5)

    def _watch(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                tasks = self._client.tasks(state='running', limit=10)
            except exception.AccelError:
                time.sleep(0.05)
                continue
            for handle in tasks:
                if handle.kind == self.kind:
                    self.task = handle.task
                    self.daemon.kill()
                    self.killed = True
                    return
            time.sleep(0.02)

    def __enter__(self) -> KillWhenRunning:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.close()


def listing(directory: str) -> dict[str, tuple[int, float]]:
    """{name: (size, mtime)} of every entry under ``directory``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, directory)] = (st.st_size,
                                                     st.st_mtime)
    return out


def sha256(path: str, length: Optional[int] = None) -> str:
    import hashlib
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        left = length
        while left is None or left > 0:
            chunk = f.read(MIB if left is None else min(MIB, left))
            if not chunk:
                break
            digest.update(chunk)
            if left is not None:
                left -= len(chunk)
    return digest.hexdigest()


def big_volume(path: str, mib: int) -> str:
    """``mib`` MiB of data that qemu-img's compression cannot shrink (a
    slow task to kill the daemon in the middle of)."""
    block = os.urandom(MIB)
    with open(path, 'wb') as f:
        for i in range(mib):
            f.write(block[i:] + block[:i])
    return path


def qcow2_from(raw: str, qcow2: str, *extra: str) -> str:
    run('qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', *extra, raw,
        qcow2)
    return qcow2


def qcow2_with_backing(path: str, backing: str) -> str:
    """A qcow2 whose backing file is ``backing`` (a host file an image must
    never reach)."""
    run('qemu-img', 'create', '-f', 'qcow2', '-b', backing, '-F', 'raw',
        path)
    return path


def gzip_file(src: str, dst: str) -> str:
    with open(dst, 'wb') as out:
        subprocess.run(['gzip', '-c', '-n', src], stdout=out, check=True)
    return dst
