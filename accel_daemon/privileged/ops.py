# SPDX-License-Identifier: Apache-2.0
"""Privileged entrypoints: one verb each, run inside the privsep daemon.

Each entrypoint is a thin wrapper over an unprivileged twin (``do_*``) that
takes the Engine as an argument, so the same checks run for the in-process
``LocalBackend`` and can be unit-tested without privsep.  Every twin
re-validates the paths it is given *in this process* (realpath under the
allowed directories or an allowed block device, no symbolic link) before
the Engine sees them: the RPC layer's checks ran in another process, maybe
on another view of the filesystem, and must not be trusted here.  The
Engine checks again when it opens the files and enforces the filters
through ``engine.process.run``.

Errors cross the privsep channel as ``Failure(type, message, fields)``:
oslo.privsep rebuilds an exception as ``cls(*e.args)``, which for an
``AccelError`` would keep the class and message but lose the fields.
``backends.PrivsepBackend`` turns a ``Failure`` back into the original
``AccelError`` subclass.  Anything else (a bug) becomes ``InternalError``
here, so no exception that cannot be rebuilt ever reaches the channel.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import logging
import threading
from typing import Any

from oslo_config import cfg

from accel_daemon import conf as accel_conf
from accel_daemon.engine.engine import Engine
from accel_daemon.engine import paths
from accel_daemon.engine import process
from accel_daemon.engine.settings import Settings
from accel_daemon import exception
from accel_daemon import operations
from accel_daemon import privileged
from accel_daemon.privileged import caps
from accel_daemon import records
from accel_daemon import wire

LOG = logging.getLogger(__name__)

_state_lock = threading.Lock()
_engine: Engine | None = None


class Failure(Exception):
    """An AccelError in transit: args are (type name, message, fields)."""

    def to_error(self) -> exception.AccelError:
        name, message, fields = (tuple(self.args) + (None, None, None))[:3]
        return exception.AccelError.from_dict(
            {'type': name, 'message': message, 'fields': dict(fields or {})})


def use_engine(engine: Engine | None) -> Engine | None:
    """Set the Engine the entrypoints use; return the previous one.

    The privsep daemon builds its own on first use; tests inject one.
    """
    global _engine
    with _state_lock:
        previous, _engine = _engine, engine
    return previous


def engine() -> Engine:
    global _engine
    with _state_lock:
        if _engine is None:
            # The privsep daemon got the parent's --config-file arguments.
            _engine = Engine(accel_conf.settings(cfg.CONF))
        return _engine


# -- the unprivileged twins ---------------------------------------------------
def _check_id(task_id: Any) -> str:
    if not isinstance(task_id, str) or not task_id:
        raise exception.InvalidRequest(reason='task_id must be a string')
    return task_id


def as_caller(eng: Engine, caller: Any) -> Engine:
    """``eng`` confined to ``caller``'s directories and devices, judged
    here from this process's own configuration (the caller's name is all
    that crosses the channel); None: the host's whole envelope."""
    if caller is None:
        return eng
    if not isinstance(caller, str):
        raise exception.InvalidRequest(reason='caller must be a string')
    return eng.for_caller(caller)


def do_run(eng: Engine, task_id: str, name: str, params: Any,
           caller: str | None = None) -> records.Result:
    """Validate (again: the RPC layer ran in another process) and run.

    Paths are not judged here by name: the engine opens each one once and
    judges the opened file (``engine.files``), in this process, against
    what ``caller`` may name.
    """
    result = operations.run(as_caller(eng, caller), _check_id(task_id),
                            name, wire.to_plain(params))
    return wire.to_plain(result)


def do_info(eng: Engine, path: str, fmt: str,
            caller: str | None = None) -> dict[str, Any]:
    args = operations.validate('image_info', {'path': path, 'format': fmt})
    return wire.to_plain(as_caller(eng, caller).image_info(args['path'],
                                                           args['format']))


def check_dst_dir(settings: Settings, dst: Any,
                  caller: str | None = None) -> str:
    """Confine ``dst`` to ``caller``'s directories whether or not it exists
    (crash recovery: the final output may already have been published)."""
    scope = settings.scope(caller)
    if scope is None:
        raise exception.InvalidRequest(reason='unknown caller %r'
                                       % (caller,))
    return paths.check_output_dir(dst, scope.allowed_dirs)


def do_discard_partial(eng: Engine, dst: str,
                       caller: str | None = None) -> list[str]:
    check_dst_dir(eng.settings, dst, caller)
    return wire.to_plain(as_caller(eng, caller).discard_partial(dst))


# -- entrypoints -----------------------------------------------------------
def _privileged(func: Callable[..., Any]) -> Callable[..., Any]:
    """Harden the thread, run, and make every error cross the channel."""
    @functools.wraps(func)
    def inner(*args: Any, **kwargs: Any) -> Any:
        ctx = privileged.context
        if caps.harden_thread(ctx.conf.capabilities,
                              privileged.CHILD_CAPABILITIES):
            # In the helper: what a tool leaves behind comes back to us,
            # to be killed (engine.process.sweep_orphans).
            process.adopt_orphans()
        try:
            return func(*args, **kwargs)
        except exception.AccelError as e:
            d = e.to_dict()
            raise Failure(d['type'], d['message'], d['fields']) from None
        except Exception as e:
            LOG.exception('Unexpected error in privileged %s', func.__name__)
            d = exception.InternalError(
                reason='%s: %s' % (type(e).__name__, e)).to_dict()
            raise Failure(d['type'], d['message'], d['fields']) from None
    return privileged.context.entrypoint(inner)


@_privileged
def run(task_id: str, operation: str, params: dict[str, Any],
        caller: str | None = None) -> records.Result:
    return do_run(engine(), task_id, operation, params, caller)


@_privileged
def capabilities() -> records.Capabilities:
    return wire.to_plain(engine().capabilities())


@_privileged
def info(path: str, fmt: str, caller: str | None = None) -> dict[str, Any]:
    return do_info(engine(), path, fmt, caller)


@_privileged
def progress(task_id: str) -> records.TaskProgress | None:
    return wire.to_plain(engine().progress(_check_id(task_id)))


@_privileged
def cancel(task_id: str) -> bool:
    return bool(engine().cancel(_check_id(task_id)))


@_privileged
def discard_partial(dst: str, caller: str | None = None) -> list[str]:
    return do_discard_partial(engine(), dst, caller)


@_privileged
def stream_token(task_id: str) -> str:
    return engine().stream_token(_check_id(task_id))


@_privileged
def reload_filters() -> int:
    return int(engine().reload_filters())
