# SPDX-License-Identifier: Apache-2.0
"""Image streams (stream_in, stream_out) against a real daemon, in every
way they can fail: a truncated stream, an abort, an idle writer or
reader, a wrong token, a user the daemon does not admit, a gzip bomb past
the cap, a qcow2 claimed as raw, a backing file, two writers on one
socket, the writer or reader killed, the privsep helper killed, the daemon
killed.

After each: the task ends with a typed error (TaskInterrupted once a
killed daemon is back), nothing is published and nothing is left (no
output, no temp file, no socket once the next stream ran), and the daemon
serves the next stream.
"""

from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import sys
import time
import zlib

import pytest

from accel_daemon import exception
from accel_daemon import streamproto as proto
from tests.functional import imagegen as gen
from tests.functional.reliability import common
from tests.functional import test_rpc_daemon as rpcd

pytestmark = common.marks(300)

MiB = common.MiB
IDLE = 3


@pytest.fixture(scope='module')
def user():
    with common.throwaway_user() as made:
        yield made


@pytest.fixture(scope='module')
def daemon(tmp_path_factory, user):
    name, _, _ = user
    common.require_broker()
    d = rpcd.DaemonProcess(str(tmp_path_factory.mktemp('stream-faults')))
    # The stream sockets' group is the throwaway user's own: it can reach
    # a socket, but [streams] allowed_users names root only.
    d.sections['streams'].update(group=name, idle_timeout=IDLE)
    d.write_config()
    d.start()
    yield d
    common.stop_daemon(d)


def raw_image(size: int = 8 * MiB) -> bytes:
    data = bytearray(size)
    for off in range(0, size, 2 * MiB):
        data[off:off + 256 * 1024] = os.urandom(256 * 1024)
    return bytes(data)


def left_behind(daemon, *outputs):
    """What a failed stream left: outputs, temp names, sockets."""
    left = [o for o in outputs if os.path.lexists(o)]
    left += common.wait_no_strays(daemon.images)
    deadline = time.monotonic() + 10
    while os.path.isdir(daemon.streams) and os.listdir(daemon.streams) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    if os.path.isdir(daemon.streams):
        left += os.listdir(daemon.streams)
    return left


def still_serves(daemon):
    image = raw_image(2 * MiB)
    dst = os.path.join(daemon.images, common.unique('after') + '.raw')
    with daemon.client() as client:
        writer = client.stream_in(dst, 'raw', 'raw')
        writer.write(image)
        writer.close()
    with open(dst, 'rb') as f:
        assert f.read() == image
    os.unlink(dst)


def raw_connect(path: str, token: str, timeout: float = 30) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            s.sendall(proto.hello(token))
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            assert time.monotonic() < deadline, 'no socket at %s' % path
            time.sleep(0.05)


def dropped(sock: socket.socket) -> bool:
    sock.settimeout(15)
    try:
        return sock.recv(16) == b''
    except ConnectionResetError:
        return True


