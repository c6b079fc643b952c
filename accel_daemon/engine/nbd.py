# SPDX-License-Identifier: Apache-2.0
"""Serve an opened image to qemu-img over NBD, so qemu-img opens nothing.

``qemu-img`` used to reopen ``/dev/fd/N`` of each image.  The kernel checks
such a reopen against the file's mode, so the tool needed
``CAP_DAC_READ_SEARCH`` to read another user's volume file and
``CAP_DAC_OVERRIDE`` to write a device node.  Here the privileged layer
keeps the descriptors it opened, checked and inspected, and lends
qemu-img one end of a socket pair instead: qemu-img's own NBD client
(``server.type=fd``) talks to ``Server``, which runs in a thread of the
privileged process and reads or writes exactly that descriptor, within
``[0, size)`` of the export, and nothing else.  The tool then needs no
capability at all, and has no file of ours to reopen.

The server speaks the fixed newstyle handshake of the NBD protocol
(https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md) with
structured replies and the ``base:allocation`` meta context, so qemu-img
still sees the holes of a sparse file (``SEEK_DATA``/``SEEK_HOLE``) and
does not read them.  It is deliberately small:

* one export, one connection; options it does not know are answered
  ``NBD_REP_ERR_UNSUP``; option data above ``MAX_OPTION`` closes the
  connection;
* reads go out with ``sendfile`` (no copy through Python); a read past the
  end of a file that shrank since it was opened is padded with zeros and
  recorded (``Server.short``), so the task refuses the output;
* a writable export (block devices) takes ``WRITE``, ``WRITE_ZEROES``
  and ``FLUSH``; every request is checked against the export's size and
  the largest block (``MAX_BLOCK``) before anything is done;
* whatever the peer sends, the server only ever answers, reads or writes
  the one descriptor it was given, then ends when the socket closes.

Pure standard library, no privilege: the unit tests serve a plain file to
a real ``qemu-img``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import logging
import mmap
import os
import socket
import stat
import struct
import threading

LOG = logging.getLogger(__name__)

# Handshake.
NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3e889045565a9
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
# Options.
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
# Option replies.
REP_ACK = 1
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_INVALID = (1 << 31) + 3
INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3
# Transmission flags.
TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_SEND_WRITE_ZEROES = 1 << 6
# Requests.
REQUEST_MAGIC = 0x25609513
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7
CMDF_FUA = 1 << 0
CMDF_NO_HOLE = 1 << 1
CMDF_REQ_ONE = 1 << 3
# Replies.
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668e33ef
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1
STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1

BASE_ALLOCATION = b'base:allocation'
CONTEXT_ID = 1
MAX_OPTION = 4096
MAX_BLOCK = 32 * 1024 ** 2
PREFERRED_BLOCK = 2 * 1024 ** 2
# Extents reported per BLOCK_STATUS reply at most (qemu asks for one).
MAX_EXTENTS = 1024

_REQUEST = struct.Struct('>IHHQQI')
_OPTION = struct.Struct('>QII')
_OPTION_REPLY = struct.Struct('>QIII')
_SIMPLE = struct.Struct('>IIQ')
_CHUNK = struct.Struct('>IHHQI')

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


class ProtocolError(Exception):
    """The peer broke the protocol; the connection is closed."""


@dataclasses.dataclass
class Export:
    """What is served: ``size`` bytes of ``fd`` from offset 0.

    ``writable`` only for an output the privileged layer opened for
    writing (a block device written in place); ``discard_cache`` drops
    what was read from the page cache (a volume read once should not
    evict the host's useful cache, as ``cache=none`` did before).
    """
    fd: int
    size: int
    writable: bool = False
    discard_cache: bool = False

    @classmethod
    def of(cls, fd: int, writable: bool = False) -> Export:
        st = os.fstat(fd)
        if stat.S_ISBLK(st.st_mode):
            size = os.lseek(fd, 0, os.SEEK_END)
            return cls(fd, size, writable, discard_cache=True)
        return cls(fd, st.st_size, writable)

    @property
    def sparse_aware(self) -> bool:
        return stat.S_ISREG(os.fstat(self.fd).st_mode)


class Server:
    """Serve one ``Export`` on one connected stream socket, in a thread.

    ``start()`` then hand the peer's end to qemu-img; ``finish()`` after
    qemu-img exited joins the thread and closes the socket.  ``error`` is
    the exception that ended the connection early, if any; ``short`` is
    True when a read ran past the end of a file that shrank.
    """

    def __init__(self, sock: socket.socket, export: Export) -> None:
        self.sock = sock
        self.export = export
        self.structured = False
        self.contexts: set[int] = set()
        self.short = False
        self.error: BaseException | None = None
        self.requests = 0
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='nbd-%d' % export.fd)
        self._buffer: mmap.mmap | None = None

    # --- life cycle ------------------------------------------------------
    def start(self) -> Server:
        self._thread.start()
        return self

    def finish(self, timeout: float | None = None) -> None:
        try:
            # Unblocks a thread still waiting for the peer (a qemu-img
            # that was killed has closed its end already).
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(timeout)
        self.sock.close()
        if self._buffer is not None:
            self._buffer.close()

    def _run(self) -> None:
        try:
            if self._handshake():
                self._transmission()
        except (ProtocolError, ConnectionError, EOFError) as e:
            self.error = e
        except OSError as e:
            if e.errno not in (errno.EBADF, errno.ENOTCONN):
                self.error = e
        except Exception as e:     # a bug must not pass silently
            LOG.exception('NBD server failed')
            self.error = e
        finally:
            # The peer sees the end at once (a tool waiting for a reply
            # fails instead of hanging); finish() closes the socket.
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # --- socket helpers --------------------------------------------------
    def _recv(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError('peer closed the connection')
            data += chunk
        return bytes(data)

    def _recv_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            n = self.sock.recv_into(view[got:])
            if n == 0:
                raise EOFError('peer closed the connection')
            got += n

    def _send(self, *parts: bytes) -> None:
        self.sock.sendall(b''.join(parts))

    # --- handshake -------------------------------------------------------
    def _handshake(self) -> bool:
        self._send(struct.pack('>QQH', NBDMAGIC, IHAVEOPT,
                               FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (client_flags,) = struct.unpack('>I', self._recv(4))
        if not client_flags & FLAG_FIXED_NEWSTYLE:
            raise ProtocolError('client does not speak fixed newstyle')
        self.no_zeroes = bool(client_flags & FLAG_NO_ZEROES)
        while True:
            magic, option, length = _OPTION.unpack(self._recv(_OPTION.size))
            if magic != IHAVEOPT:
                raise ProtocolError('bad option magic %#x' % magic)
            if length > MAX_OPTION:
                raise ProtocolError('option %d too long (%d bytes)'
                                    % (option, length))
            data = self._recv(length)
            if option == OPT_EXPORT_NAME:
                pad = b'' if self.no_zeroes else bytes(124)
                self._send(struct.pack('>QH', self.export.size,
                                       self._flags()), pad)
                return True
            if option == OPT_ABORT:
                self._reply(option, REP_ACK)
                return False
            if option in (OPT_GO, OPT_INFO):
                if self._go(option, data) and option == OPT_GO:
                    return True
            elif option == OPT_STRUCTURED_REPLY:
                if data:
                    self._reply(option, REP_ERR_INVALID)
                else:
                    self.structured = True
                    self._reply(option, REP_ACK)
            elif option in (OPT_SET_META_CONTEXT, OPT_LIST_META_CONTEXT):
                self._meta_context(option, data)
            else:
                self._reply(option, REP_ERR_UNSUP)

    def _reply(self, option: int, kind: int, data: bytes = b'') -> None:
        self._send(_OPTION_REPLY.pack(REPLY_MAGIC, option, kind, len(data)),
                   data)

    def _flags(self) -> int:
        flags = TF_HAS_FLAGS
        if self.export.writable:
            flags |= TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_WRITE_ZEROES
        else:
            flags |= TF_READ_ONLY
        return flags

    def _go(self, option: int, data: bytes) -> bool:
        try:
            (name_len,) = struct.unpack_from('>I', data)
            (count,) = struct.unpack_from('>H', data, 4 + name_len)
            wanted = struct.unpack_from('>%dH' % count, data, 6 + name_len)
        except struct.error:
            self._reply(option, REP_ERR_INVALID)
            return False
        if 6 + name_len + 2 * count != len(data):
            self._reply(option, REP_ERR_INVALID)
            return False
        self._reply(option, REP_INFO, struct.pack(
            '>HQH', INFO_EXPORT, self.export.size, self._flags()))
        if INFO_BLOCK_SIZE in wanted:
            self._reply(option, REP_INFO, struct.pack(
                '>HIII', INFO_BLOCK_SIZE, 1, PREFERRED_BLOCK, MAX_BLOCK))
        self._reply(option, REP_ACK)
        return True

    def _meta_context(self, option: int, data: bytes) -> None:
        try:
            (name_len,) = struct.unpack_from('>I', data)
            (count,) = struct.unpack_from('>I', data, 4 + name_len)
            pos = 8 + name_len
            queries = []
            for _ in range(count):
                (qlen,) = struct.unpack_from('>I', data, pos)
                queries.append(data[pos + 4:pos + 4 + qlen])
                pos += 4 + qlen
        except struct.error:
            self._reply(option, REP_ERR_INVALID)
            return
        if pos != len(data) or (option == OPT_SET_META_CONTEXT
                                and not self.structured):
            self._reply(option, REP_ERR_INVALID)
            return
        if option == OPT_SET_META_CONTEXT:
            self.contexts.clear()
        offer = self.export.sparse_aware
        if offer and (BASE_ALLOCATION in queries or (
                option == OPT_LIST_META_CONTEXT and
                (not queries or b'base:' in queries))):
            if option == OPT_SET_META_CONTEXT:
                self.contexts.add(CONTEXT_ID)
            self._reply(option, REP_META_CONTEXT,
                        struct.pack('>I', CONTEXT_ID) + BASE_ALLOCATION)
        self._reply(option, REP_ACK)

    # --- transmission ----------------------------------------------------
    def _transmission(self) -> None:
        while True:
            magic, flags, kind, handle, offset, length = _REQUEST.unpack(
                self._recv(_REQUEST.size))
            if magic != REQUEST_MAGIC:
                raise ProtocolError('bad request magic %#x' % magic)
            self.requests += 1
            if kind == CMD_DISC:
                return
            if kind == CMD_WRITE:
                # The payload follows whatever we answer.
                self._write(flags, handle, offset, length)
                continue
            err = self._bounds(kind, offset, length)
            if err:
                self._error(handle, err)
            elif kind == CMD_READ:
                self._read(handle, offset, length)
            elif kind == CMD_BLOCK_STATUS and self.contexts:
                self._block_status(flags, handle, offset, length)
            elif kind == CMD_FLUSH and self.export.writable:
                os.fdatasync(self.export.fd)
                self._done(handle)
            elif kind == CMD_WRITE_ZEROES and self.export.writable:
                self._write_zeroes(flags, offset, length)
                self._done(handle)
            else:
                self._error(handle, errno.EINVAL)

    def _bounds(self, kind: int, offset: int, length: int) -> int:
        if kind == CMD_FLUSH:
            return 0
        if offset + length > self.export.size:
            return errno.EINVAL
        if kind in (CMD_READ, CMD_WRITE) and length > MAX_BLOCK:
            return errno.EOVERFLOW
        return 0

    def _done(self, handle: int) -> None:
        if self.structured:
            self._send(_CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                                   REPLY_TYPE_NONE, handle, 0))
        else:
            self._send(_SIMPLE.pack(SIMPLE_REPLY_MAGIC, 0, handle))

    def _error(self, handle: int, err: int) -> None:
        if self.structured:
            self._send(_CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                                   REPLY_TYPE_ERROR, handle, 6),
                       struct.pack('>IH', err, 0))
        else:
            self._send(_SIMPLE.pack(SIMPLE_REPLY_MAGIC, err, handle))

    def _read(self, handle: int, offset: int, length: int) -> None:
        if self.structured:
            self._send(_CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                                   REPLY_TYPE_OFFSET_DATA, handle,
                                   8 + length), struct.pack('>Q', offset))
        else:
            self._send(_SIMPLE.pack(SIMPLE_REPLY_MAGIC, 0, handle))
        sent = 0
        out = self.sock.fileno()
        while sent < length:
            n = os.sendfile(out, self.export.fd, offset + sent,
                            length - sent)
            if n == 0:
                # The file shrank under us: the reply is promised, so
                # finish it with zeros and let the task refuse the output.
                self.short = True
                self._send(bytes(length - sent))
                break
            sent += n
        if self.export.discard_cache:
            os.posix_fadvise(self.export.fd, offset, length,
                             os.POSIX_FADV_DONTNEED)

    def _block_status(self, flags: int, handle: int, offset: int,
                      length: int) -> None:
        extents = allocation(self.export.fd, offset, length,
                             1 if flags & CMDF_REQ_ONE else MAX_EXTENTS)
        body = struct.pack('>I', CONTEXT_ID) + b''.join(
            struct.pack('>II', size, state) for size, state in extents)
        self._send(_CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                               REPLY_TYPE_BLOCK_STATUS, handle, len(body)),
                   body)

    def _write(self, flags: int, handle: int, offset: int,
               length: int) -> None:
        if length > MAX_BLOCK:
            # Reading the payload would mean buffering any amount the
            # peer names: the connection ends instead.
            raise ProtocolError('write of %d bytes' % length)
        if self._buffer is None:
            self._buffer = mmap.mmap(-1, MAX_BLOCK)
        view = memoryview(self._buffer)[:length]
        try:
            self._recv_into(view)
            if not self.export.writable:
                self._error(handle, errno.EPERM)
                return
            err = self._bounds(CMD_WRITE, offset, length)
            if err:
                self._error(handle, err)
                return
            done = 0
            while done < length:
                done += os.pwrite(self.export.fd, view[done:],
                                  offset + done)
        finally:
            view.release()
        if flags & CMDF_FUA:
            os.fdatasync(self.export.fd)
        self._done(handle)

    def _write_zeroes(self, flags: int, offset: int, length: int) -> None:
        mode = FALLOC_FL_ZERO_RANGE if flags & CMDF_NO_HOLE else (
            FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
        if length and _fallocate(self.export.fd, mode, offset, length):
            return
        zeros = bytes(min(length, PREFERRED_BLOCK))
        done = 0
        while done < length:
            n = min(len(zeros), length - done)
            done += os.pwrite(self.export.fd, zeros[:n], offset + done)
        if flags & CMDF_FUA:
            os.fdatasync(self.export.fd)


def allocation(fd: int, offset: int, length: int,
               limit: int = MAX_EXTENTS) -> list[tuple[int, int]]:
    """(length, state) extents of ``[offset, offset + length)`` of a
    regular file: holes read as zeros (``STATE_HOLE | STATE_ZERO``), data
    as 0.  At most ``limit`` extents; they may end before ``length``, as
    the protocol allows.  A hole past the file's end (it shrank) counts as
    a hole."""
    end = offset + length
    out: list[tuple[int, int]] = []
    pos = offset
    while pos < end and len(out) < limit:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            data = end
        if data > pos:
            stop = min(data, end)
            out.append((stop - pos, STATE_HOLE | STATE_ZERO))
            pos = stop
            continue
        try:
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            hole = end
        stop = min(max(hole, pos + 1), end)
        out.append((stop - pos, 0))
        pos = stop
    return out


_libc = ctypes.CDLL(None, use_errno=True)


def _fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    """fallocate(2) with ``mode``; False when the target cannot do it."""
    res = _libc.fallocate(ctypes.c_int(fd), ctypes.c_int(mode),
                          ctypes.c_longlong(offset),
                          ctypes.c_longlong(length))
    return res == 0


def pair(export: Export) -> tuple[Server, socket.socket]:
    """A started server for ``export`` and the peer's end of its socket
    (to pass to the tool; close it here once the tool has it)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Server(ours, export).start(), theirs


# Formats whose driver takes a "backing" option.
BACKED_FORMATS = frozenset({'qcow2', 'qed', 'vmdk'})


def socket_spec(fd: int) -> dict:
    """The ``file`` node of an image served on the socket ``fd``."""
    return {'driver': 'nbd', 'server': {'type': 'fd', 'str': str(int(fd))}}


def image_spec(driver: str, fd: int) -> str:
    """qemu-img's ``json:`` filename for an image of format ``driver``
    served on the socket ``fd``: the format is pinned and a backing file
    is refused outright (``backing: null``) for formats that have one."""
    spec: dict = {'driver': driver, 'file': socket_spec(fd)}
    if driver in BACKED_FORMATS:
        spec['backing'] = None
    return 'json:' + json.dumps(spec, separators=(',', ':'),
                                sort_keys=True)


class Serving:
    """The images of one qemu-img run, each served on a socket of its own.

    ``image()`` starts a server for an opened descriptor and returns the
    ``json:`` filename to give qemu-img; ``fds`` are the sockets to pass
    it.  Leaving the block closes our copies of the tool's ends and joins
    every server (the tool has exited by then, or was killed).
    """

    def __init__(self) -> None:
        self.servers: list[Server] = []
        self._peers: list[socket.socket] = []

    def image(self, fd: int, driver: str, writable: bool = False) -> str:
        server, peer = pair(Export.of(fd, writable))
        self.servers.append(server)
        self._peers.append(peer)
        return image_spec(driver, peer.fileno())

    @property
    def fds(self) -> tuple[int, ...]:
        return tuple(p.fileno() for p in self._peers)

    @property
    def short(self) -> bool:
        """A served file shrank while it was read."""
        return any(s.short for s in self.servers)

    def close(self) -> None:
        """Idempotent: the tool's ends closed, every server joined."""
        peers, self._peers = self._peers, []
        for peer in peers:
            peer.close()
        for server in self.servers if peers else ():
            server.finish()

    def __enter__(self) -> Serving:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
