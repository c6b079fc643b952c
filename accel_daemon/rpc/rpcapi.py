# SPDX-License-Identifier: Apache-2.0
"""Client side of the accel-daemon RPC API (low level).

Every call is addressed to one daemon (``server=host``) and pinned to the
API version that introduced the method.  Errors come back typed: the
daemon's ``AccelError`` subclasses are rebuilt by oslo.messaging (their
module is in ``allowed_remote_exmods``) and cleaned of oslo.messaging's
``*_Remote`` wrapper class; an unknown method or version becomes
``InvalidRequest`` (the daemon answers so itself; older ones sent
oslo.messaging's NoSuchMethod/UnsupportedVersion), so does a malformed
version refused before sending; a daemon that does not answer becomes
``ServiceUnavailable``.  ``accel_daemon.client`` builds task handles on top.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from oslo_config import cfg
import oslo_messaging

from accel_daemon import exception
from accel_daemon import operations
from accel_daemon import records

LOG = logging.getLogger(__name__)

TOPIC = 'accel_daemon'
# accel-daemon's own exchange, whatever the caller's control_exchange says:
# nova sets ``control_exchange = nova``, cinder keeps oslo's default, and
# both must reach the same daemon.  The daemon's RPC
# server listens on it too (``accel_daemon.rpc.server``).
EXCHANGE = 'accel_daemon'
EXMODS = [exception.__name__]
_REMOTE_SUFFIX = '_Remote'
# RemoteError types that mean "the daemon does not know what you asked for".
_REQUEST_ERRORS = ('NoSuchMethod', 'UnsupportedVersion', 'InvalidTarget')


def register_messaging_opts(conf: cfg.ConfigOpts) -> None:
    """Register the oslo.messaging options it only puts on ``cfg.CONF``.

    oslo.messaging 18.x registers its tracing and metrics options on the
    global configuration at import time, yet reads them from the transport's
    ``conf`` on every call: a caller with its own ``ConfigOpts`` would get
    NoSuchOptError from ``call()``.
    """
    if conf is cfg.CONF:
        return
    from oslo_messaging._metrics import client as metrics
    conf.register_opts(metrics.oslo_messaging_metrics,
                       group='oslo_messaging_metrics')
    try:
        from oslo_messaging._tracing import client as tracing
    except ImportError:
        # Tracing came with oslo.messaging 18.3; 18.2 (the 2026.2 upper
        # constraints) has none, and reads no such option.
        return
    conf.register_opts(tracing.oslo_messaging_tracing,
                       group='oslo_messaging_tracing')


def get_transport(conf: cfg.ConfigOpts,
                  url: str | None = None) -> oslo_messaging.Transport:
    """An RPC transport that may rebuild accel-daemon's exceptions."""
    register_messaging_opts(conf)
    return oslo_messaging.get_rpc_transport(conf, url=url,
                                            allowed_remote_exmods=EXMODS)


def _clean(err: exception.AccelError) -> exception.AccelError:
    # oslo.messaging subclasses the class as "<Name>_Remote" with a __str__
    # holding the server's traceback; callers want the plain class.
    name = type(err).__name__
    if name.endswith(_REMOTE_SUFFIX):
        name = name[:-len(_REMOTE_SUFFIX)]
    return exception.AccelError.from_dict(
        {'type': name, 'message': err.message, 'fields': err.fields})


def _added(**optional: tuple[str, Any]) -> tuple[str, dict[str, Any]]:
    """The version to send and the arguments to add, from arguments newer
    than 1.0 given as ``name=(version that added it, value)``: one is sent
    only when given (not None), and the call is pinned to the newest
    version among those sent, so an older daemon still takes every call
    that does not use what it lacks."""
    given = {name: value for name, (_, value) in optional.items()
             if value is not None}
    versions = ['1.0'] + [optional[name][0] for name in given]
    newest = max(versions, key=lambda v: tuple(map(int, v.split('.'))))
    return newest, given


def _from_remote(err: oslo_messaging.RemoteError) -> exception.AccelError:
    if err.exc_type in _REQUEST_ERRORS:
        return exception.InvalidRequest(reason=err.value)
    return exception.InternalError(
        reason='%s: %s' % (err.exc_type, err.value))


