# SPDX-License-Identifier: Apache-2.0
"""Every operation of accel-daemon, defined once: the contract between the
layers.

``OPERATIONS`` names each operation, each of its arguments (with its type
check, whether it is required, and its default) and the name of the
``Engine`` method that carries it out (``engine_method``).  The RPC API
version, ``API_VERSION``, lives here too.  Everything else reads this
table:

* the RPC endpoint validates every request with ``validate()`` (types, no
  unknown or reserved names) and pre-checks the arguments whose ``role`` is
  a path;
* the task manager accepts exactly the operations with ``task=True``;
* the command line builds its sub-commands and flags from the fields;
* the privileged layer (and ``--local``) runs one through ``run()``, which
  validates again, fills the defaults (``checksum`` included, so each
  operation's default is stated here and nowhere else), splits the
  arguments into what the operation works on and how
  (``accel_daemon.options.Options``, one frozen value) and calls the
  Engine method.

The table does not write the other surfaces: the client library, the RPC
client and the Engine keep one explicit method per operation (their
signatures are the API), and each passes the arguments on by name.  So
adding an argument means editing, in order: this table (and
``API_VERSION``, a minor bump), ``accel_daemon.options.Options`` for an
option or ``Engine.<operation>`` for a path or format, the engine
function that acts on it (``accel_daemon.engine``), the RPC API method
(``accel_daemon.rpc.rpcapi.AccelAPI``, sending the argument only when it
is given, pinned to the new version) and the client method
(``accel_daemon.client.AccelClient``); the endpoint and the command line
follow the table by themselves.  ``tests/unit/test_surfaces.py`` fails
until every surface takes exactly the fields of the table, and
``doc/source/contributing-operations.rst`` lists the steps for a new
operation too.

``CALLS`` does the same for the task-management calls the task manager
answers itself (no Engine method).

A contract module: it imports nothing above it (no layer, no
configuration), so the client can read it; ``Engine`` is named for the
annotations only.
"""

from __future__ import annotations

import dataclasses
import errno
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TYPE_CHECKING

from accel_daemon import exception
from accel_daemon import options
from accel_daemon import records
from accel_daemon.states import STATES

if TYPE_CHECKING:
    from accel_daemon.engine.engine import Engine

# The RPC API version: the endpoint serves it and the RPC client caps its
# calls at it.  Bump the minor version with every new operation or argument
# (``accel_daemon.rpc.rpcapi.AccelAPI`` keeps the history).
API_VERSION = '1.5'

_NAME_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,63}')
MAX_PATH = 4096
# What a compressed container may say it holds.
CONTAINERS = ('gzip', 'zstd')
MAX_BYTES = 2 ** 62
# Parameters of the RPC methods themselves: never an argument name.
RESERVED = frozenset({'self', 'ctxt'})


# --- argument checks ---------------------------------------------------------
def _bad(name: str, why: str) -> exception.InvalidRequest:
    return exception.InvalidRequest(reason='%s: %s' % (name, why))


