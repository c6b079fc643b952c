# SPDX-License-Identifier: Apache-2.0
"""Server side of the accel-daemon RPC API.

The endpoint validates and delegates, nothing else: every argument of every
method is checked for presence and type (unknown ones are refused), paths are
checked against the allowed directories before a task is queued, and the
work goes to the task manager (long operations) or the backend (quick ones).
The privileged layer checks every path again: this first check exists to
answer a bad request at once, with a typed error, instead of queueing a task
that can only fail.

Methods take ``**kwargs`` rather than named parameters so that a missing or
unknown argument is answered with ``InvalidRequest`` by our own validation
instead of a ``TypeError`` from the dispatcher.

Errors: ``AccelError`` subclasses are raised as they are.  oslo.messaging
rebuilds a remote exception on the client as ``cls(*args, **kwargs)`` from
the exception's ``args`` and its ``kwargs`` attribute, so ``rpc_method`` sets
``kwargs`` to the error's plain fields: the client gets the same class with
the same fields (``accel_daemon.rpc.rpcapi`` strips oslo.messaging's
``_Remote`` wrapper class).  They are wrapped in ``ExpectedException`` so
the server does not log a traceback for a refused request.

Only the methods named in ``METHODS`` are reachable over RPC, and the
message itself (method, version, argument names) is checked before it gets
here: see ``accel_daemon.rpc.server``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Mapping

from oslo_context import context as oslo_context
import oslo_messaging

from accel_daemon.engine import paths
from accel_daemon.engine.settings import Settings
from accel_daemon import exception
from accel_daemon import operations
from accel_daemon import records
from accel_daemon import request_ids
from accel_daemon import streamproto

LOG = logging.getLogger(__name__)

# Every method reachable over RPC, with its arguments: the operations and
# the task calls of ``accel_daemon.operations``.
METHODS: dict[str, operations.Operation] = {**operations.OPERATIONS,
                                            **operations.CALLS}
PATH_CHECKS = {'input': paths.check_input, 'output': paths.check_output}


def validate(method: str, args: dict[str, Any]) -> dict[str, Any]:
    """The arguments of ``method``, checked against the operation table;
    None (or left out) means "use the default"."""
    return operations.validate(method, args)


# The dispatcher calls ``method(ctxt, **args)``: an argument named like one
# of the method's own parameters would be a TypeError before any validation.
RESERVED_ARGS = operations.RESERVED


def shown(value: Any, limit: int = 64) -> str:
    """``repr`` cut to ``limit`` characters: safe to log and to send back
    (NULs, surrogates and megabyte strings come out escaped and short)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + '...'


def check_arg_names(method: str, args: Mapping[str, Any]) -> None:
    """Refuse argument names that are not identifiers or are reserved."""
    for name in args:
        if not isinstance(name, str) or not name.isidentifier():
            raise exception.InvalidRequest(
                reason='%s: %s is not an argument name'
                       % (method, shown(name)))
        if name in RESERVED_ARGS:
            raise exception.InvalidRequest(
                reason='%s: %s is a reserved name' % (method, name))


def expected(err: exception.AccelError) -> oslo_messaging.ExpectedException:
    """Wrap ``err`` so oslo.messaging sends it to the caller as it is.

    oslo.messaging rebuilds it on the client as ``cls(*args, **kwargs)``:
    ``kwargs`` are the error's plain fields.  ``ExpectedException`` keeps
    the server from logging a traceback for a refused request.
    """
    # oslo.messaging reads ``kwargs`` with getattr; AccelError has no such
    # field of its own.
    setattr(err, 'kwargs', err.to_dict()['fields'])
    wrapped = oslo_messaging.ExpectedException()
    wrapped.exc_info = (type(err), err, err.__traceback__)
    return wrapped


