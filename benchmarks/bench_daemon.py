# SPDX-License-Identifier: Apache-2.0
"""Start a real accel-daemon the way a host runs it, for the caller
benchmarks: ``tests/daemonproc.py`` (the installed ``accel-daemon`` console
script beside the running interpreter, a config file of its own, the
privsep backend, an allowed directory in the benchmark's work directory,
the filter files rendered for it), with the installed filter files and a
unique host name so that it shares the broker with other daemons safely.

Standard library and accel_daemon only.
"""

from __future__ import annotations

import os
import sys
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _daemonproc():
    """tests/daemonproc.py, by its path: the checkout is not on sys.path
    (it would hide the accel_daemon installed in the benchmark's venv)."""
    import importlib.util
    path = os.path.join(REPO, 'tests', 'daemonproc.py')
    spec = importlib.util.spec_from_file_location('daemonproc', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


daemonproc = _daemonproc()


def installed_filters() -> str:
    """The filter files installed with accel-daemon (data_files), else the
    checkout's."""
    path = os.path.join(sys.prefix, 'etc', 'accel-daemon', 'rootwrap.d')
    return path if os.path.isdir(path) else os.path.join(REPO, 'filters')


class Daemon(daemonproc.DaemonProcess):
    """One accel-daemon process; ``images`` is its allowed directory,
    ``log`` its log file and ``console`` what it writes to stdout."""

    def __init__(self, root: str, transport_url: str) -> None:
        super().__init__(root, 'accel-bench-%s' % uuid.uuid4().hex[:10],
                         filters=installed_filters(),
                         transport_url=transport_url)
        self.log = self.log_path
        self.console = self.log_path = os.path.join(self.root,
                                                    'daemon.console')
        self.transport_url = transport_url

    def start(self, timeout: float = 120.0) -> dict:
        """Start it and wait until it answers; returns its
        capabilities."""
        self.spawn(['--log-file', self.log])
        with self.client() as client:
            return self.wait_ready(client, timeout)

    def client(self):
        from oslo_config import cfg

        from accel_daemon.client import AccelClient
        from accel_daemon.conf import client as client_conf
        conf = cfg.ConfigOpts()
        client_conf.register_opts(conf)
        conf(['--config-file', self.config], project='accel-bench-client')
        conf.set_override('timeout', 5, group='accel_daemon_client')
        return AccelClient(conf, host=self.host)

    def stop(self, timeout: float = 60.0) -> None:
        if self.terminate(timeout) is None and self.running:
            self.kill_group()
