# SPDX-License-Identifier: Apache-2.0
"""Every surface of every operation takes exactly the operation's fields.

``accel_daemon.operations`` spells each operation and its arguments once;
the surfaces that keep a method of their own must agree with it, or an
argument added to the table (or to one surface) silently goes nowhere:

* ``AccelClient.<op>`` (the API cinder and nova call): its parameters,
  less ``context``, are the fields; a field without a default in the
  signature is exactly a required one;
* ``AccelAPI.<op>`` (the RPC client): its parameters, less ``host``, the
  same way; the task calls of ``CALLS`` too;
* ``AccelEndpoint.<op>`` takes ``(self, ctxt, /, **kwargs)`` by design (a
  wrong argument is answered with InvalidRequest, not a TypeError), so it
  is checked by calling it: all the fields reach the task manager or the
  backend, under the operation's own name, and one more is refused;
* ``Engine.<engine_method>``: a task operation's method takes what it
  works on as parameters and how as one ``accel_daemon.options.Options``
  (``options``): its parameters, less ``progress`` and ``options``, are
  the fields that are no option, every other field is an ``Options``
  field, and the defaults of both are the table's (``run()`` fills them in
  from the table, so a different one in the Engine would be a lie); the
  quick calls take the fields as parameters;
* the ``accel-image`` command: the destinations of its parser, less those
  every command of its kind has, are the fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from typing import Any

import pytest

from accel_daemon.client import AccelClient
from accel_daemon.cmd.cli import app as cli_app
from accel_daemon.cmd.cli import base
from accel_daemon.engine.engine import Engine
from accel_daemon.engine.settings import Settings
from accel_daemon import exception
from accel_daemon import operations
from accel_daemon import options
from accel_daemon.rpc import endpoint as ep
from accel_daemon.rpc import rpcapi

OPERATIONS = sorted(operations.OPERATIONS)
CALLS = sorted(operations.CALLS)
# accel-image names a command after its operation, but for these.
CLI_COMMANDS = {'image_info': 'info', 'stream_in': 'stream-in',
                'stream_out': 'stream-out'}
# A command's own arguments, beyond the operation's fields: the local file
# stream-out writes.
CLI_OWN = {'stream_out': {'output'}}


def _params(func: Any, *skip: str) -> dict[str, inspect.Parameter]:
    """The named parameters of ``func`` less ``self`` and ``skip``."""
    return {n: p for n, p in inspect.signature(func).parameters.items()
            if n != 'self' and n not in skip
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _required(params: dict[str, inspect.Parameter]) -> set[str]:
    return {n for n, p in params.items() if p.default is p.empty}


def _fields(table: dict[str, operations.Operation], name: str
            ) -> tuple[set[str], set[str]]:
    """The fields of ``name`` and the required ones among them."""
    fields = table[name].fields
    return set(fields), {n for n, f in fields.items() if f.required}


def _agrees(func: Any, table: dict[str, operations.Operation], name: str,
            *skip: str) -> None:
    params = _params(func, *skip)
    fields, required = _fields(table, name)
    assert set(params) == fields, '%s lacks %s, has %s too' % (
        func.__qualname__, sorted(fields - set(params)),
        sorted(set(params) - fields))
    assert _required(params) == required, '%s requires %s, the table %s' % (
        func.__qualname__, sorted(_required(params)), sorted(required))


# --- the client library and the RPC client ----------------------------------
# Parameters of the client's own, not sent to the daemon: the caller's
# request context, and the RPC timeout of a quick "are you there?".
CLIENT_ONLY = {'capabilities': ('context', 'timeout')}


@pytest.mark.parametrize('name', OPERATIONS)
def test_client_method_takes_the_fields(name):
    _agrees(getattr(AccelClient, name), operations.OPERATIONS, name,
            *CLIENT_ONLY.get(name, ('context',)))


@pytest.mark.parametrize('name', OPERATIONS)
def test_rpcapi_method_takes_the_fields(name):
    _agrees(getattr(rpcapi.AccelAPI, name), operations.OPERATIONS, name,
            'host')


@pytest.mark.parametrize('name', CALLS)
def test_rpcapi_task_call_takes_the_fields(name):
    _agrees(getattr(rpcapi.AccelAPI, name), operations.CALLS, name, 'host')


# --- the endpoint ------------------------------------------------------------
SAMPLES = {operations.path: '/srv/images/a', operations.short_name: 'raw',
           operations.boolean: False, operations.seconds: 1.0,
           operations.task_id: '9b2e1a3c-0d4f-4e6a-8b7c-1d2e3f4a5b6c',
           operations.state: 'queued', operations.container: 'gzip'}


def _sample(field: operations.Field) -> Any:
    """A value that passes the field's check."""
    if field.check in SAMPLES:
        return SAMPLES[field.check]
    return 1        # every integer range of the table includes 1


