"""The two real implementations of ``manager.backend.Backend``.

``LocalBackend`` runs an Engine in this process (``accel-image --local``,
tests, a daemon deliberately run without privsep).  ``PrivsepBackend`` sends
every call to the privsep daemon through ``accel_daemon.privileged.ops``.
Both run the same path re-validation (``ops.do_*``) and return the same
plain types, so the task manager cannot tell them apart; errors are always
``AccelError`` subclasses with their fields.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from oslo_privsep import daemon as privsep_daemon

from accel_daemon import exception
from accel_daemon.engine.engine import Engine
from accel_daemon.engine.settings import Settings
from accel_daemon.privileged import ops

LOG = logging.getLogger(__name__)


class LocalBackend:
    """An Engine in-process; it has whatever privileges this process has."""

    def __init__(self, engine: Engine | Settings) -> None:
        if isinstance(engine, Settings):
            engine = Engine(engine)
        self.engine = engine

    def run(self, task_id: str, kind: str, params: dict) -> dict:
        return ops.do_run(self.engine, task_id, kind, params)

    def capabilities(self) -> dict:
        return ops.plain(self.engine.capabilities())

    def info(self, path: str, fmt: str) -> dict:
        return ops.do_info(self.engine, path, fmt)

    def progress(self, task_id: str) -> dict | None:
        return ops.plain(self.engine.progress(task_id))

    def cancel(self, task_id: str) -> bool:
        return bool(self.engine.cancel(task_id))

    def discard_partial(self, dst: str) -> list[str]:
        return ops.do_discard_partial(self.engine, dst)

    def reload_filters(self) -> int:
        return int(self.engine.reload_filters())


def _remote(call: Callable[..., Any], *args: Any) -> Any:
    """Call an entrypoint; rebuild typed errors; normalise tuples."""
    try:
        return ops.plain(call(*args))
    except ops.Failure as f:
        raise f.to_error() from None
    except (OSError, privsep_daemon.FailedToDropPrivileges) as e:
        # The channel broke (privsep daemon killed or crashed) or the helper
        # could not start; privsep restarts it on the next call.
        LOG.error('privsep call %s failed: %s', call, e)
        raise exception.HelperUnavailable(reason=str(e)) from None


class PrivsepBackend:
    """Each method is one privsep entrypoint call (privileged.init() first)."""

    def run(self, task_id: str, kind: str, params: dict) -> dict:
        return _remote(ops.run, task_id, kind, params)

    def capabilities(self) -> dict:
        return _remote(ops.capabilities)

    def info(self, path: str, fmt: str) -> dict:
        return _remote(ops.info, path, fmt)

    def progress(self, task_id: str) -> dict | None:
        return _remote(ops.progress, task_id)

    def cancel(self, task_id: str) -> bool:
        return _remote(ops.cancel, task_id)

    def discard_partial(self, dst: str) -> list[str]:
        return _remote(ops.discard_partial, dst)

    def reload_filters(self) -> int:
        return _remote(ops.reload_filters)
