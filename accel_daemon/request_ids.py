# SPDX-License-Identifier: Apache-2.0
"""The caller's request ids: sent by the client, checked by the daemon,
kept in the task record and printed on the daemon's log lines.

Client side (``for_call``): the RPC ctxt of every call is a plain dict
holding at most ``request_id`` and ``global_request_id``, taken from the
caller's oslo.context ``RequestContext`` (or a plain dict), by default the
thread's current one.  Nothing else of the caller's context is sent: no
user, project, roles or token.

Daemon side (``from_ctxt``): each id is kept only when it is a string of
oslo.context's shape, ``req-`` and a lowercase UUID (the shape
oslo.middleware accepts for a global request id).  Anything else --
another shape, another type, a megabyte string, a log-injection attempt --
is *dropped*, not refused: the ids are only for correlating logs, so a
caller with an odd id still gets its work done, and a dropped id never
reaches a log line or the journal.  Other keys of the ctxt are ignored.

``current(ids)`` makes them the thread's current oslo.context, which is
where oslo.log's formatter finds them: every line logged inside the block
carries ``[<global_request_id> <request_id> ...]``.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator, Mapping

from oslo_context import context as oslo_context

KEYS = ('request_id', 'global_request_id')
REQUEST_ID_RE = re.compile(
    r'req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}')

RequestIds = dict[str, Any]


def valid(value: Any) -> bool:
    return (isinstance(value, str)
            and REQUEST_ID_RE.fullmatch(value) is not None)


def for_call(context: Any = None) -> dict[str, str]:
    """The RPC ctxt for a call made on behalf of ``context``: an oslo.context
    ``RequestContext`` (or any object with those attributes), a mapping, or
    None for the thread's current oslo.context (none: an empty ctxt).

    Only string ids are sent; the daemon checks their shape."""
    if context is None:
        context = oslo_context.get_current()
        if context is None:
            return {}
    if isinstance(context, Mapping):
        values = {k: context.get(k) for k in KEYS}
    else:
        values = {k: getattr(context, k, None) for k in KEYS}
    return {k: v for k, v in values.items() if isinstance(v, str)}


def from_ctxt(ctxt: Any) -> RequestIds:
    """``{'request_id': ..., 'global_request_id': ...}`` from a received
    ctxt, each None unless present and well-formed."""
    if not isinstance(ctxt, Mapping):
        return {k: None for k in KEYS}
    return {k: ctxt.get(k) if valid(ctxt.get(k)) else None for k in KEYS}


def dropped(ctxt: Any) -> list[str]:
    """Names of the ids present in ``ctxt`` but not kept by ``from_ctxt``."""
    if not isinstance(ctxt, Mapping):
        return []
    return [k for k in KEYS if ctxt.get(k) is not None
            and not valid(ctxt.get(k))]


@contextlib.contextmanager
def current(ids: Mapping[str, Any] | None) -> Iterator[None]:
    """Make ``ids`` (a task dict or ``from_ctxt``'s answer) the thread's
    current oslo.context for the block, then put back whatever was there.
    Without any id, the block runs with no current context, so a thread
    reused from a pool never shows an earlier call's ids."""
    previous = oslo_context.get_current()
    ids = ids or {}
    rid = ids.get('request_id')
    gid = ids.get('global_request_id')
    if rid or gid:
        # overwrite=True: the constructor makes it the current context.
        # Without a request id of the caller's, oslo.context makes one up.
        oslo_context.RequestContext(request_id=rid, global_request_id=gid,
                                    overwrite=True)
    else:
        _set_current(None)
    try:
        yield
    finally:
        _set_current(previous)


def _set_current(ctx: oslo_context.RequestContext | None) -> None:
    if ctx is not None:
        ctx.update_store()
    else:
        # oslo.context has no public way to clear its thread store.
        store = getattr(oslo_context, '_request_store')
        store.context = None
