"""Client library for services that use accel-daemon (cinder, nova).

    from accel_daemon.client import AccelClient

    client = AccelClient(CONF)           # the service's own oslo.config
    task = client.compress('/var/lib/accel-daemon/images/v.raw',
                           '/var/lib/accel-daemon/images/v.raw.gz')
    result = task.wait(timeout=600)      # {'output', 'size', 'sha256', ...}

Long operations return a ``TaskHandle`` at once.  Errors are the typed
``accel_daemon.exception`` classes (``PathNotAllowed``, ``FormatMismatch``,
``Cancelled``, ``ServiceUnavailable``...), whether the daemon refused the
request or the task failed later.

Eventlet: cinder-volume and nova-compute may run monkey-patched.  Nothing
here sleeps or blocks outside oslo.messaging calls, and ``wait()`` waits
with repeated short ``task_wait`` calls that block inside the daemon, so the
caller's process only waits on oslo.messaging's (patched) reply queue and
other green threads keep running.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from oslo_config import cfg

from accel_daemon import exception
from accel_daemon.conf import rpc as rpc_conf
from accel_daemon.manager.states import FINAL_STATES
from accel_daemon.rpc import rpcapi

# A daemon that answers task_wait at once (its own max_task_wait is 0)
# must not turn wait() into a busy loop.
_MIN_ROUND_TRIP = 0.05


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register ``[accel_daemon_client]`` on the caller's configuration
    (AccelClient does it too; call this first to set overrides early)."""
    rpc_conf.register_client_opts(conf)


class TaskHandle:
    """One task on one daemon; ``task`` is the last task dict seen."""

    def __init__(self, client: AccelClient, task: dict[str, Any]) -> None:
        self._client = client
        self.task = task

    def __repr__(self) -> str:
        return '<TaskHandle %s %s %s>' % (self.id, self.kind, self.state)

    @property
    def id(self) -> str:
        return self.task['id']

    @property
    def kind(self) -> str:
        return self.task['kind']

    @property
    def state(self) -> str:
        return self.task['state']

    @property
    def progress(self) -> dict[str, int]:
        return self.task.get('progress') or {'done': 0, 'total': 0}

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def result(self) -> dict[str, Any] | None:
        """The result dict of a succeeded task, else None."""
        return self.task.get('result') if self.state == 'succeeded' else None

    @property
    def error(self) -> exception.AccelError | None:
        """The typed error of a failed or cancelled task, else None."""
        if self.state == 'cancelled' and not self.task.get('error'):
            return exception.Cancelled()
        if self.state in ('failed', 'cancelled'):
            return exception.AccelError.from_dict(self.task['error'])
        return None

    def status(self) -> dict[str, Any]:
        """Fetch and return the current task dict."""
        self.task = self._client._api.task_get(self._client.host, self.id)
        return self.task

    def cancel(self) -> dict[str, Any]:
        """Ask the daemon to cancel; return the task dict it answers."""
        self.task = self._client._api.task_cancel(self._client.host, self.id)
        return self.task

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the task; return its result or raise its typed error.

        Raises ``TaskWaitTimeout`` after ``timeout`` seconds (None: no
        limit); the task keeps running in the daemon.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            step = self._client.wait_interval
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise exception.TaskWaitTimeout(task_id=self.id,
                                                    timeout=timeout)
                step = min(step, left)
            started = time.monotonic()
            self.task = self._client._api.task_wait(
                self._client.host, self.id, step)
            if not self.done and time.monotonic() - started < _MIN_ROUND_TRIP:
                time.sleep(_MIN_ROUND_TRIP)     # green under eventlet
        err = self.error
        if err is not None:
            raise err
        # Done without an error: succeeded, so this is ``self.result``.
        return self.task['result']


