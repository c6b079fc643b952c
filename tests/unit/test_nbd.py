# SPDX-License-Identifier: Apache-2.0
"""The NBD server that lends qemu-img an image without a file to reopen.

Two kinds of peer: the real ``qemu-img`` (info, map, convert of served
files, a device-like writable export), and a hand-written hostile client
that breaks the protocol in each way the server must survive: it may
only ever answer, read or write ``[0, size)`` of its one descriptor.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess

import pytest

from accel_daemon.engine import nbd

QEMU_IMG = 'qemu-img'
MiB = 1024 ** 2


def qemu_img(*args: str, fds: tuple[int, ...] = ()) -> str:
    return subprocess.run([QEMU_IMG, *args], check=True, pass_fds=fds,
                          capture_output=True, text=True).stdout


def sparse_file(path, size: int, data: dict[int, bytes]) -> str:
    with open(path, 'wb') as f:
        f.truncate(size)
        for offset, chunk in data.items():
            f.seek(offset)
            f.write(chunk)
    return str(path)


# --- a client that does what it is told, in the protocol's own terms ------
class Client:
    def __init__(self, export: nbd.Export) -> None:
        self.server, self.sock = nbd.pair(export)
        self.sock.settimeout(10)

    def recv(self, n: int) -> bytes:
        data = b''
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def greeting(self) -> int:
        magic, opt, flags = struct.unpack('>QQH', self.recv(18))
        assert (magic, opt) == (nbd.NBDMAGIC, nbd.IHAVEOPT)
        self.sock.sendall(struct.pack(
            '>I', nbd.FLAG_FIXED_NEWSTYLE | nbd.FLAG_NO_ZEROES))
        return flags

    def option(self, option: int, data: bytes = b'',
               magic: int = nbd.IHAVEOPT) -> None:
        self.sock.sendall(struct.pack('>QII', magic, option, len(data)) +
                          data)

    def replies(self, option: int) -> list[tuple[int, bytes]]:
        out = []
        while True:
            magic, opt, kind, length = struct.unpack('>QIII', self.recv(20))
            assert (magic, opt) == (nbd.REPLY_MAGIC, option)
            out.append((kind, self.recv(length)))
            if kind != nbd.REP_INFO and kind != nbd.REP_META_CONTEXT:
                return out

    def go(self, contexts: bool = True,
           block_size: bool = True) -> tuple[int, int]:
        """Negotiate structured replies (+ base:allocation); return the
        export's (size, flags)."""
        self.greeting()
        self.option(nbd.OPT_STRUCTURED_REPLY)
        assert self.replies(nbd.OPT_STRUCTURED_REPLY)[-1][0] == nbd.REP_ACK
        if contexts:
            query = nbd.BASE_ALLOCATION
            self.option(nbd.OPT_SET_META_CONTEXT, struct.pack(
                '>II', 0, 1) + struct.pack('>I', len(query)) + query)
            self.replies(nbd.OPT_SET_META_CONTEXT)
        if block_size:
            self.option(nbd.OPT_GO, struct.pack('>IHH', 0, 1,
                                                nbd.INFO_BLOCK_SIZE))
        else:
            self.option(nbd.OPT_GO, struct.pack('>IH', 0, 0))
        replies = self.replies(nbd.OPT_GO)
        assert replies[-1][0] == nbd.REP_ACK
        info = [d for k, d in replies if k == nbd.REP_INFO
                and struct.unpack_from('>H', d)[0] == nbd.INFO_EXPORT]
        _, size, flags = struct.unpack('>HQH', info[0])
        return size, flags

    def request(self, kind: int, offset: int, length: int,
                handle: int = 7, flags: int = 0) -> None:
        self.sock.sendall(struct.pack('>IHHQQI', nbd.REQUEST_MAGIC, flags,
                                      kind, handle, offset, length))

    def reply(self) -> tuple[int, bytes]:
        """One structured reply chunk: (type, payload); an error type
        becomes (type, errno)."""
        return self.reply_to()[1:]

    def reply_to(self) -> tuple[int, int, bytes]:
        """(handle, type, payload) of one structured reply chunk."""
        magic, flags, kind, handle, length = struct.unpack(
            '>IHHQI', self.recv(20))
        assert magic == nbd.STRUCTURED_REPLY_MAGIC
        assert flags & nbd.REPLY_FLAG_DONE
        payload = self.recv(length)
        if kind == nbd.REPLY_TYPE_ERROR:
            return handle, kind, struct.unpack_from('>I', payload)[0]
        return handle, kind, payload

    def read(self, offset: int, length: int) -> bytes | int:
        self.request(nbd.CMD_READ, offset, length)
        kind, payload = self.reply()
        if kind == nbd.REPLY_TYPE_ERROR:
            return payload
        assert kind == nbd.REPLY_TYPE_OFFSET_DATA
        assert struct.unpack_from('>Q', payload)[0] == offset
        return payload[8:]

    def closed(self) -> bool:
        """The server ended the connection (its thread has stopped)."""
        self.server._thread.join(10)
        try:
            return self.sock.recv(1) == b''
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()
        self.server.finish(10)