def path(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise _bad(name, 'must be a non-empty string')
    if len(value) > MAX_PATH:
        raise _bad(name, 'longer than %d characters' % MAX_PATH)


def short_name(name: str, value: Any) -> None:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise _bad(name, 'must be a short name of letters, digits, _ . -')


def container(name: str, value: Any) -> None:
    if value not in CONTAINERS:
        raise _bad(name, 'must be one of %s' % ', '.join(CONTAINERS))


def boolean(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _bad(name, 'must be a boolean')


def integer(low: int, high: int) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        # bool is an int subclass; True is not a size.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(name, 'must be an integer')
        if not low <= value <= high:
            raise _bad(name, 'must be between %d and %d' % (low, high))
    return check


def seconds(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(name, 'must be a number of seconds')
    if not 0 <= value < float('inf'):
        raise _bad(name, 'must be zero or more seconds')


def task_id(name: str, value: Any) -> None:
    try:
        if str(uuid.UUID(value)) == value:
            return
    except (TypeError, ValueError, AttributeError):
        pass
    raise _bad(name, 'must be a task id (a lower-case UUID string)')


def state(name: str, value: Any) -> None:
    if value not in STATES:
        raise _bad(name, 'must be one of %s' % ', '.join(STATES))


# --- the table ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Field:
    check: Callable[[str, Any], None]
    required: bool = True
    default: Any = None
    role: str | None = None     # 'input' / 'output': a path to pre-check
    help: str = ''


@dataclasses.dataclass(frozen=True)
class Operation:
    name: str
    fields: Mapping[str, Field]
    help: str
    # The Engine method that runs it, called by run() as
    # getattr(engine, engine_method)(progress, **own, options=Options).
    engine_method: str | None = None
    task: bool = False      # a long operation: answered with a task

    def validate(self, args: Any) -> dict[str, Any]:
        """The given arguments, checked; None means "the default"."""
        if not isinstance(args, Mapping):
            raise exception.InvalidRequest(
                reason='%s: arguments must be a mapping' % self.name)
        names = [n for n in args if not isinstance(n, str)
                 or n in RESERVED or n not in self.fields]
        if names:
            raise exception.InvalidRequest(
                reason='%s: unknown argument(s) %s'
                % (self.name, ', '.join(sorted(map(repr, names)))))
        clean = {}
        for name, field in self.fields.items():
            value = args.get(name)
            if value is None:
                if field.required:
                    raise exception.InvalidRequest(
                        reason='%s: missing argument %s' % (self.name, name))
                continue
            field.check(name, value)
            clean[name] = value
        return clean

    def bind(self, args: Any) -> dict[str, Any]:
        """``validate()`` plus every default filled in."""
        clean = self.validate(args)
        for name, field in self.fields.items():
            if name not in clean and field.default is not None:
                clean[name] = field.default
        return clean


_SRC = Field(path, role='input', help='input file (or allowed device)')
_DST = Field(path, role='output', help='new output file')
_FORMAT = Field(short_name)
_MAX_BYTES = Field(integer(1, MAX_BYTES), required=False,
                   help='largest output (bytes) the caller expects')
# 1.2: publish over an existing regular file (one link, not a symlink);
# src may be dst.  Off: an existing output is OutputExists.
_REPLACE = Field(boolean, required=False, default=False,
                 help='replace an existing output file atomically')
# 1.2: cinder's volume_copy_bps_limit (per step of upload and download).
_BPS_LIMIT = Field(integer(1, MAX_BYTES), required=False,
                   help='bandwidth limit, bytes per second')
# 1.3: what the container says it is; the input's magic must agree (a
# zstd stream where the image says gzip is refused, not decoded).
_CONTAINER = Field(container, required=False,
                   help='the compression the input must be: gzip or zstd '
                        '(default: whichever its magic bytes show)')
# 1.2: cinder's disable_sparse is sparse=False.
_SPARSE = Field(boolean, required=False, default=True,
                help='leave zeros as holes (default on); off writes every '
                     'zero (qemu-img -S 0)')


def _checksum(default: bool) -> Field:
    return Field(boolean, required=False, default=default,
                 help='sha256 of the output in the result (default %s)'
                 % ('on' if default else 'off'))


OPERATIONS: dict[str, Operation] = {op.name: op for op in (
    Operation('capabilities', {}, 'engines and tools available'),
    Operation('image_info', {
        'path': Field(path, role='input', help='image to inspect'),
        'format': Field(short_name, help='its claimed format')},
        'inspect an image, then qemu-img info'),
    Operation('compress', {
        'src': _SRC, 'dst': _DST,
        'driver': Field(short_name, required=False,
                        help='force one driver (e.g. isal, pigz, qat)'),
        'level': Field(integer(1, 22), required=False,
                       help='compression level'),
        'format': Field(short_name, required=False, default='gzip',
                        help='gzip (default) or zstd'),
        # The compressed output is small, and hashed while it is written.
        'checksum': _checksum(True), 'replace': _REPLACE,
        'bps_limit': _BPS_LIMIT},
        'compress to gzip (or zstd)',
        engine_method='compress', task=True),
    Operation('decompress', {
        'src': _SRC, 'dst': _DST, 'max_bytes': _MAX_BYTES,
        # Off: hashing every zero of a sparse 8 GiB image costs ~5 s.
        'checksum': _checksum(False), 'replace': _REPLACE,
        'bps_limit': _BPS_LIMIT, 'container': _CONTAINER},
        'decompress, capped, sparse output',
        engine_method='decompress', task=True),
    Operation('convert', {
        'src': _SRC, 'dst': dataclasses.replace(
            _DST, help='new output file or allowed block device'),
        'src_format': dataclasses.replace(_FORMAT, help='input format'),
        'dst_format': dataclasses.replace(_FORMAT, help='output format'),
        'compress': Field(boolean, required=False,
                          help='compressed qcow2 output'),
        'target_is_zero': Field(boolean, required=False,
                                help='the output device reads as zeros'),
        'max_bytes': _MAX_BYTES,
        'checksum': _checksum(False), 'replace': _REPLACE,
        'bps_limit': _BPS_LIMIT, 'sparse': _SPARSE},
        'qemu-img convert with safe settings',
        engine_method='convert', task=True),
    Operation('copy', {'src': _SRC, 'dst': _DST,
                       'checksum': _checksum(False), 'replace': _REPLACE,
                       'bps_limit': _BPS_LIMIT},
              'sparse copy of an image file',
              engine_method='copy', task=True),
    Operation('upload', {
        'src': _SRC, 'dst': _DST,
        'src_format': dataclasses.replace(_FORMAT, help='input format'),
        'disk_format': dataclasses.replace(
            _FORMAT, help='format of the image inside the gzip'),
        'checksum': _checksum(True), 'replace': _REPLACE,
        'bps_limit': _BPS_LIMIT},
        'convert then compress (cinder upload)',
        engine_method='upload', task=True),
    Operation('download', {
        'src': _SRC, 'dst': dataclasses.replace(
            _DST, help='new output file or allowed block device'),
        'disk_format': dataclasses.replace(
            _FORMAT, help='claimed format of the image inside'),
        'dst_format': dataclasses.replace(_FORMAT, help='output format'),
        'max_bytes': _MAX_BYTES, 'checksum': _checksum(False),
        'replace': _REPLACE, 'bps_limit': _BPS_LIMIT, 'sparse': _SPARSE,
        'container': _CONTAINER},
        'decompress, inspect, convert (cinder download)',
        engine_method='download', task=True),
    # 1.4: the caller streams the image over a local socket
    # (accel_daemon.streamproto); the task's answer says where, with a
    # token for the submitter only.
    Operation('stream_in', {
        'dst': dataclasses.replace(
            _DST, help='new output file or allowed block device'),
        'disk_format': dataclasses.replace(
            _FORMAT, help='claimed format of the streamed image'),
        'dst_format': dataclasses.replace(_FORMAT, help='output format'),
        'container': dataclasses.replace(
            _CONTAINER, help='the compression of the stream: gzip or zstd '
                             '(default: none)'),
        'max_bytes': _MAX_BYTES, 'replace': _REPLACE, 'sparse': _SPARSE,
        'target_is_zero': Field(boolean, required=False,
                                help='the output device reads as zeros')},
        'write an image streamed by the caller (inspect first, publish '
        'on its complete trailer)',
        engine_method='stream_in', task=True),
    # 1.5: the daemon streams the image to the caller over a local socket,
    # as stream_in's answer says.
    Operation('stream_out', {
        'src': _SRC,
        'src_format': dataclasses.replace(_FORMAT, help='input format'),
        'disk_format': dataclasses.replace(
            _FORMAT, help='format of the image sent'),
        'compression': dataclasses.replace(
            _CONTAINER, help='compress what is sent: gzip or zstd '
                             '(default: not compressed)'),
        'level': Field(integer(1, 22), required=False,
                       help='compression level'),
        'compress': Field(boolean, required=False,
                          help='compressed qcow2 clusters (only without '
                               'compression: an image is deflated once)'),
        'bps_limit': _BPS_LIMIT},
        'send an image to the caller over a local socket (inspect first, '
        'convert if needed, compress on all cores as it goes)',
        engine_method='stream_out', task=True),
)}

CALLS: dict[str, Operation] = {op.name: op for op in (
    Operation('task_get', {'task_id': Field(task_id)}, 'one task'),
    Operation('task_list', {
        'state': Field(state, required=False),
        'limit': Field(integer(1, 1000), required=False, default=100)},
        'tasks, newest first'),
    Operation('task_wait', {'task_id': Field(task_id),
                            'timeout': Field(seconds)},
              'wait for a task, bounded'),
    Operation('task_cancel', {'task_id': Field(task_id)}, 'cancel a task'),
)}

TASK_OPERATIONS = tuple(n for n, op in OPERATIONS.items() if op.task)


def get(name: Any, table: Mapping[str, Operation] = OPERATIONS) -> Operation:
    if not isinstance(name, str) or name not in table:
        raise exception.InvalidRequest(reason='unknown operation %r'
                                       % (name,))
    return table[name]


def validate(name: str, args: Any) -> dict[str, Any]:
    """Validate the arguments of an operation or task call by name."""
    table = CALLS if name in CALLS else OPERATIONS
    return get(name, table).validate(args)


# --- running one -----------------------------------------------------------
def run(engine: Engine, task_id: str, name: str,
        params: Any) -> records.Result:
    """Run the task operation ``name`` on ``engine``; its plain result.

    Out-of-space conditions, however they surface (our own writes, or a
    tool's), become the typed ``NoSpace``.
    """
    op = get(name)
    if not op.task or op.engine_method is None:
        raise exception.InvalidRequest(reason='%s is not a task operation'
                                       % name)
    args = op.bind(params)
    own, opts = options.split(args)
    method = getattr(engine, op.engine_method)
    started = time.monotonic()
    try:
        with engine.task(task_id) as progress:
            result = method(progress, **own, options=opts)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise exception.NoSpace(path=args.get('dst')) from None
        raise
    except exception.ProcessFailed as e:
        if 'No space left on device' in str(e.fields.get('stderr')):
            raise exception.NoSpace(path=args.get('dst')) from None
        raise
    result.setdefault('sha256', None)
    result.setdefault('wall_seconds', time.monotonic() - started)
    return result