class AccelAPI:
    """Client side of the accel-daemon RPC API.

    API version history:

    * 1.0 - Initial version: capabilities, image_info, compress,
      decompress, convert, copy, upload, download, task_get, task_list,
      task_wait, task_cancel; every task method takes an optional
      checksum flag.
    * 1.1 - convert takes an optional max_bytes (the largest virtual size
      the caller accepts; refused before anything is written).  Sent as
      1.1 only when given, so a 1.0 daemon still takes every other call.
    * 1.2 - replace on compress, decompress, convert, copy, upload,
      download (publish over an existing regular file, atomically);
      bps_limit (a bandwidth limit, bytes per second) on the same six;
      sparse on convert and download.  Sent as 1.2 only when replace=True
      or bps_limit or sparse is given.
    * 1.3 - container ('gzip' or 'zstd') on decompress and download: the
      compression the input must be, refused (CorruptInput) when its magic
      says otherwise.  Sent as 1.3 only when given.
    * 1.4 - stream_in: the caller streams an image over a local socket
      (``accel_daemon.streamproto``); the answer is the task plus
      ``stream`` (the socket's path and the writer's one-time token).
    * 1.5 - stream_out: the daemon streams an image (compressed or not)
      to the caller over a local socket, answered as stream_in is.

    To add a method or an argument: bump the minor version of
    ``accel_daemon.operations.API_VERSION`` (the one constant the endpoint
    serves and this client is capped at), add a line above, send the new
    argument only when it is given and pin the call to the new version
    (``_added``), and keep the endpoint accepting older calls.  The steps
    for every surface are in doc/source/contributing-operations.rst.
    """

    # The same constant as the endpoint's: one place to bump.
    VERSION = operations.API_VERSION

    def __init__(self, transport: oslo_messaging.Transport,
                 topic: str = TOPIC, timeout: float = 60,
                 version_cap: str | None = None) -> None:
        target = oslo_messaging.Target(exchange=EXCHANGE, topic=topic,
                                       version=self.VERSION)
        self.timeout = timeout
        # The RPC ctxt of every call: the caller's request ids only
        # (``accel_daemon.request_ids``); see ``with_context``.
        self._ctxt: dict[str, str] = {}
        self._client = oslo_messaging.get_rpc_client(
            transport, target, timeout=timeout, version_cap=version_cap)

    def with_context(self, ctxt: dict[str, str]) -> AccelAPI:
        """This API, sending ``ctxt`` as the RPC context of its calls
        (shares the RPC client: cheap, thread-safe)."""
        api = copy.copy(self)
        api._ctxt = dict(ctxt)
        return api

    def call(self, host: str, method: str, version: str = '1.0',
             rpc_timeout: float | None = None, **kwargs: Any) -> Any:
        """Call ``method`` on the daemon named ``host``; raise typed."""
        rpc_timeout = rpc_timeout or self.timeout
        if not isinstance(version, str):
            # prepare() would raise AttributeError on it.
            raise exception.InvalidRequest(
                reason='version must be a string, not %s'
                       % type(version).__name__)
        try:
            cctxt = self._client.prepare(server=host, version=version,
                                         timeout=rpc_timeout)
        except oslo_messaging.MessagingException as e:
            # A malformed version, refused before anything is sent.
            raise exception.InvalidRequest(reason=str(e)) from None
        try:
            return cctxt.call(dict(self._ctxt), method, **kwargs)
        except exception.AccelError as e:
            raise _clean(e) from None
        except oslo_messaging.RPCVersionCapError as e:
            raise exception.InvalidRequest(reason=str(e)) from None
        except oslo_messaging.MessagingTimeout:
            raise exception.ServiceUnavailable(
                reason='no answer from host %s within %ss'
                       % (host, rpc_timeout)) from None
        except oslo_messaging.RemoteError as e:
            raise _from_remote(e) from None
        except (oslo_messaging.NoSuchMethod,
                oslo_messaging.UnsupportedVersion) as e:
            # Raised as themselves by in-process transports (fake://);
            # over a broker they arrive as RemoteError (above).
            raise exception.InvalidRequest(reason=str(e)) from None

    # -- 1.0 ----------------------------------------------------------------
    def capabilities(self, host: str) -> records.Capabilities:
        return self.call(host, 'capabilities')

    def image_info(self, host: str, path: str,
                   format: str) -> dict[str, Any]:
        return self.call(host, 'image_info', path=path, format=format)

    def compress(self, host: str, src: str, dst: str,
                 driver: str | None = None, level: int | None = None,
                 format: str = 'gzip',
                 checksum: bool | None = None,
                 replace: bool = False,
                 bps_limit: int | None = None) -> records.Task:
        version, extra = _added(replace=('1.2', replace or None),
                                bps_limit=('1.2', bps_limit))
        return self.call(host, 'compress', version=version, src=src,
                         dst=dst, driver=driver, level=level, format=format,
                         checksum=checksum, **extra)

    def decompress(self, host: str, src: str, dst: str,
                   max_bytes: int | None = None,
                   checksum: bool | None = None,
                   replace: bool = False,
                   bps_limit: int | None = None,
                   container: str | None = None) -> records.Task:
        version, extra = _added(replace=('1.2', replace or None),
                                bps_limit=('1.2', bps_limit),
                                container=('1.3', container))
        return self.call(host, 'decompress', version=version, src=src,
                         dst=dst, max_bytes=max_bytes, checksum=checksum,
                         **extra)

    def convert(self, host: str, src: str, dst: str, src_format: str,
                dst_format: str, compress: bool = False,
                target_is_zero: bool = False,
                checksum: bool | None = None,
                max_bytes: int | None = None,
                replace: bool = False,
                bps_limit: int | None = None,
                sparse: bool | None = None) -> records.Task:
        version, extra = _added(max_bytes=('1.1', max_bytes),
                                replace=('1.2', replace or None),
                                bps_limit=('1.2', bps_limit),
                                sparse=('1.2', sparse))
        return self.call(host, 'convert', version=version, src=src, dst=dst,
                         src_format=src_format, dst_format=dst_format,
                         compress=compress, target_is_zero=target_is_zero,
                         checksum=checksum, **extra)

    def copy(self, host: str, src: str, dst: str,
             checksum: bool | None = None, replace: bool = False,
             bps_limit: int | None = None) -> records.Task:
        version, extra = _added(replace=('1.2', replace or None),
                                bps_limit=('1.2', bps_limit))
        return self.call(host, 'copy', version=version, src=src, dst=dst,
                         checksum=checksum, **extra)

    def upload(self, host: str, src: str, dst: str, src_format: str,
               disk_format: str, checksum: bool | None = None,
               replace: bool = False,
               bps_limit: int | None = None) -> records.Task:
        version, extra = _added(replace=('1.2', replace or None),
                                bps_limit=('1.2', bps_limit))
        return self.call(host, 'upload', version=version, src=src, dst=dst,
                         src_format=src_format, disk_format=disk_format,
                         checksum=checksum, **extra)

    def download(self, host: str, src: str, dst: str, disk_format: str,
                 dst_format: str, max_bytes: int | None = None,
                 checksum: bool | None = None,
                 replace: bool = False,
                 bps_limit: int | None = None,
                 sparse: bool | None = None,
                 container: str | None = None) -> records.Task:
        version, extra = _added(replace=('1.2', replace or None),
                                bps_limit=('1.2', bps_limit),
                                sparse=('1.2', sparse),
                                container=('1.3', container))
        return self.call(host, 'download', version=version, src=src,
                         dst=dst, disk_format=disk_format,
                         dst_format=dst_format, max_bytes=max_bytes,
                         checksum=checksum, **extra)

    def stream_in(self, host: str, dst: str, disk_format: str,
                  dst_format: str, container: str | None = None,
                  max_bytes: int | None = None, replace: bool = False,
                  sparse: bool | None = None,
                  target_is_zero: bool | None = None) -> records.Task:
        return self.call(host, 'stream_in', version='1.4', dst=dst,
                         disk_format=disk_format, dst_format=dst_format,
                         container=container, max_bytes=max_bytes,
                         replace=replace, sparse=sparse,
                         target_is_zero=target_is_zero)

    def stream_out(self, host: str, src: str, src_format: str,
                   disk_format: str, compression: str | None = None,
                   level: int | None = None,
                   compress: bool | None = None,
                   bps_limit: int | None = None) -> records.Task:
        return self.call(host, 'stream_out', version='1.5', src=src,
                         src_format=src_format, disk_format=disk_format,
                         compression=compression, level=level,
                         compress=compress, bps_limit=bps_limit)

    def task_get(self, host: str, task_id: str) -> records.Task:
        return self.call(host, 'task_get', task_id=task_id)

    def task_list(self, host: str, state: str | None = None,
                  limit: int = 100) -> list[records.Task]:
        return self.call(host, 'task_list', state=state, limit=limit)

    def task_wait(self, host: str, task_id: str,
                  timeout: float) -> records.Task:
        # The daemon blocks up to ``timeout``: give the call that long on
        # top of the usual answer time.
        return self.call(host, 'task_wait',
                         rpc_timeout=self.timeout + timeout,
                         task_id=task_id, timeout=timeout)

    def task_cancel(self, host: str, task_id: str) -> records.Task:
        return self.call(host, 'task_cancel', task_id=task_id)