@pytest.fixture
def serve(tmp_path):
    clients: list[Client] = []
    opened: list[int] = []

    def serve(data: bytes = b'', size: int | None = None,
              writable: bool = False) -> Client:
        path = tmp_path / ('export%d' % len(clients))
        if size is None:
            path.write_bytes(data)
        else:
            sparse_file(path, size, {0: data} if data else {})
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        opened.append(fd)
        client = Client(nbd.Export.of(fd, writable))
        clients.append(client)
        return client

    yield serve
    for client in clients:
        client.close()
    for fd in opened:
        os.close(fd)


# --- the real qemu-img as the peer -----------------------------------------
def test_qemu_img_reads_a_served_qcow2_and_sees_no_backing(tmp_path):
    path = tmp_path / 'img.qcow2'
    qemu_img('create', '-f', 'qcow2', str(path), '64M')
    fd = os.open(path, os.O_RDONLY)
    try:
        with nbd.Serving() as serving:
            spec = serving.image(fd, 'qcow2')
            info = json.loads(qemu_img('info', '--output=json', spec,
                                       fds=serving.fds))
        assert info['format'] == 'qcow2'
        assert info['virtual-size'] == 64 * MiB
        assert 'backing-filename' not in info
        assert not serving.short
    finally:
        os.close(fd)


def test_qemu_img_converts_a_served_sparse_file_and_keeps_its_holes(
        tmp_path):
    size = 64 * MiB
    src = sparse_file(tmp_path / 'src.raw', size,
                      {0: b'A' * MiB, 40 * MiB: b'B' * MiB})
    out = tmp_path / 'out.raw'
    fd = os.open(src, os.O_RDONLY)
    try:
        with nbd.Serving() as serving:
            spec = serving.image(fd, 'raw')
            extents = json.loads(qemu_img('map', '--output=json', spec,
                                          fds=serving.fds))
            with nbd.Serving() as again:
                qemu_img('convert', '-O', 'raw', again.image(fd, 'raw'),
                         str(out), fds=again.fds)
        assert serving.servers[0].requests > 0
    finally:
        os.close(fd)
    data = [(e['start'], e['length']) for e in extents if e['data']]
    assert data == [(0, MiB), (40 * MiB, MiB)]
    assert out.read_bytes() == open(src, 'rb').read()
    # The holes were not read, so they are not written either.
    assert os.stat(out).st_blocks * 512 <= 4 * MiB


def test_qemu_img_writes_a_writable_export_in_place(tmp_path):
    # Stands in for a block device: the output is served, never reopened.
    src = sparse_file(tmp_path / 'src.raw', 8 * MiB, {MiB: b'xyz' * 1000})
    target = tmp_path / 'target'
    target.write_bytes(b'\xff' * (8 * MiB))
    sfd = os.open(src, os.O_RDONLY)
    tfd = os.open(target, os.O_RDWR)
    try:
        with nbd.Serving() as serving:
            argv = ['convert', '-n', '-f', 'raw', '-O', 'raw',
                    serving.image(sfd, 'raw'),
                    serving.image(tfd, 'raw', writable=True)]
            qemu_img(*argv, fds=serving.fds)
        assert not any(s.error for s in serving.servers)
    finally:
        os.close(sfd)
        os.close(tfd)
    assert target.read_bytes() == open(src, 'rb').read()


