# SPDX-License-Identifier: Apache-2.0
"""Image streams: the caller hands over the bytes of an image over a local
socket, and nothing of them is staged where the caller can see it.

The wire format is ``accel_daemon.streamproto``.  For one ``stream_in``
task the privileged helper:

1. binds ``<stream_dir>/<task id>.sock`` (``stream_dir``: root's, mode
   0750, group ``stream_group``; the socket 0660) and waits up to
   ``stream_idle_timeout`` for a connection;
2. admits a peer only if ``SO_PEERCRED`` names a user of ``stream_users``
   or a member of ``stream_groups``, and its hello line carries the task's
   token (``streamproto.token``: an HMAC of the task id under a key that
   only this helper holds, handed by the daemon to the caller that
   submitted the task, and only to it).  Anyone else is dropped and the
   wait goes on; the first admitted peer is the only one: the socket's
   name goes at once, so a second writer cannot connect;
3. reads data frames until the trailer; a peer idle for
   ``stream_idle_timeout``, a stream longer than ``stream_total_timeout``,
   an ``abort`` trailer, a count that does not match or a connection that
   ends without a trailer fail the task with ``StreamFailed``, and nothing
   is published.

The bytes are then what a ``download`` reads from its file: a gzip
container is inflated by an unprivileged child (the decoder's
``open_decompressed``, fed through a pipe), never in this process, and the
image is judged before anything is written (``pipelines.stream_in``).
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import grp
import hmac
import logging
import os
import pwd
import select
import socket
import stat
import struct
import threading
import time

from accel_daemon.engine import driver
from accel_daemon.engine.progress import Progress
from accel_daemon.engine.settings import Settings
from accel_daemon import exception
from accel_daemon import streamproto as proto

LOG = logging.getLogger(__name__)

_POLL = 0.5          # seconds between checks of a cancel while waiting
_PEERCRED = struct.Struct('3i')


def failed(task_id: str | None, reason: str) -> exception.StreamFailed:
    return exception.StreamFailed(task_id=task_id or '?', reason=reason)


def stream_dir(settings: Settings) -> int:
    """``stream_dir``, made on first use: root's, mode 0750, group
    ``stream_group``; returns a descriptor of it."""
    path = settings.stream_dir
    if settings.stream_group is None:
        raise exception.InvalidRequest(
            reason='image streams are off: [streams] group is not set')
    try:
        gid = grp.getgrnam(settings.stream_group).gr_gid
    except KeyError:
        raise exception.InternalError(
            reason='[streams] group %s does not exist'
                   % settings.stream_group) from None
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        os.mkdir(path, 0o750)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                 | os.O_CLOEXEC)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o027:
        os.close(fd)
        raise exception.InternalError(
            reason='[streams] socket_dir %s must be ours with mode 0750, '
                   'not uid %d mode %04o' % (path, st.st_uid,
                                             stat.S_IMODE(st.st_mode)))
    if st.st_gid != gid:
        os.fchown(fd, -1, gid)
    return fd


_swept = threading.Lock()
_sweep_done = False


def _sweep_once(dir_fd: int) -> None:
    """Remove the sockets a previous helper left (it died mid-stream: a
    helper removes its own): only once per helper process, before its
    first stream, when none of its own can be there yet."""
    global _sweep_done
    with _swept:
        if _sweep_done:
            return
        _sweep_done = True
        for name in os.listdir(dir_fd):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISSOCK(st.st_mode) and name.endswith('.sock'):
                    os.unlink(name, dir_fd=dir_fd)
                    LOG.info('Removed the stream socket %s a previous '
                             'helper left', name)
            except FileNotFoundError:
                pass


def _peer_allowed(settings: Settings, sock: socket.socket) -> str | None:
    """Why the peer of ``sock`` may not stream, None when it may."""
    pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return 'uid %d has no name' % uid
    if user.pw_name in settings.stream_users:
        return None
    groups = {g.gr_name for g in grp.getgrall() if user.pw_name in g.gr_mem}
    try:
        groups.add(grp.getgrgid(gid).gr_name)
        groups.add(grp.getgrgid(user.pw_gid).gr_name)
    except KeyError:
        pass
    if groups & set(settings.stream_groups):
        return None
    return 'user %s (pid %d) is not allowed to stream' % (user.pw_name, pid)


def _wait(sock: socket.socket, write: bool, progress: Progress,
          idle: float, deadline: float, task_id: str | None,
          idle_reason: str) -> None:
    """Wait until ``sock`` can be read (written, with ``write``),
    checking for a cancel; StreamFailed past ``idle`` seconds (saying
    ``idle_reason``) or past ``deadline``."""
    idle_until = time.monotonic() + idle
    while True:
        progress.check()
        now = time.monotonic()
        if now >= deadline:
            raise failed(task_id, 'it lasted longer than [streams] '
                                  'total_timeout')
        if now >= idle_until:
            raise failed(task_id, '%s for %ds' % (idle_reason, idle))
        wait = min(_POLL, idle_until - now, deadline - now)
        if write:
            ready = select.select([], [sock], [], wait)[1]
        else:
            ready = select.select([sock], [], [], wait)[0]
        if ready:
            return


class Connection:
    """The admitted peer's data frames as a byte stream (``readinto``),
    until its trailer; ``finish()`` says whether the stream is complete."""

    def __init__(self, sock: socket.socket, task_id: str | None,
                 progress: Progress, idle: float, deadline: float) -> None:
        self.sock = sock
        self.task_id = task_id
        self.progress = progress
        self.idle = idle
        self.deadline = deadline
        self.received = 0
        self.complete: int | None = None     # the count of a C trailer
        self._left = 0                       # of the current data frame
        self.done = False

    def _fail(self, reason: str) -> exception.StreamFailed:
        return failed(self.task_id, reason)

    def _wait_readable(self) -> None:
        _wait(self.sock, False, self.progress, self.idle, self.deadline,
              self.task_id, 'the writer sent nothing')

    def _recv_into(self, view: memoryview) -> int:
        self._wait_readable()
        try:
            n = self.sock.recv_into(view)
        except OSError as e:
            raise self._fail('the connection broke: %s' % e) from None
        if n == 0:
            raise self._fail('the writer went away before its trailer')
        return n

    def _exact(self, size: int) -> bytes:
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            got += self._recv_into(view[got:])
        return bytes(buf)

    def _next_frame(self) -> bool:
        """Read a frame header; True when data follows, False at the
        trailer (``complete`` recorded)."""
        kind, length = proto.HEADER.unpack(self._exact(proto.HEADER.size))
        if kind == proto.DATA:
            if length == 0 or length > proto.MAX_DATA:
                raise self._fail('a data frame of %d bytes' % length)
            self._left = length
            return True
        if kind == proto.COMPLETE:
            if length != proto.COUNT.size:
                raise self._fail('a malformed trailer')
            (self.complete,) = proto.COUNT.unpack(self._exact(length))
            self.done = True
            return False
        if kind == proto.ABORT:
            reason = self._exact(length) \
                if length <= proto.MAX_REASON else b''
            raise self._fail('the writer aborted it (%s)' % reason.decode(
                'utf-8', 'replace')[:200])
        raise self._fail('an unknown frame type %r' % kind)

    def readinto(self, buf: bytearray | memoryview) -> int:
        if self.done:
            return 0
        view = memoryview(buf).cast('B')
        if self._left == 0 and not self._next_frame():
            return 0
        n = self._recv_into(view[:min(len(view), self._left)])
        self._left -= n
        self.received += n
        return n

    def splice_to(self, fd: int) -> int:
        """Move the next data bytes into the pipe ``fd`` inside the kernel
        (splice(2): they never enter this process); 0 at the trailer."""
        if self.done:
            return 0
        if self._left == 0 and not self._next_frame():
            return 0
        self._wait_readable()
        try:
            n = os.splice(self.sock.fileno(), fd, self._left)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise self._fail('the connection broke: %s' % e) from None
        if n == 0:
            raise self._fail('the writer went away before its trailer')
        self._left -= n
        self.received += n
        return n

    def drain(self) -> None:
        """Read on to the trailer (the consumer stopped at its end)."""
        buf = bytearray(64 * 1024)
        while self.readinto(buf):
            pass

    def finish(self) -> None:
        """Raise unless the writer said ``complete`` with the right count."""
        self.drain()
        if self.complete != self.received:
            raise self._fail('the writer counted %s bytes, %d arrived'
                             % (self.complete, self.received))


@contextlib.contextmanager
def accept(settings: Settings, key: bytes, progress: Progress,
           task_id: str | None) -> Iterator[Connection]:
    """Bind the task's socket, admit its writer (see the module's doc) and
    yield its ``Connection``; the socket's name is gone before the first
    byte of data is read."""
    with admitted(settings, key, progress, task_id) as (sock, deadline):
        yield Connection(sock, task_id, progress,
                         float(settings.stream_idle_timeout), deadline)


@contextlib.contextmanager
def admitted(settings: Settings, key: bytes, progress: Progress,
             task_id: str | None) -> Iterator[tuple[socket.socket, float]]:
    """Bind the task's socket, admit its peer (see the module's doc) and
    yield (the peer's socket, the stream's deadline); the socket's name is
    gone before the first byte goes either way."""
    if task_id is None:
        raise exception.InvalidRequest(reason='a stream needs a task')
    dir_fd = stream_dir(settings)
    _sweep_once(dir_fd)
    path = proto.socket_path(settings.stream_dir, task_id)
    name = os.path.basename(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        listener.bind(path)
        bound = True
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISSOCK(st.st_mode):
            raise exception.InternalError(reason='%s is not our socket'
                                          % path)
        os.chmod(name, 0o660, dir_fd=dir_fd, follow_symlinks=False)
        os.chown(name, -1, os.fstat(dir_fd).st_gid, dir_fd=dir_fd,
                 follow_symlinks=False)
        listener.listen(4)
        expected = proto.token(key, task_id)
        idle = float(settings.stream_idle_timeout)
        started = time.monotonic()
        deadline = started + float(settings.stream_total_timeout)
        sock = _admit(settings, listener, expected, progress, task_id,
                      started + idle)
        # Nobody else: the name goes, the listener closes.
        os.unlink(name, dir_fd=dir_fd)
        bound = False
        listener.close()
        try:
            yield sock, deadline
        finally:
            sock.close()
    finally:
        if bound:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
        listener.close()
        os.close(dir_fd)


def _admit(settings: Settings, listener: socket.socket, expected: str,
           progress: Progress, task_id: str,
           until: float) -> socket.socket:
    while True:
        progress.check()
        left = until - time.monotonic()
        if left <= 0:
            raise failed(task_id, 'no writer connected within %ds'
                         % settings.stream_idle_timeout)
        ready, _, _ = select.select([listener], [], [], min(_POLL, left))
        if not ready:
            continue
        sock, _ = listener.accept()
        why = _peer_allowed(settings, sock)
        if why is None:
            sock.settimeout(min(5.0, max(0.1, until - time.monotonic())))
            try:
                line = sock.recv(proto.HELLO_LEN, socket.MSG_WAITALL)
            except OSError:
                line = b''
            sock.settimeout(None)
            tok = proto.token_of(line)
            if tok is not None and hmac.compare_digest(tok, expected):
                return sock
            why = 'a wrong or missing token'
        LOG.warning('Stream of task %s: refused a connection: %s',
                    task_id, why)
        sock.close()


class Feeder:
    """Moves a ``Connection``'s bytes into a pipe a decoding child reads
    (its stdin), in a thread, with splice(2); ``error`` is what stopped
    it, if anything."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.error: BaseException | None = None
        self.read_fd, self._w = os.pipe2(os.O_CLOEXEC)
        driver.widen_pipe(self._w)
        self._thread = threading.Thread(
            target=self._run, daemon=True, name='stream-feeder')
        self._thread.start()

    def _run(self) -> None:
        try:
            while self.conn.splice_to(self._w):
                pass
        except BaseException as e:   # re-raised by the consumer
            self.error = e
        finally:
            # The child sees the end of its input.
            os.close(self._w)

    def join(self) -> None:
        """Wait for the thread: it ends at the trailer, or when the stream
        fails (an idle writer within ``stream_idle_timeout``)."""
        self._thread.join()

    def close(self) -> None:
        """Stop (the child is gone, or done): its pipe is closed, so a
        thread still writing stops, and a thread still reading is cut
        off, its connection shut down."""
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1
        if self._thread.is_alive():
            with contextlib.suppress(OSError):
                self.conn.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join()

    def raise_error(self) -> None:
        """Raise what stopped the stream itself (not a pipe we closed)."""
        if isinstance(self.error, exception.AccelError):
            raise self.error
        if self.error is not None and \
                not isinstance(self.error, BrokenPipeError):
            raise self.error