def bomb(inflated: int) -> bytes:
    pack = zlib.compressobj(1, zlib.DEFLATED, 31)
    zeros = bytes(16 * MiB)
    return b''.join(pack.compress(zeros)
                    for _ in range(inflated // len(zeros))) + pack.flush()


# --- stream_in: what the writer sends ---------------------------------------
def _truncated(daemon, client, dst):
    writer = client.stream_in(dst, 'raw', 'raw')
    path, token = writer.path, writer._hello[len(proto.MAGIC):-1].decode()
    s = raw_connect(path, token)
    s.sendall(proto.frame(proto.DATA, raw_image(MiB)))
    s.close()                    # no trailer
    return writer.task, exception.StreamFailed


def _abort(daemon, client, dst):
    writer = client.stream_in(dst, 'raw', 'raw')
    writer.write(raw_image(2 * MiB))
    writer.abort('the image service said no')
    return writer.task, exception.StreamFailed


def _idle(daemon, client, dst):
    writer = client.stream_in(dst, 'raw', 'raw')
    writer.write(raw_image(2 * MiB))
    writer._flush()
    time.sleep(IDLE + 2)
    return writer.task, exception.StreamFailed


def _bomb(daemon, client, dst):
    writer = client.stream_in(dst, 'raw', 'raw', container='gzip',
                              max_bytes=64 * MiB)
    with pytest.raises(exception.SizeLimitExceeded):
        writer.write(bomb(256 * MiB))
        writer.close()
    return writer.task, exception.SizeLimitExceeded


def _qcow2_as_raw(daemon, client, dst):
    src = gen.qcow2_with_data(dst + '.src.qcow2', size=16 * MiB)
    with open(src, 'rb') as f:
        data = f.read()
    os.unlink(src)
    writer = client.stream_in(dst, 'raw', 'raw', container='gzip')
    with pytest.raises(exception.FormatMismatch):
        writer.write(gzip.compress(data, 1))
        writer.close()
    return writer.task, exception.FormatMismatch


def _backing_file(daemon, client, dst):
    base = gen.qemu_create(dst + '.base', 'qcow2', '16M')
    top = gen.qcow2_with_backing(dst + '.top', base)
    with open(top, 'rb') as f:
        data = f.read()
    os.unlink(top)
    os.unlink(base)
    writer = client.stream_in(dst, 'qcow2', 'raw')
    with pytest.raises(exception.UnsafeImage):
        writer.write(data)
        writer.close()
    return writer.task, exception.UnsafeImage


def _wrong_token(daemon, client, dst):
    # Dropped; the right writer is still served, but stops without a
    # trailer: the task fails as truncated.
    writer = client.stream_in(dst, 'raw', 'raw')
    intruder = raw_connect(writer.path, proto.token(b'x' * 32,
                                                    writer.task.id))
    assert dropped(intruder)
    intruder.close()
    writer.write(raw_image(MiB))
    writer._flush()
    writer._drop()
    return writer.task, exception.StreamFailed


def _two_writers(daemon, client, dst):
    writer = client.stream_in(dst, 'raw', 'raw')
    writer.write(raw_image(MiB))
    writer._flush()
    # The first admitted writer is the only one: the name is gone.
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
        second.connect(writer.path)
    second.close()
    writer.abort('done')
    return writer.task, exception.StreamFailed


def _client_killed(daemon, client, dst):
    script = '''
import os, sys, time
from oslo_config import cfg
from accel_daemon.client import AccelClient
from accel_daemon.conf import client as c
conf = cfg.ConfigOpts()
c.register_opts(conf)
conf(['--config-file', sys.argv[1]], project='accel-test-client')
w = AccelClient(conf, host=sys.argv[3]).stream_in(sys.argv[2], 'raw', 'raw')
w.write(os.urandom(4 * 1024 * 1024))
w._flush()
print(w.task.id, flush=True)
time.sleep(600)
'''
    proc = subprocess.Popen([sys.executable, '-c', script, daemon.config,
                             dst, daemon.host], stdout=subprocess.PIPE,
                            text=True)
    task_id = proc.stdout.readline().strip()
    proc.kill()
    proc.wait()
    return client.task(task_id), exception.StreamFailed


def _not_admitted(daemon, client, dst, user):
    # A user of the sockets' group, not in [streams] allowed_users, with
    # the right token: refused by SO_PEERCRED; nobody else writes, so the
    # task ends when no writer was admitted within idle_timeout.
    name, uid, gid = user
    writer = client.stream_in(dst, 'raw', 'raw')
    token = writer._hello[len(proto.MAGIC):-1].decode()
    script = '''
import socket, sys, time
path, hello = sys.argv[1], sys.argv[2].encode() + b'\\n'
for _ in range(200):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        break
    except OSError:
        s.close()
        time.sleep(0.05)
else:
    print('could not connect', flush=True)
    sys.exit(0)
s.settimeout(15)
try:
    s.sendall(hello)
    got = s.recv(16)
except (BrokenPipeError, ConnectionResetError):
    got = b''
print('dropped' if got == b'' else 'served', flush=True)
'''
    # The system's interpreter: the user cannot enter the checkout.
    out = subprocess.run(
        ['/usr/bin/python3', '-c', script, writer.path,
         (proto.MAGIC.decode() + token)],
        capture_output=True, text=True, timeout=60,
        user=uid, group=gid, extra_groups=[])
    assert out.stdout.strip() == 'dropped', out
    return writer.task, exception.StreamFailed


def _helper_killed(daemon, client, dst):
    writer = client.stream_in(dst, 'raw', 'raw')
    writer.write(raw_image(2 * MiB))
    writer._flush()
    for pid in common.helper_pids(daemon):
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(exception.AccelError):
        for _ in range(64):
            writer.write(raw_image(MiB))
        writer.close()
    return writer.task, (exception.HelperUnavailable,
                         exception.StreamFailed)


IN_CASES = {
    'truncated': _truncated, 'abort': _abort, 'idle writer': _idle,
    'gzip bomb': _bomb, 'qcow2 claimed as raw': _qcow2_as_raw,
    'backing file': _backing_file, 'wrong token': _wrong_token,
    'two writers': _two_writers, 'writer killed': _client_killed,
    'user not admitted': _not_admitted, 'helper killed': _helper_killed,
}


@pytest.mark.parametrize('case', sorted(IN_CASES))
def test_stream_in_fails_clean(daemon, user, case):
    dst = os.path.join(daemon.images, common.unique('in') + '.raw')
    with daemon.client() as client:
        func = IN_CASES[case]
        args = (daemon, client, dst) + ((user,) if func is _not_admitted
                                        else ())
        task, errors = func(*args)
        with pytest.raises(errors):
            task.wait(60)
    assert left_behind(daemon, dst) == []
    still_serves(daemon)
    assert left_behind(daemon) == []


def test_daemon_killed_mid_stream_in(daemon):
    dst = os.path.join(daemon.images, common.unique('in-crash') + '.raw')
    with daemon.client() as client:
        writer = client.stream_in(dst, 'raw', 'raw')
        writer.write(raw_image(2 * MiB))
        writer._flush()
        everything = common.family(daemon)
        daemon.crash()
        deadline = time.monotonic() + 10
        while common.still_alive(everything) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        assert not common.still_alive(everything)
        writer._drop()
    daemon.start()
    with daemon.client() as client:
        with pytest.raises(exception.TaskInterrupted):
            client.task(writer.task.id).wait(10)
    # The next helper removes the dead one's socket before its first
    # stream.
    still_serves(daemon)
    assert left_behind(daemon, dst) == []


# --- stream_out: what the reader takes ------------------------------------
def _source(daemon, size=48 * MiB):
    path = os.path.join(daemon.images, common.unique('out') + '.raw')
    with open(path, 'wb') as f:
        f.write(os.urandom(size))
    return path


def _reader_gone(daemon, client, src):
    reader = client.stream_out(src, 'raw', 'raw').open()
    assert reader.read(64 * 1024)
    reader.close()
    return reader.task, exception.StreamFailed


def _reader_idle(daemon, client, src):
    reader = client.stream_out(src, 'raw', 'raw').open()
    time.sleep(IDLE + 2)
    reader._drop()
    return reader.task, exception.StreamFailed


def _source_not_what_it_says(daemon, client, src):
    gen.qcow2_with_data(src + '.q', size=16 * MiB)
    os.replace(src + '.q', src)
    reader = client.stream_out(src, 'raw', 'raw', compression='gzip')
    with pytest.raises(exception.FormatMismatch):
        reader.open().read()
    return reader.task, exception.FormatMismatch


def _out_helper_killed(daemon, client, src):
    reader = client.stream_out(src, 'raw', 'raw').open()
    assert reader.read(64 * 1024)
    for pid in common.helper_pids(daemon):
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(exception.AccelError):
        while reader.read(1024 * 1024):
            pass
    return reader.task, (exception.HelperUnavailable,
                         exception.StreamFailed)


OUT_CASES = {'reader gone': _reader_gone, 'idle reader': _reader_idle,
             'source not what it says': _source_not_what_it_says,
             'helper killed': _out_helper_killed}


@pytest.mark.parametrize('case', sorted(OUT_CASES))
def test_stream_out_fails_clean(daemon, case):
    src = _source(daemon)
    try:
        with daemon.client() as client:
            task, errors = OUT_CASES[case](daemon, client, src)
            with pytest.raises(errors):
                task.wait(60)
        assert left_behind(daemon) == []
        still_serves(daemon)
        assert left_behind(daemon) == []
    finally:
        os.unlink(src)