def test_a_backing_file_named_in_the_header_is_never_opened(tmp_path):
    secret = tmp_path / 'secret'
    secret.write_bytes(b's3cret' * 1000)
    path = tmp_path / 'evil.qcow2'
    qemu_img('create', '-f', 'qcow2', '-F', 'raw', '-b', str(secret),
             str(path), '1M')
    out = tmp_path / 'out.raw'
    fd = os.open(path, os.O_RDONLY)
    try:
        with nbd.Serving() as serving:
            qemu_img('convert', '-O', 'raw', serving.image(fd, 'qcow2'),
                     str(out), fds=serving.fds)
    finally:
        os.close(fd)
    assert b's3cret' not in out.read_bytes()
    assert out.read_bytes() == bytes(MiB)


def test_image_spec_pins_the_format_and_refuses_backing():
    assert json.loads(nbd.image_spec('qcow2', 5)[5:]) == {
        'backing': None, 'driver': 'qcow2',
        'file': {'driver': 'nbd', 'server': {'str': '5', 'type': 'fd'}}}
    # raw has no backing option: qemu would refuse one.
    assert 'backing' not in json.loads(nbd.image_spec('raw', 5)[5:])


# --- what the protocol gives a client that means harm ----------------------
def test_reads_within_the_export(serve):
    client = serve(b'0123456789' * 100)
    size, flags = client.go()
    assert size == 1000
    assert flags & nbd.TF_READ_ONLY
    assert client.read(10, 5) == b'01234'
    assert client.read(995, 5) == b'56789'


@pytest.mark.parametrize('offset,length', [(996, 5), (2 ** 63, 1),
                                           (2 ** 64 - 1, 2)])
def test_a_read_past_the_end_is_einval(serve, offset, length):
    client = serve(b'x' * 1000)
    client.go()
    assert client.read(offset, length) == errno.EINVAL
    # The connection still serves.
    assert client.read(0, 1) == b'x'


def test_an_oversized_read_is_refused_not_buffered(serve):
    client = serve(size=nbd.MAX_BLOCK * 2)
    client.go()
    assert client.read(0, nbd.MAX_BLOCK + 1) == errno.EOVERFLOW
    assert client.read(0, 4) == bytes(4)


def test_a_write_to_a_read_only_export_is_eperm_and_changes_nothing(
        serve, tmp_path):
    client = serve(b'a' * 4096)
    client.go()
    client.request(nbd.CMD_WRITE, 0, 4)
    client.sock.sendall(b'EVIL')
    assert client.reply() == (nbd.REPLY_TYPE_ERROR, errno.EPERM)
    for kind in (nbd.CMD_WRITE_ZEROES, nbd.CMD_FLUSH):
        client.request(kind, 0, 4)
        assert client.reply() == (nbd.REPLY_TYPE_ERROR, errno.EINVAL)
    assert client.read(0, 4) == b'aaaa'
    assert (tmp_path / 'export0').read_bytes() == b'a' * 4096


def test_a_write_larger_than_a_block_ends_the_connection(serve):
    client = serve(size=nbd.MAX_BLOCK * 4, writable=True)
    client.go()
    client.request(nbd.CMD_WRITE, 0, nbd.MAX_BLOCK + 1)
    assert client.closed()
    assert isinstance(client.server.error, nbd.ProtocolError)


def test_a_write_past_the_end_is_einval_and_its_payload_is_consumed(
        serve, tmp_path):
    client = serve(b'\0' * 4096, writable=True)
    size, flags = client.go()
    assert not flags & nbd.TF_READ_ONLY
    client.request(nbd.CMD_WRITE, 4094, 4)
    client.sock.sendall(b'PAST')
    assert client.reply() == (nbd.REPLY_TYPE_ERROR, errno.EINVAL)
    client.request(nbd.CMD_WRITE, 8, 4, flags=nbd.CMDF_FUA)
    client.sock.sendall(b'GOOD')
    assert client.reply()[0] == nbd.REPLY_TYPE_NONE
    data = (tmp_path / 'export0').read_bytes()
    assert len(data) == 4096
    assert data[8:12] == b'GOOD'
    assert b'PAST' not in data


def test_write_zeroes_punches_a_hole_in_a_writable_export(serve, tmp_path):
    client = serve(b'\xee' * (4 * MiB), writable=True)
    client.go()
    client.request(nbd.CMD_WRITE_ZEROES, MiB, 2 * MiB)
    assert client.reply()[0] == nbd.REPLY_TYPE_NONE
    client.request(nbd.CMD_FLUSH, 0, 0)
    assert client.reply()[0] == nbd.REPLY_TYPE_NONE
    data = (tmp_path / 'export0').read_bytes()
    assert data == b'\xee' * MiB + bytes(2 * MiB) + b'\xee' * MiB
    assert os.stat(tmp_path / 'export0').st_blocks * 512 <= 3 * MiB


