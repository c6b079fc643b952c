# SPDX-License-Identifier: Apache-2.0
"""What the task manager needs from whatever does the work, and the two
real implementations.

``Backend`` is the protocol.  ``LocalBackend`` runs an Engine in this
process (``accel-image --local``, tests, a daemon deliberately run without
privsep).  ``PrivsepBackend`` sends every call to the privsep daemon through
``accel_daemon.privileged.ops``.  Both run the same validation
(``ops.do_*``) and return the same plain types, so the task manager cannot
tell them apart; errors are always ``AccelError`` subclasses with their
fields.  The unit tests' stand-in is ``tests.fakes.backend.FakeBackend``.
"""

from __future__ import annotations

from collections.abc import Callable
import logging
from typing import Any, Protocol, runtime_checkable

from oslo_privsep import daemon as privsep_daemon

from accel_daemon.engine.engine import Engine
from accel_daemon.engine.settings import Settings
from accel_daemon import exception
from accel_daemon import privileged
from accel_daemon.privileged import ops
from accel_daemon import records
from accel_daemon import wire

LOG = logging.getLogger(__name__)


@runtime_checkable
class Backend(Protocol):
    """Operations the task manager delegates; all arguments and results are
    plain types so they can cross the privsep channel."""

    def run(self, task_id: str, operation: str, params: dict[str, Any],
            caller: str | None = None) -> records.Result:
        """Run one operation to the end, confined to what ``caller`` may
        name (None: the host's allowed directories and devices); raise an
        AccelError on failure (``Cancelled`` when ``cancel(task_id)``
        stopped it)."""

    def capabilities(self) -> records.Capabilities: ...

    def info(self, path: str, fmt: str,
             caller: str | None = None) -> dict[str, Any]: ...

    def progress(self, task_id: str) -> records.TaskProgress | None:
        """``{'done', 'total'}`` of a running task, None when not running."""

    def cancel(self, task_id: str) -> bool:
        """Ask a running task to stop; False when it is not running."""

    def discard_partial(self, dst: str,
                        caller: str | None = None) -> list[str]:
        """Remove temporary outputs left for ``dst``; return what was
        removed."""

    def reload_filters(self) -> int: ...

    def stream_token(self, task_id: str) -> str:
        """The token a writer of task ``task_id``'s image stream presents
        (``engine.streams``); the key behind it never leaves the engine's
        process."""


class LocalBackend:
    """An Engine in-process; it has whatever privileges this process has."""

    def __init__(self, engine: Engine | Settings) -> None:
        if isinstance(engine, Settings):
            engine = Engine(engine)
        self.engine = engine

    def run(self, task_id: str, operation: str, params: dict[str, Any],
            caller: str | None = None) -> records.Result:
        return ops.do_run(self.engine, task_id, operation, params, caller)

    def capabilities(self) -> records.Capabilities:
        return wire.to_plain(self.engine.capabilities())

    def info(self, path: str, fmt: str,
             caller: str | None = None) -> dict[str, Any]:
        return ops.do_info(self.engine, path, fmt, caller)

    def progress(self, task_id: str) -> records.TaskProgress | None:
        return wire.to_plain(self.engine.progress(task_id))

    def cancel(self, task_id: str) -> bool:
        return bool(self.engine.cancel(task_id))

    def discard_partial(self, dst: str,
                        caller: str | None = None) -> list[str]:
        return ops.do_discard_partial(self.engine, dst, caller)

    def reload_filters(self) -> int:
        return int(self.engine.reload_filters())

    def stream_token(self, task_id: str) -> str:
        return self.engine.stream_token(task_id)


def reset_dead_channel(context: Any = None) -> bool:
    """Drop a privsep channel whose reader thread died of an error.

    oslo.privsep marks a channel stopped, and so restarts the helper on the
    next call, only when its reader sees a clean end of file.  A helper
    killed while a request was still unread in its socket resets the
    connection instead: the reader thread dies of ConnectionResetError,
    the channel still says it runs, and every later call fails with
    BrokenPipeError.  Stopping such a channel lets the next call start a
    new helper.  True when it did."""
    context = context or privileged.context
    channel = getattr(context, 'channel', None)
    reader = getattr(channel, 'reader_thread', None)
    if channel is None or reader is None or reader.is_alive():
        return False
    LOG.warning('The privsep channel lost its reader; the helper is '
                'started again on the next call')
    try:
        context.stop()
    except OSError:
        # Closing a reset socket may fail; the channel is dropped anyway.
        context.channel = None
    return True


def call_entrypoint(call: Callable[..., Any], *args: Any) -> Any:
    """Call an entrypoint; rebuild typed errors; normalise tuples."""
    try:
        return wire.to_plain(call(*args))
    except ops.Failure as f:
        raise f.to_error() from None
    except (OSError, privsep_daemon.FailedToDropPrivileges) as e:
        # The channel broke (privsep daemon killed or crashed) or the helper
        # could not start; privsep restarts it on the next call.
        LOG.error('privsep call %s failed: %s', call, e)
        reset_dead_channel()
        raise exception.HelperUnavailable(reason=str(e)) from None


class PrivsepBackend:
    """Each method is one privsep entrypoint call (after
    ``privileged.start.init()``)."""

    def run(self, task_id: str, operation: str, params: dict[str, Any],
            caller: str | None = None) -> records.Result:
        return call_entrypoint(ops.run, task_id, operation, params, caller)

    def capabilities(self) -> records.Capabilities:
        return call_entrypoint(ops.capabilities)

    def info(self, path: str, fmt: str,
             caller: str | None = None) -> dict[str, Any]:
        return call_entrypoint(ops.info, path, fmt, caller)

    def progress(self, task_id: str) -> records.TaskProgress | None:
        return call_entrypoint(ops.progress, task_id)

    def cancel(self, task_id: str) -> bool:
        return call_entrypoint(ops.cancel, task_id)

    def discard_partial(self, dst: str,
                        caller: str | None = None) -> list[str]:
        return call_entrypoint(ops.discard_partial, dst, caller)

    def reload_filters(self) -> int:
        return call_entrypoint(ops.reload_filters)

    def stream_token(self, task_id: str) -> str:
        return call_entrypoint(ops.stream_token, task_id)
