# SPDX-License-Identifier: Apache-2.0
"""The image stream's wire format (accel_daemon.streamproto)."""

import pytest

from accel_daemon import streamproto as proto


def test_tokens_are_per_task_and_per_key():
    key = b'k' * 32
    one = proto.token(key, 'task-1')
    assert len(one) == proto.TOKEN_LEN
    assert one == proto.token(key, 'task-1')
    assert one != proto.token(key, 'task-2')
    assert one != proto.token(b'j' * 32, 'task-1')


def test_hello_round_trip_and_refusals():
    tok = proto.token(b'k' * 32, 'task-1')
    line = proto.hello(tok)
    assert len(line) == proto.HELLO_LEN
    assert proto.token_of(line) == tok
    for bad in (b'', line[:-1], line[:-1] + b'x', b'X' + line[1:],
                line[:-2] + b'\xff\n', line + b'more'):
        assert proto.token_of(bad) is None, bad
    with pytest.raises(ValueError):
        proto.hello('short')


def test_frames():
    f = proto.frame(proto.DATA, b'abc')
    assert proto.HEADER.unpack(f[:proto.HEADER.size]) == (proto.DATA, 3)
    assert f[proto.HEADER.size:] == b'abc'
    c = proto.frame(proto.COMPLETE, proto.COUNT.pack(2 ** 40))
    assert proto.COUNT.unpack(c[proto.HEADER.size:]) == (2 ** 40,)


def test_socket_paths_fit():
    path = proto.socket_path('/run/accel-daemon/streams',
                             '00000000-0000-0000-0000-000000000000')
    assert len(path) <= proto.MAX_SOCKET_PATH