@pytest.mark.parametrize('magic', [0, nbd.NBDMAGIC])
def test_a_bad_option_magic_ends_the_handshake(serve, magic):
    client = serve(b'x')
    client.greeting()
    client.option(nbd.OPT_GO, b'', magic=magic)
    assert client.closed()
    assert isinstance(client.server.error, nbd.ProtocolError)


def test_an_option_longer_than_the_limit_ends_the_handshake(serve):
    client = serve(b'x')
    client.greeting()
    # Announced, never sent: the server must not wait for 4 GiB.
    client.sock.sendall(struct.pack('>QII', nbd.IHAVEOPT, nbd.OPT_GO,
                                    2 ** 32 - 1))
    assert client.closed()
    assert 'too long' in str(client.server.error)


@pytest.mark.parametrize('data', [b'', b'\0\0\0\x09', struct.pack(
    '>IH', 0, 5), struct.pack('>IHH', 0, 0, 0) + b'junk'])
def test_a_malformed_go_is_invalid_and_the_handshake_goes_on(serve, data):
    client = serve(b'hello')
    client.greeting()
    client.option(nbd.OPT_GO, data)
    assert client.replies(nbd.OPT_GO) == [(nbd.REP_ERR_INVALID, b'')]
    client.option(nbd.OPT_GO, struct.pack('>IH', 0, 0))
    assert client.replies(nbd.OPT_GO)[-1][0] == nbd.REP_ACK


def test_unknown_options_are_unsupported_and_abort_is_acknowledged(serve):
    client = serve(b'x')
    client.greeting()
    client.option(3)                        # NBD_OPT_LIST
    assert client.replies(3) == [(nbd.REP_ERR_UNSUP, b'')]
    client.option(nbd.OPT_ABORT)
    assert client.replies(nbd.OPT_ABORT) == [(nbd.REP_ACK, b'')]
    assert client.closed()
    assert client.server.error is None


def test_a_bad_request_magic_ends_the_connection(serve):
    client = serve(b'x' * 10)
    client.go()
    client.sock.sendall(struct.pack('>IHHQQI', 0xdeadbeef, 0, 0, 1, 0, 1))
    assert client.closed()
    assert isinstance(client.server.error, nbd.ProtocolError)


def test_unknown_commands_are_einval(serve):
    client = serve(b'x' * 10)
    client.go()
    for kind in (4, 5, 99):                 # TRIM, CACHE, nonsense
        client.request(kind, 0, 1)
        assert client.reply() == (nbd.REPLY_TYPE_ERROR, errno.EINVAL)