class Sender:
    """Data frames to the admitted reader of a ``stream_out`` task, then
    its trailer: ``complete()`` once everything it was sent is checked,
    ``abort()`` otherwise.  A reader that takes nothing for
    ``stream_idle_timeout``, or a stream longer than
    ``stream_total_timeout``, fails the task with ``StreamFailed``."""

    def __init__(self, sock: socket.socket, task_id: str | None,
                 progress: Progress, idle: float, deadline: float) -> None:
        self.sock = sock
        self.task_id = task_id
        self.progress = progress
        self.idle = idle
        self.deadline = deadline
        self.sent = 0
        self.ended = False

    def _fail(self, reason: str) -> exception.StreamFailed:
        return failed(self.task_id, reason)

    def _wait_writable(self) -> None:
        _wait(self.sock, True, self.progress, self.idle, self.deadline,
              self.task_id, 'the reader took nothing')

    def _send_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast('B')
        while len(view):
            self._wait_writable()
            try:
                n = self.sock.send(view, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError as e:
                raise self._fail('the reader went away: %s'
                                 % e.strerror) from None
            view = view[n:]

    def send(self, data: bytes | memoryview) -> None:
        """One or more data frames of ``data``."""
        view = memoryview(data).cast('B')
        while len(view):
            n = min(len(view), proto.MAX_DATA)
            self._send_all(proto.HEADER.pack(proto.DATA, n))
            self._send_all(view[:n])
            self.sent += n
            view = view[n:]

    def complete(self) -> None:
        """The ``complete`` trailer: every byte sent is the image."""
        self._send_all(proto.frame(proto.COMPLETE,
                                   proto.COUNT.pack(self.sent)))
        self.ended = True

    def abort(self, reason: str) -> None:
        """The ``abort`` trailer, if the reader is still there: what it
        read is not an image.  Never raises."""
        if self.ended:
            return
        self.ended = True
        with contextlib.suppress(OSError, exception.AccelError):
            self.sock.setblocking(False)
            self.sock.send(proto.frame(
                proto.ABORT, reason.encode('utf-8')[:proto.MAX_REASON]))


class Pump:
    """Moves what a compressor writes into a pipe (``write_fd``) to a
    ``Sender``, in a thread; ``error`` is what stopped it, if anything.
    When the reader goes, the pipe's reading end closes: the compressor
    then fails to write, and ``raise_error`` says why."""

    CHUNK = 1024 * 1024

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.error: BaseException | None = None
        self._r, self.write_fd = os.pipe2(os.O_CLOEXEC)
        driver.widen_pipe(self.write_fd)
        self._thread = threading.Thread(
            target=self._run, daemon=True, name='stream-pump')
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                data = os.read(self._r, self.CHUNK)
                if not data:
                    break
                self.sender.send(data)
        except BaseException as e:   # re-raised by the producer
            self.error = e
        finally:
            os.close(self._r)

    def finish(self) -> None:
        """The producer is done (or gone): end its pipe, wait for the
        thread to send what is left."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1
        self._thread.join()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error
