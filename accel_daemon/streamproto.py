# SPDX-License-Identifier: Apache-2.0
"""The wire format of an image stream (``stream_in``), shared by the
client (``accel_daemon.client.StreamWriter``) and the privileged helper
(``accel_daemon.engine.streams``).

A task's stream is one connection to a local AF_UNIX stream socket,
``<socket_dir>/<task id>.sock``, which the helper binds when the task
starts, in a root-owned directory only the operator's stream group may
enter.  The client sends:

1. the hello line: ``ACCEL-STREAM/1 <token>\\n``, the token being the
   one the daemon returned, and only to the caller that submitted the
   task;
2. frames: a type byte and a 4-byte big-endian length, then the payload:

   * ``D``: image bytes (at most ``MAX_DATA`` per frame);
   * ``C``: complete; an 8-byte big-endian count of every data byte sent.
     Nothing is published before it arrives and matches;
   * ``A``: abort, with a short UTF-8 reason: nothing is published.

After ``C`` (or ``A``) the client shuts its side down and reads until the
helper closes the connection, which it does once the task has its verdict;
the task itself (over RPC) says what that verdict is, typed.

A contract module: the standard library only, no accel-daemon layer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct

VERSION = 1
MAGIC = b'ACCEL-STREAM/1 '
TOKEN_LEN = 43              # 32 bytes, base64url without padding
HELLO_LEN = len(MAGIC) + TOKEN_LEN + 1

HEADER = struct.Struct('>cI')
COUNT = struct.Struct('>Q')
DATA = b'D'
COMPLETE = b'C'
ABORT = b'A'
MAX_DATA = 4 * 1024 * 1024
MAX_REASON = 1024
# sun_path holds 108 bytes with its terminating NUL.
MAX_SOCKET_PATH = 107


def socket_path(directory: str, task_id: str) -> str:
    return os.path.join(directory, '%s.sock' % task_id)


def token(key: bytes, task_id: str) -> str:
    """The one-time token of ``task_id`` under the helper's ``key``."""
    mac = hmac.new(key, task_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b'=').decode()


def hello(tok: str) -> bytes:
    line = MAGIC + tok.encode('ascii') + b'\n'
    if len(line) != HELLO_LEN:
        raise ValueError('a stream token is %d characters' % TOKEN_LEN)
    return line


def token_of(line: bytes) -> str | None:
    """The token of a hello line, None when it is not one."""
    if len(line) != HELLO_LEN or not line.startswith(MAGIC) or \
            not line.endswith(b'\n'):
        return None
    try:
        return line[len(MAGIC):-1].decode('ascii')
    except UnicodeDecodeError:
        return None


def frame(kind: bytes, payload: bytes | memoryview = b'') -> bytes:
    return HEADER.pack(kind, len(payload)) + bytes(payload)
