# SPDX-License-Identifier: Apache-2.0
"""Start a real accel-daemon the way a host runs it, for the caller
benchmarks: the installed ``accel-daemon`` console script (the one beside
the running interpreter), a config file of its own, the privsep backend,
an allowed directory in the benchmark's work directory, the installed
filter files rendered for it (``tools/render_filters.py``), and a unique
host name so that it shares the broker with other daemons safely.

Standard library and accel_daemon only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RENDER = os.path.join(REPO, 'tools', 'render_filters.py')

CONFIG = """[DEFAULT]
transport_url = %(url)s
debug = false

[accel_daemon]
allowed_dirs = %(images)s
filters_path = %(filters)s
state_dir = %(state)s

[accel_daemon_rpc]
host = %(host)s
"""


def installed_filters() -> str:
    """The filter files installed with accel-daemon (data_files), else the
    checkout's."""
    path = os.path.join(sys.prefix, 'etc', 'accel-daemon', 'rootwrap.d')
    return path if os.path.isdir(path) else os.path.join(REPO, 'filters')


class Daemon:
    """One accel-daemon process; ``images`` is its allowed directory."""

    def __init__(self, root: str, transport_url: str) -> None:
        self.root = os.path.realpath(root)
        self.images = os.path.join(self.root, 'images')
        self.filters = os.path.join(self.root, 'filters')
        self.state = os.path.join(self.root, 'state')
        self.config = os.path.join(self.root, 'accel-daemon.conf')
        self.log = os.path.join(self.root, 'daemon.log')
        self.console = os.path.join(self.root, 'daemon.console')
        self.host = 'accel-bench-%s' % uuid.uuid4().hex[:10]
        self.transport_url = transport_url
        self.proc: subprocess.Popen | None = None

    def write_config(self) -> None:
        os.makedirs(self.images, exist_ok=True)
        subprocess.run([sys.executable, RENDER, installed_filters(),
                        self.filters, self.images], check=True,
                       stdout=subprocess.DEVNULL)
        with open(self.config, 'w') as f:
            f.write(CONFIG % {'url': self.transport_url,
                              'images': self.images,
                              'filters': self.filters, 'state': self.state,
                              'host': self.host})

    def start(self, timeout: float = 120.0) -> dict:
        """Start it and wait until it answers; returns its
        capabilities."""
        self.write_config()
        exe = os.path.join(os.path.dirname(sys.executable), 'accel-daemon')
        with open(self.console, 'wb') as out:
            self.proc = subprocess.Popen(
                [exe, '--config-file', self.config, '--log-file', self.log],
                stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        return self._wait_ready(timeout)

    def client(self):
        from oslo_config import cfg

        from accel_daemon.client import AccelClient
        from accel_daemon.conf import client as client_conf
        conf = cfg.ConfigOpts()
        client_conf.register_opts(conf)
        conf(['--config-file', self.config], project='accel-bench-client')
        conf.set_override('timeout', 5, group='accel_daemon_client')
        return AccelClient(conf, host=self.host)

    def _wait_ready(self, timeout: float) -> dict:
        from accel_daemon import exception
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        'accel-daemon exited (%s); see %s and %s'
                        % (self.proc.returncode, self.log, self.console))
                try:
                    return client.capabilities()
                except exception.ServiceUnavailable:
                    if time.monotonic() > deadline:
                        raise RuntimeError('accel-daemon did not answer in '
                                           '%d s; see %s' % (timeout,
                                                             self.log))
                    time.sleep(0.5)

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