class Recorder:
    """Stands in for the task manager and the backend: records the name
    and the arguments each call got."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def submit(self, operation, params, request_ids=None, caller=None,
               caller_max_queued=0):
        self.calls.append((operation, dict(params)))
        return {'id': 'task'}

    def capabilities(self):
        self.calls.append(('capabilities', {}))
        return {}

    def stream_token(self, task_id):
        # The token of a stream_in task: not a call of the operation.
        return 'token'

    def info(self, path, fmt, caller=None):
        self.calls.append(('image_info', {'path': path, 'format': fmt}))
        return {}

    def get(self, task_id, owner=None):
        self.calls.append(('task_get', {'task_id': task_id}))

    def list(self, state=None, limit=100, owner=None):
        self.calls.append(('task_list', {'state': state, 'limit': limit}))

    def wait(self, task_id, timeout, owner=None):
        self.calls.append(('task_wait', {'task_id': task_id,
                                         'timeout': timeout}))

    def cancel(self, task_id, owner=None):
        self.calls.append(('task_cancel', {'task_id': task_id}))


def _endpoint(recorder: Recorder) -> ep.AccelEndpoint:
    # The path pre-check is the endpoint's own business: let every path by.
    def accept(*args: Any, **kwargs: Any) -> None:
        return None
    return ep.AccelEndpoint(recorder, recorder, Settings(),
                            path_checks={'input': accept, 'output': accept})


def _call(endpoint: ep.AccelEndpoint, name: str, args: dict) -> Any:
    try:
        return getattr(endpoint, name)({}, **args)
    except Exception as e:
        # rpc_method wraps refusals for oslo.messaging: unwrap them.
        info = getattr(e, 'exc_info', None)
        raise info[1] if info else e


@pytest.mark.parametrize('name', OPERATIONS + CALLS)
def test_endpoint_method_passes_exactly_the_fields(name):
    table = operations.OPERATIONS if name in OPERATIONS else operations.CALLS
    method = getattr(ep.AccelEndpoint, name)
    # Arguments by keyword only: the table decides what they are.
    # The wrapper the dispatcher calls (rpc_method), not the body it wraps.
    signature = inspect.signature(method, follow_wrapped=False)
    kinds = [p.kind for p in signature.parameters.values()]
    assert kinds == [inspect.Parameter.POSITIONAL_ONLY] * 2 + [
        inspect.Parameter.VAR_KEYWORD], name
    args = {n: _sample(f) for n, f in table[name].fields.items()}
    recorder = Recorder()
    _call(_endpoint(recorder), name, args)
    [(called, got)] = recorder.calls
    assert called == name
    assert set(got) == set(args)


@pytest.mark.parametrize('name', OPERATIONS + CALLS)
def test_endpoint_method_refuses_one_more(name):
    table = operations.OPERATIONS if name in OPERATIONS else operations.CALLS
    args = {n: _sample(f) for n, f in table[name].fields.items()}
    recorder = Recorder()
    with pytest.raises(exception.InvalidRequest):
        _call(_endpoint(recorder), name, dict(args, not_a_field=1))
    assert recorder.calls == []


# --- the engine --------------------------------------------------------------
def _engine_method(op: operations.Operation) -> Any:
    # The quick calls have no engine_method: the Engine method of the same
    # name answers them, through the backend.
    return getattr(Engine, op.engine_method or op.name)


def _task_table(name: str) -> dict[str, operations.Operation]:
    """The operation ``name`` as the Engine method sees it: its fields
    that are no option."""
    op = operations.OPERATIONS[name]
    own = {n: f for n, f in op.fields.items() if n not in options.NAMES}
    return {name: dataclasses.replace(op, fields=own)}


@pytest.mark.parametrize('name', OPERATIONS)
def test_engine_method_takes_the_fields(name):
    op = operations.OPERATIONS[name]
    method = _engine_method(op)
    if not op.task:
        _agrees(method, operations.OPERATIONS, name, 'progress')
        return
    _agrees(method, _task_table(name), name, 'progress', 'options')
    assert 'options' in _params(method, 'progress'), name


@pytest.mark.parametrize('name', OPERATIONS)
def test_engine_defaults_are_the_tables(name):
    op = operations.OPERATIONS[name]
    params = _params(_engine_method(op), 'progress')
    given = params['options'].default if op.task else None
    for field_name, field in op.fields.items():
        if field.default is None:
            continue
        if op.task and field_name in options.NAMES:
            assert getattr(given, field_name) == field.default, field_name
        else:
            assert params[field_name].default == field.default, field_name


def test_every_option_is_a_field_of_an_operation():
    used = {n for op in operations.OPERATIONS.values() if op.task
            for n in op.fields}
    assert options.NAMES <= used


def test_run_passes_the_options_as_one_value():
    seen = {}

    class Recording:
        def task(self, task_id):
            import contextlib
            return contextlib.nullcontext(None)

        def convert(self, progress, src, dst, src_format, dst_format,
                    options):
            seen.update(src=src, options=options)
            return {'output': dst}

    operations.run(Recording(), 't', 'convert', {
        'src': '/srv/a', 'dst': '/srv/b', 'src_format': 'qcow2',
        'dst_format': 'raw', 'bps_limit': 1048576, 'sparse': False})
    assert seen == {'src': '/srv/a', 'options': options.Options(
        bps_limit=1048576, sparse=False)}


def test_every_task_operation_names_an_engine_method():
    for op in operations.OPERATIONS.values():
        assert op.task == (op.engine_method is not None), op.name


# --- the command line ------------------------------------------------------
def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions}


def _command(app: cli_app.AccelImage, name: str) -> Any:
    factory, _, _ = app.command_manager.find_command([name])
    return factory(app, None, cmd_name=name)


def _bare_dests(cmd: Any) -> set[str]:
    """What every command of ``cmd``'s kind (a Lister, a ShowOne) has."""
    kind = base.Lister if isinstance(cmd, base.Lister) else base.ShowOne
    bare = type('Bare', (kind,), {'take_action': lambda self, a: ((), ())})
    return _dests(bare(cmd.app, None).get_parser('bare'))


@pytest.mark.parametrize('name', OPERATIONS)
def test_cli_command_takes_the_fields(name):
    command = CLI_COMMANDS.get(name, name)
    cmd = _command(cli_app.AccelImage(), command)
    dests = _dests(cmd.get_parser('accel-image %s' % command))
    fields, _ = _fields(operations.OPERATIONS, name)
    own = dests - _bare_dests(cmd) - CLI_OWN.get(name, set())
    assert own == fields, 'accel-image %s lacks %s, has %s too' % (
        command, sorted(fields - own), sorted(own - fields))


# --- the checks above can fail ---------------------------------------------
def test_a_missing_argument_is_seen():
    def copy(self, src, dst, checksum=None, replace=False, context=None):
        pass
    with pytest.raises(AssertionError):
        _agrees(copy, operations.OPERATIONS, 'copy', 'context')


def test_an_optional_argument_made_required_is_seen():
    def image_info(self, path, format=None, context=None):
        pass
    with pytest.raises(AssertionError):
        _agrees(image_info, operations.OPERATIONS, 'image_info', 'context')
