# SPDX-License-Identifier: Apache-2.0
"""The daemon the integration tests talk to, in the caller's process.

The real RPC endpoint, TaskManager, LocalBackend and Engine (isal, and
the shipped filters, qemu-img included, rewritten to a temporary allowed
directory) on oslo.messaging's fake:// transport.  Used by the tests of
accel_daemon.integrations that run inside the cinder and nova venvs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Any
import uuid

from oslo_config import cfg
from oslo_messaging import conffixture

from accel_daemon.client import AccelClient
from accel_daemon.engine.settings import Settings
from accel_daemon.manager.backends import LocalBackend
from accel_daemon.manager.journal import Journal
from accel_daemon.manager.tasks import TaskManager
from accel_daemon.rpc import endpoint as rpc_endpoint
from accel_daemon.rpc import rpcapi
from accel_daemon.rpc import server as rpc_server

# The shipped filters name this directory; rewritten to the test's.
DEFAULT_DIR = '/var/lib/accel-daemon/images'
FILTERS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       os.pardir, os.pardir, 'filters')
MIB = 1024 * 1024


class Daemon:
    """Started by ``start()``; ``images`` is its allowed directory."""

    def __init__(self, prefix: str, **settings: Any) -> None:
        # Further engine Settings (e.g. sysfs_root).
        self.settings = settings
        self.host = '%s-%s' % (prefix, uuid.uuid4().hex[:8])
        self.root = os.path.realpath(tempfile.mkdtemp(prefix=prefix + '-'))
        self.images = os.path.join(self.root, 'images')
        self.conf = cfg.ConfigOpts()
        self.clients: list[AccelClient] = []

    def start(self) -> Daemon:
        filters = os.path.join(self.root, 'filters')
        for d in (self.images, filters):
            os.makedirs(d)
        for name in os.listdir(FILTERS):
            with open(os.path.join(FILTERS, name)) as f:
                text = f.read()
            with open(os.path.join(filters, name), 'w') as f:
                f.write(text.replace(DEFAULT_DIR, self.images))
        self.fixture = conffixture.ConfFixture(self.conf,
                                               transport_url='fake:/')
        self.fixture.setUp()
        self.conf([], default_config_files=[])
        self.conf.set_override('control_exchange', 'test-%s' % self.host)
        settings = Settings(allowed_dirs=(self.images,),
                            filters_path=(filters,), drivers=('isal',),
                            **self.settings)
        backend = LocalBackend(settings)
        self.manager = TaskManager(
            backend, Journal(os.path.join(self.root, 'tasks.db')), workers=2)
        self.manager.start()
        self.transport = rpcapi.get_transport(self.conf)
        assert type(self.transport._driver).__name__ == 'FakeDriver'
        endpoint = rpc_endpoint.AccelEndpoint(self.manager, backend,
                                              settings, max_wait=0.5)
        self.server = rpc_server.build(self.transport, 'accel_daemon',
                                       self.host, [endpoint])
        self.server.start()
        return self

    def client(self, host: str | None = None,
               timeout: int | None = None) -> AccelClient:
        """A client of this daemon (or, with ``host``, of a daemon nobody
        runs: every call times out after ``timeout`` seconds)."""
        if timeout is not None:
            self.conf.set_override('timeout', timeout,
                                   group='accel_daemon_client')
        try:
            client = AccelClient(self.conf, host=host or self.host)
        finally:
            if timeout is not None:
                self.conf.clear_override('timeout',
                                         group='accel_daemon_client')
        client.wait_interval = 0.2
        self.clients.append(client)
        return client

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.server.stop()
        self.manager.stop(1.0)
        self.server.wait()
        self.transport.cleanup()
        self.fixture.cleanUp()
        shutil.rmtree(self.root, ignore_errors=True)


def qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(('qemu-img',) + args, capture_output=True,
                          text=True, check=False)


def no_strings(sig):
    """The signature without annotations (ours are strings: PEP 563)."""
    return sig.replace(
        parameters=[p.replace(annotation=p.empty)
                    for p in sig.parameters.values()],
        return_annotation=sig.empty)