def test_block_status_reports_holes_and_data(serve, tmp_path):
    path = tmp_path / 'sparse'
    sparse_file(path, 16 * MiB, {4 * MiB: b'd' * MiB})
    fd = os.open(path, os.O_RDONLY)
    try:
        client = Client(nbd.Export.of(fd))
        client.go()
        client.request(nbd.CMD_BLOCK_STATUS, 0, 16 * MiB)
        kind, payload = client.reply()
        assert kind == nbd.REPLY_TYPE_BLOCK_STATUS
        assert struct.unpack_from('>I', payload)[0] == nbd.CONTEXT_ID
        extents = [struct.unpack_from('>II', payload, 4 + 8 * i)
                   for i in range((len(payload) - 4) // 8)]
        hole = nbd.STATE_HOLE | nbd.STATE_ZERO
        assert extents == [(4 * MiB, hole), (MiB, 0), (11 * MiB, hole)]
        client.request(nbd.CMD_BLOCK_STATUS, 0, 16 * MiB,
                       flags=nbd.CMDF_REQ_ONE)
        kind, payload = client.reply()
        assert len(payload) == 12
        client.close()
    finally:
        os.close(fd)


def test_block_status_without_a_negotiated_context_is_einval(serve):
    client = serve(b'x' * 10)
    client.go(contexts=False)
    client.request(nbd.CMD_BLOCK_STATUS, 0, 10)
    assert client.reply() == (nbd.REPLY_TYPE_ERROR, errno.EINVAL)


def test_a_file_that_shrinks_is_read_as_zeros_and_marked_short(
        serve, tmp_path):
    client = serve(b'y' * 8192)
    size, _ = client.go()
    os.truncate(tmp_path / 'export0', 100)
    data = client.read(0, 8192)
    assert data == b'y' * 100 + bytes(8092)
    assert client.server.short


def test_a_peer_that_vanishes_mid_handshake_leaves_the_server_done(serve):
    client = serve(b'x')
    client.recv(18)
    client.sock.close()
    client.server._thread.join(10)
    assert not client.server._thread.is_alive()
    assert isinstance(client.server.error, (EOFError, ConnectionError))


def test_serving_close_is_idempotent_and_closes_the_tools_ends(tmp_path):
    path = tmp_path / 'f'
    path.write_bytes(b'z' * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        serving = nbd.Serving()
        serving.image(fd, 'raw')
        peer_fds = serving.fds
        serving.close()
        serving.close()
        assert serving.fds == ()
        for peer in peer_fds:
            with pytest.raises(OSError):
                os.fstat(peer)
        assert not serving.servers[0]._thread.is_alive()
    finally:
        os.close(fd)


def test_allocation_of_a_range_and_a_limit(tmp_path):
    path = sparse_file(tmp_path / 's', 8 * MiB,
                       {MiB: b'a' * MiB, 4 * MiB: b'b' * MiB})
    fd = os.open(path, os.O_RDONLY)
    try:
        hole = nbd.STATE_HOLE | nbd.STATE_ZERO
        assert nbd.allocation(fd, MiB // 2, 2 * MiB) == [
            (MiB // 2, hole), (MiB, 0), (MiB // 2, hole)]
        assert nbd.allocation(fd, 0, 8 * MiB, limit=2) == [
            (MiB, hole), (MiB, 0)]
        # Past the end of a file that shrank: a hole.
        assert nbd.allocation(fd, 8 * MiB, MiB) == [(MiB, hole)]
    finally:
        os.close(fd)


def test_requests_in_flight_are_each_answered_once(serve):
    data = os.urandom(64 * 4096)
    client = serve(data)
    client.go()
    wanted = {handle: (handle * 4096, 4096 + handle)
              for handle in range(1, 41)}
    for handle, (offset, length) in wanted.items():
        client.request(nbd.CMD_READ, offset, length, handle=handle)
    seen = {}
    for _ in wanted:
        handle, kind, payload = client.reply_to()
        assert kind == nbd.REPLY_TYPE_OFFSET_DATA and handle not in seen
        seen[handle] = payload[8:]
    assert seen == {h: data[o:o + n] for h, (o, n) in wanted.items()}


def test_writes_in_flight_land_before_the_flush_is_answered(serve,
                                                            tmp_path):
    client = serve(bytes(1024 * 1024), writable=True)
    client.go()
    for i in range(16):
        client.request(nbd.CMD_WRITE, i * 65536, 65536, handle=i + 1)
        client.sock.sendall(bytes([i + 1]) * 65536)
    client.request(nbd.CMD_FLUSH, 0, 0, handle=99)
    order = [client.reply_to()[:2] for _ in range(17)]
    assert order[-1] == (99, nbd.REPLY_TYPE_NONE)
    assert sorted(h for h, _ in order[:-1]) == list(range(1, 17))
    data = (tmp_path / 'export0').read_bytes()
    assert all(data[i * 65536:(i + 1) * 65536] == bytes([i + 1]) * 65536
               for i in range(16))


def aligned(tmp_path, block: int) -> Client:
    path = tmp_path / 'aligned'
    path.write_bytes(bytes(range(256)) * 64)
    fd = os.open(path, os.O_RDONLY)
    client = Client(nbd.Export(fd, 16384, block=block))
    client.fd = fd
    return client


def test_a_misaligned_request_is_einval_where_a_block_size_is_set(
        tmp_path):
    client = aligned(tmp_path, 512)
    try:
        client.go()
        assert client.read(1, 512) == errno.EINVAL
        assert client.read(512, 100) == errno.EINVAL
        assert client.read(512, 512) == (bytes(range(256)) * 2)
    finally:
        client.close()
        os.close(client.fd)


def test_a_client_that_asks_no_block_size_is_refused_one(tmp_path):
    client = aligned(tmp_path, 512)
    try:
        client.greeting()
        client.option(nbd.OPT_GO, struct.pack('>IH', 0, 0))
        assert client.replies(nbd.OPT_GO) == [
            (nbd.REP_ERR_BLOCK_SIZE_REQD, b'')]
    finally:
        client.close()
        os.close(client.fd)