def rpc_method(func: Callable) -> Callable:
    """Send errors to the caller typed, with their fields; a bug (not an
    AccelError) is logged with its traceback here and sent as InternalError,
    so callers only ever see accel_daemon.exception classes.

    ``self`` and ``ctxt`` are positional-only, so a caller's argument of
    that name lands in ``kwargs`` and is refused as InvalidRequest.  The
    method gets, as its ``ctxt``, the request ids of the call
    (``call_ids``), which are the thread's oslo.context while it runs.
    """
    @functools.wraps(func)
    def wrapper(self, ctxt, /, **kwargs):
        ids = call_ids(ctxt)
        # The thread's oslo.context for the call: oslo.log prints its ids.
        with request_ids.current(ids):
            try:
                try:
                    if request_ids.dropped(ctxt):
                        LOG.debug('%s: malformed %s dropped from the '
                                  'context', func.__name__,
                                  ', '.join(request_ids.dropped(ctxt)))
                    check_arg_names(func.__name__, kwargs)
                    return func(self, ids, **kwargs)
                except exception.AccelError:
                    raise
                except Exception as e:
                    LOG.exception('%s failed', func.__name__)
                    raise exception.InternalError(
                        reason='%s: %s' % (type(e).__name__, e)) from e
            except exception.AccelError as e:
                LOG.info('%s refused: %s', func.__name__, e.message)
                raise expected(e) from None
    return wrapper


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who an endpoint serves (``accel_daemon.conf.callers``): the daemon
    runs one RPC server per caller, on that caller's own transport, so the
    caller of a request is the endpoint that received it, never anything
    the message says.

    ``name`` None: the daemon's only caller (no ``[caller:NAME]``
    configured), which owns every task.  ``operator``: sees and cancels
    every caller's tasks.  ``max_queued``: this caller's own queue cap (0:
    none)."""
    name: str | None
    allowed_dirs: tuple[str, ...]
    allowed_block_devices: tuple[str, ...] = ()
    max_queued: int = 0
    operator: bool = False
    # Where the daemon serves this caller (None: [DEFAULT] transport_url);
    # it holds the daemon's password, so it is never shown.
    transport_url: str | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def only(cls, settings: Settings) -> Caller:
        """The one caller of a daemon without ``[caller:NAME]``: the host's
        whole envelope."""
        return cls(None, tuple(settings.allowed_dirs),
                   tuple(settings.allowed_block_devices))

    @property
    def owner(self) -> str | None:
        """Whose tasks this caller sees (None: every caller's)."""
        return None if self.operator else self.name


def call_ids(ctxt: Any) -> request_ids.RequestIds:
    """The request ids of one call: the caller's well-formed ones
    (``accel_daemon.request_ids``); without a request id of the caller's,
    one made up here, so every task and every log line of the call has
    one."""
    ids = request_ids.from_ctxt(ctxt)
    if ids['request_id'] is None:
        ids['request_id'] = oslo_context.generate_request_id()
    return ids


class AccelEndpoint:
    """The RPC API at ``operations.API_VERSION``;
    ``accel_daemon.rpc.rpcapi.AccelAPI`` has the history."""

    target = oslo_messaging.Target(version=operations.API_VERSION)

    def __init__(self, manager: Any, backend: Any, settings: Settings,
                 max_wait: float = 10.0,
                 path_checks: dict[str, Callable] | None = None,
                 caller: Caller | None = None) -> None:
        self._manager = manager
        self._backend = backend
        self._settings = settings
        self._max_wait = max_wait
        self._path_checks = path_checks or PATH_CHECKS
        self.caller = caller or Caller.only(settings)

    # -- quick calls --------------------------------------------------------
    @rpc_method
    def capabilities(self, ctxt, **kwargs):
        validate('capabilities', kwargs)
        caps = dict(self._backend.capabilities())
        # What this caller may name, not the host's envelope: the
        # integrations route a path here only when it is inside.
        caps['allowed_dirs'] = list(self.caller.allowed_dirs)
        caps['allowed_block_devices'] = list(
            self.caller.allowed_block_devices)
        # 1.5: what this endpoint serves (callers send only what it takes).
        caps['api_version'] = operations.API_VERSION
        return caps

    @rpc_method
    def image_info(self, ctxt, **kwargs):
        args = self._checked('image_info', kwargs)
        return self._backend.info(args['path'], args['format'],
                                  self.caller.name)

    # -- tasks --------------------------------------------------------------
    @rpc_method
    def compress(self, ctxt, **kwargs):
        return self._submit('compress', kwargs, ctxt)

    @rpc_method
    def decompress(self, ctxt, **kwargs):
        return self._submit('decompress', kwargs, ctxt)

    @rpc_method
    def convert(self, ctxt, **kwargs):
        return self._submit('convert', kwargs, ctxt)

    @rpc_method
    def copy(self, ctxt, **kwargs):
        return self._submit('copy', kwargs, ctxt)

    @rpc_method
    def upload(self, ctxt, **kwargs):
        return self._submit('upload', kwargs, ctxt)

    @rpc_method
    def download(self, ctxt, **kwargs):
        return self._submit('download', kwargs, ctxt)

    @rpc_method
    def stream_in(self, ctxt, **kwargs):
        return self._streamed('stream_in', kwargs, ctxt)

    @rpc_method
    def stream_out(self, ctxt, **kwargs):
        return self._streamed('stream_out', kwargs, ctxt)

    def _streamed(self, name: str, kwargs: dict, ctxt: Any) -> dict:
        """The task of a streamed operation, plus its stream's socket and
        one-time token."""
        task = self._submit(name, kwargs, ctxt)
        try:
            token = self._backend.stream_token(task['id'])
        except exception.AccelError:
            # Nobody could write it: do not leave it waiting for a writer.
            self._manager.cancel(task['id'], owner=self.caller.owner)
            raise
        # Only in this answer, to the caller that submitted the task: the
        # task record (task_get, the journal) never holds the token.
        answer: dict[str, Any] = dict(task)
        answer['stream'] = {
            'path': streamproto.socket_path(self._settings.stream_dir,
                                            task['id']),
            'token': token}
        return answer

    @rpc_method
    def task_get(self, ctxt, **kwargs):
        return self._manager.get(validate('task_get', kwargs)['task_id'],
                                 owner=self.caller.owner)

    @rpc_method
    def task_list(self, ctxt, **kwargs):
        args = validate('task_list', kwargs)
        args = METHODS['task_list'].bind(args)
        return self._manager.list(state=args.get('state'),
                                  limit=args['limit'],
                                  owner=self.caller.owner)

    @rpc_method
    def task_wait(self, ctxt, **kwargs):
        args = validate('task_wait', kwargs)
        # Bounded so one call never outlives the caller's RPC timeout nor
        # holds a server thread for long; callers loop to wait longer.
        timeout = min(float(args['timeout']), self._max_wait)
        return self._manager.wait(args['task_id'], timeout,
                                  owner=self.caller.owner)

    @rpc_method
    def task_cancel(self, ctxt, **kwargs):
        return self._manager.cancel(
            validate('task_cancel', kwargs)['task_id'],
            owner=self.caller.owner)

    # -- helpers ------------------------------------------------------------
    def _submit(self, operation: str, kwargs: dict[str, Any],
                ids: request_ids.RequestIds) -> records.Task:
        params = self._checked(operation, kwargs)
        task = self._manager.submit(operation, params, request_ids=ids,
                                    caller=self.caller.name,
                                    caller_max_queued=self.caller.max_queued)
        LOG.debug('Task %s queued: %s %s', task['id'], operation, params)
        return task

    def _checked(self, method: str,
                 kwargs: dict[str, Any]) -> dict[str, Any]:
        args = validate(method, kwargs)
        for name, field in METHODS[method].fields.items():
            if field.role and name in args:
                self._check_path(field.role, args[name],
                                 args.get('replace', False))
        return args

    def _check_path(self, role: str, path: str,
                    replace: bool = False) -> None:
        c = self.caller
        # replace (1.2) only changes what an existing output may be.
        extra = {'replace': True} if replace and role == 'output' else {}
        try:
            self._path_checks[role](path, c.allowed_dirs,
                                    c.allowed_block_devices, **extra)
        except OSError as e:
            # The daemon's main process is unprivileged and may not see
            # into every directory; the privileged layer checks again with
            # the rights to do so.
            LOG.debug('Path pre-check of %s skipped: %s', path, e)