class AccelClient:
    """Calls one accel-daemon; built from the caller's configuration.

    Registers ``[accel_daemon_client]`` options on ``conf``; the transport
    comes from ``conf``'s oslo.messaging options (``transport_url``...).
    ``host`` overrides ``[accel_daemon_client] host``; by default the daemon
    on this machine is called.
    """

    def __init__(self, conf: cfg.ConfigOpts, host: str | None = None,
                 transport: Any = None) -> None:
        register_opts(conf)
        opts = conf.accel_daemon_client
        self.conf = conf
        self.host = host or opts.host or socket.gethostname()
        self.wait_interval = opts.wait_interval
        self._own_transport = transport is None
        self._transport = transport or rpcapi.get_transport(conf)
        self._api = rpcapi.AccelAPI(self._transport, topic=opts.topic,
                                    timeout=opts.timeout)

    def close(self) -> None:
        if self._own_transport:
            self._transport.cleanup()

    def __enter__(self) -> AccelClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _handle(self, task: dict[str, Any]) -> TaskHandle:
        return TaskHandle(self, task)

    # -- quick calls --------------------------------------------------------
    def capabilities(self) -> dict[str, Any]:
        return self._api.capabilities(self.host)

    def image_info(self, path: str, format: str) -> dict[str, Any]:
        return self._api.image_info(self.host, path, format)

    # -- operations (each returns a TaskHandle at once) ---------------------
    def compress(self, src: str, dst: str, driver: str | None = None,
                 level: int | None = None, format: str = 'gzip',
                 checksum: bool | None = None,
                 replace: bool = False,
                 bps_limit: int | None = None) -> TaskHandle:
        return self._handle(self._api.compress(
            self.host, src, dst, driver=driver, level=level, format=format,
            checksum=checksum, replace=replace, bps_limit=bps_limit))

    def decompress(self, src: str, dst: str, max_bytes: int | None = None,
                   checksum: bool | None = None,
                   replace: bool = False,
                   bps_limit: int | None = None) -> TaskHandle:
        return self._handle(self._api.decompress(
            self.host, src, dst, max_bytes=max_bytes, checksum=checksum,
            replace=replace, bps_limit=bps_limit))

    def convert(self, src: str, dst: str, src_format: str, dst_format: str,
                compress: bool = False, target_is_zero: bool = False,
                checksum: bool | None = None,
                max_bytes: int | None = None,
                replace: bool = False,
                bps_limit: int | None = None,
                sparse: bool | None = None) -> TaskHandle:
        return self._handle(self._api.convert(
            self.host, src, dst, src_format, dst_format, compress=compress,
            target_is_zero=target_is_zero, checksum=checksum,
            max_bytes=max_bytes, replace=replace, bps_limit=bps_limit,
            sparse=sparse))

    def copy(self, src: str, dst: str, checksum: bool | None = None,
             replace: bool = False,
             bps_limit: int | None = None) -> TaskHandle:
        return self._handle(self._api.copy(self.host, src, dst,
                                           checksum=checksum,
                                           replace=replace,
                                           bps_limit=bps_limit))

    def upload(self, src: str, dst: str, src_format: str, disk_format: str,
               checksum: bool | None = None,
               replace: bool = False,
               bps_limit: int | None = None) -> TaskHandle:
        return self._handle(self._api.upload(
            self.host, src, dst, src_format, disk_format, checksum=checksum,
            replace=replace, bps_limit=bps_limit))

    def download(self, src: str, dst: str, disk_format: str, dst_format: str,
                 max_bytes: int | None = None,
                 checksum: bool | None = None,
                 replace: bool = False,
                 bps_limit: int | None = None,
                 sparse: bool | None = None) -> TaskHandle:
        return self._handle(self._api.download(
            self.host, src, dst, disk_format, dst_format,
            max_bytes=max_bytes, checksum=checksum, replace=replace,
            bps_limit=bps_limit, sparse=sparse))

    # -- tasks --------------------------------------------------------------
    def task(self, task_id: str) -> TaskHandle:
        """A handle for an existing task (``TaskNotFound`` if unknown)."""
        return self._handle(self._api.task_get(self.host, task_id))

    def tasks(self, state: str | None = None,
              limit: int = 100) -> list[TaskHandle]:
        return [self._handle(t)
                for t in self._api.task_list(self.host, state, limit)]
