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
* requests are read in order by one thread and served by ``WORKERS``
  threads, so reads (and a device's writes) run in parallel as qemu-img's
  coroutines issue them, as they did when qemu-img opened the file
  itself; each reply goes out whole under one lock;
* a read past the end of a file that shrank since it was opened is padded
  with zeros and recorded (``Server.short``), so the task refuses the
  output;
* a writable export (block devices) takes ``WRITE``, ``WRITE_ZEROES``
  and ``FLUSH`` (which waits for the writes before it); every request is
  checked against the export's size and the largest block
  (``MAX_BLOCK``) before anything is done;
* whatever the peer sends, the server only ever answers, reads or writes
  the one descriptor it was given, then ends when the socket closes.

Pure standard library, no privilege: the unit tests serve a plain file to
a real ``qemu-img``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import json
import logging
import mmap
import os
import queue
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
REP_ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
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
# Threads serving the requests of one connection, and requests in flight
# (each holds at most one buffer of up to MAX_BLOCK, touched only as far
# as it is used).
WORKERS = 4
IN_FLIGHT = 2 * WORKERS

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
    writing (a block device written in place).  ``block`` is the smallest
    unit a request may address: a block device is served with
    ``O_DIRECT`` (set on the descriptor while it is served, as qemu-img's
    ``cache=none`` did when it opened the device itself), so its requests
    must be aligned to its logical block size, which the client is told.
    """
    fd: int
    size: int
    writable: bool = False
    direct: bool = False
    block: int = 1

    @classmethod
    def of(cls, fd: int, writable: bool = False) -> Export:
        st = os.fstat(fd)
        if stat.S_ISBLK(st.st_mode):
            size = os.lseek(fd, 0, os.SEEK_END)
            return cls(fd, size, writable, direct=True,
                       block=_logical_block(fd))
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
        self._send_lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(IN_FLIGHT)
        self._writes = 0
        self._writes_done = threading.Condition()
        self._buffers: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._made: list[mmap.mmap] = []
        self._local = threading.local()

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
        if not self._thread.is_alive():
            for buf in self._made:
                buf.close()

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
            self._hang_up()
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def _hang_up(self) -> None:
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

    def _send(self, *parts: bytes | memoryview) -> None:
        """One whole reply: replies from several workers never mix."""
        with self._send_lock:
            for part in parts:
                self.sock.sendall(part)

    def _buffer(self) -> mmap.mmap:
        """A buffer of MAX_BLOCK (mapped, so only what a request uses is
        ever touched): one kept by each worker for reads, and one per
        write in flight, given back after it, so never more than
        WORKERS + IN_FLIGHT."""
        try:
            return self._buffers.get_nowait()
        except queue.Empty:
            buf = mmap.mmap(-1, MAX_BLOCK)
            self._made.append(buf)
            return buf

    def _submit(self, work: Callable[..., None], *args: object) -> None:
        """Run ``work(*args)`` in a worker; at most IN_FLIGHT at once.
        A worker that fails ends the connection."""
        assert self._pool is not None  # nosec B101: set by _transmission
        self._slots.acquire()

        def run() -> None:
            try:
                work(*args)
            except (ConnectionError, OSError) as e:
                if self.error is None:
                    self.error = e
                self._hang_up()
            except Exception as e:     # a bug must not pass silently
                LOG.exception('NBD server failed')
                self.error = e
                self._hang_up()
            finally:
                self._slots.release()

        self._pool.submit(run)

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
                if self.export.block > 1:
                    # No way to tell this client the block size, nor to
                    # answer with an error: the connection ends.
                    raise ProtocolError('EXPORT_NAME for an export with '
                                        'a minimum block size')
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
        if self.export.block > 1 and INFO_BLOCK_SIZE not in wanted:
            # A client that cannot honour a minimum block size is refused
            # (the protocol's NBD_REP_ERR_BLOCK_SIZE_REQD).
            self._reply(option, REP_ERR_BLOCK_SIZE_REQD)
            return False
        self._reply(option, REP_INFO, struct.pack(
            '>HQH', INFO_EXPORT, self.export.size, self._flags()))
        if INFO_BLOCK_SIZE in wanted:
            self._reply(option, REP_INFO, struct.pack(
                '>HIII', INFO_BLOCK_SIZE, self.export.block,
                PREFERRED_BLOCK, MAX_BLOCK))
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
        self._pool = concurrent.futures.ThreadPoolExecutor(
            WORKERS, thread_name_prefix='nbd-%d' % self.export.fd)
        with _direct_io(self.export):
            self._serve()

    def _serve(self) -> None:
        while True:
            magic, flags, kind, handle, offset, length = _REQUEST.unpack(
                self._recv(_REQUEST.size))
            if magic != REQUEST_MAGIC:
                raise ProtocolError('bad request magic %#x' % magic)
            self.requests += 1
            if kind == CMD_DISC:
                # Every reply first: then the connection ends.
                assert self._pool is not None  # nosec B101: _transmission
                self._pool.shutdown(wait=True)
                return
            if kind == CMD_WRITE:
                # The payload follows whatever we answer.
                self._write(flags, handle, offset, length)
                continue
            err = self._bounds(kind, offset, length)
            if err:
                self._error(handle, err)
            elif kind == CMD_READ:
                self._submit(self._read, handle, offset, length)
            elif kind == CMD_BLOCK_STATUS and self.contexts:
                self._block_status(flags, handle, offset, length)
            elif kind == CMD_FLUSH and self.export.writable:
                self._wait_for_writes()
                os.fdatasync(self.export.fd)
                self._done(handle)
            elif kind == CMD_WRITE_ZEROES and self.export.writable:
                self._writing()
                self._submit(self._write_zeroes, flags, handle, offset,
                             length)
            else:
                self._error(handle, errno.EINVAL)

    def _writing(self) -> None:
        with self._writes_done:
            self._writes += 1

    def _written(self) -> None:
        with self._writes_done:
            self._writes -= 1
            self._writes_done.notify_all()

    def _wait_for_writes(self) -> None:
        """FLUSH covers every write received before it."""
        with self._writes_done:
            self._writes_done.wait_for(lambda: self._writes == 0)

    def _bounds(self, kind: int, offset: int, length: int) -> int:
        if kind == CMD_FLUSH:
            return 0
        if offset + length > self.export.size:
            return errno.EINVAL
        if kind in (CMD_READ, CMD_WRITE) and length > MAX_BLOCK:
            return errno.EOVERFLOW
        if (offset | length) % self.export.block:
            return errno.EINVAL
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
        if not self.export.direct:
            self._sendfile(handle, offset, length)
            return
        buf = getattr(self._local, 'buffer', None)
        if buf is None:
            # One per worker thread, kept: a read's buffer is free again
            # once its reply is sent, by this same thread.
            buf = self._local.buffer = self._buffer()
        view = memoryview(buf)[:length]
        try:
            got = 0
            while got < length:
                n = os.preadv(self.export.fd, [view[got:]], offset + got)
                if n == 0:
                    # The file shrank under us: the reply is promised, so
                    # finish it with zeros and let the task refuse the
                    # output.
                    self.short = True
                    view[got:] = bytes(length - got)
                    break
                got += n
            if self.structured:
                self._send(_CHUNK.pack(STRUCTURED_REPLY_MAGIC,
                                       REPLY_FLAG_DONE,
                                       REPLY_TYPE_OFFSET_DATA, handle,
                                       8 + length),
                           struct.pack('>Q', offset), view)
            else:
                self._send(_SIMPLE.pack(SIMPLE_REPLY_MAGIC, 0, handle),
                           view)
        finally:
            view.release()

    def _sendfile(self, handle: int, offset: int, length: int) -> None:
        """A file's read, from the page cache to the socket with no copy
        through Python; the reply is one, so it holds the send lock."""
        if self.structured:
            head = _CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                               REPLY_TYPE_OFFSET_DATA, handle,
                               8 + length) + struct.pack('>Q', offset)
        else:
            head = _SIMPLE.pack(SIMPLE_REPLY_MAGIC, 0, handle)
        out = self.sock.fileno()
        with self._send_lock:
            self.sock.sendall(head)
            sent = 0
            while sent < length:
                n = os.sendfile(out, self.export.fd, offset + sent,
                                length - sent)
                if n == 0:
                    # The file shrank under us: the reply is promised, so
                    # finish it with zeros and let the task refuse the
                    # output.
                    self.short = True
                    self.sock.sendall(bytes(length - sent))
                    break
                sent += n

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
        """Read a WRITE's payload here, in order; write it in a worker."""
        if length > MAX_BLOCK:
            # Reading the payload would mean buffering any amount the
            # peer names: the connection ends instead.
            raise ProtocolError('write of %d bytes' % length)
        buf = self._buffer()
        view = memoryview(buf)[:length]
        try:
            self._recv_into(view)
        except BaseException:
            view.release()
            self._buffers.put(buf)
            raise
        err = errno.EPERM if not self.export.writable else \
            self._bounds(CMD_WRITE, offset, length)
        if err:
            view.release()
            self._buffers.put(buf)
            self._error(handle, err)
            return
        self._writing()
        self._submit(self._pwrite, flags, handle, offset, buf, view)

    def _pwrite(self, flags: int, handle: int, offset: int,
                buf: mmap.mmap, view: memoryview) -> None:
        try:
            done = 0
            while done < len(view):
                done += os.pwrite(self.export.fd, view[done:],
                                  offset + done)
            if flags & CMDF_FUA:
                os.fdatasync(self.export.fd)
        finally:
            view.release()
            self._buffers.put(buf)
            self._written()
        self._done(handle)

    def _write_zeroes(self, flags: int, handle: int, offset: int,
                      length: int) -> None:
        try:
            mode = FALLOC_FL_ZERO_RANGE if flags & CMDF_NO_HOLE else (
                FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
            if not (length and _fallocate(self.export.fd, mode, offset,
                                          length)):
                # Page-aligned, so an O_DIRECT descriptor takes it too.
                zeros = memoryview(_zeros())
                done = 0
                while done < length:
                    n = min(len(zeros), length - done)
                    done += os.pwrite(self.export.fd, zeros[:n],
                                      offset + done)
            if flags & CMDF_FUA:
                os.fdatasync(self.export.fd)
        finally:
            self._written()
        self._done(handle)


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
_BLKSSZGET = 0x1268
_ZEROS: list[mmap.mmap] = []


def _zeros() -> mmap.mmap:
    """PREFERRED_BLOCK zero bytes, page-aligned (made once)."""
    if not _ZEROS:
        _ZEROS.append(mmap.mmap(-1, PREFERRED_BLOCK,
                                prot=mmap.PROT_READ))
    return _ZEROS[0]


def _logical_block(fd: int) -> int:
    """The logical block size of a block device (512 if it will not
    say): the alignment O_DIRECT needs."""
    out = ctypes.c_int(0)
    if _libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(_BLKSSZGET),
                   ctypes.byref(out)) != 0 or out.value <= 0:
        return 512
    return int(out.value)


@contextlib.contextmanager
def _direct_io(export: Export) -> Iterator[None]:
    """``O_DIRECT`` on the export's descriptor while it is served, if it
    asks for it and the device takes it; the flags are restored after,
    for whatever reads the descriptor next."""
    if not export.direct:
        yield
        return
    flags = fcntl.fcntl(export.fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(export.fd, fcntl.F_SETFL, flags | os.O_DIRECT)
    except OSError as e:
        LOG.debug('No O_DIRECT on %d (%s): served through the page cache',
                  export.fd, e)
        yield
        return
    try:
        yield
    finally:
        fcntl.fcntl(export.fd, fcntl.F_SETFL, flags)


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
