# SPDX-License-Identifier: Apache-2.0
"""Reading gzip with ISA-L, member by member, in an unprivileged child.

Split from ``isal`` (the compressor).  The bytes a caller hands us are
inflated by ``isal_child``, run as a tool (the tool user, no capability,
Landlock) by ``IsalCompressor.open_decompressed``: the root helper never
parses a tenant's deflate stream.  The child sends what it decoded on its
stdout as frames (``write_frames``): decoded bytes, or a count of zeros
for a member of zeros our compressor wrote (never inflated), then an end
mark.  ``read_frames`` takes them apart in the helper and trusts nothing
of them but the framing: a frame longer than ``MAX_FRAME``, an unknown
tag or a missing end mark is ``CorruptInput``; the zeros it announces
count against the same output cap as any byte.

This module imports nothing above ``accel_daemon.exception`` (and ISA-L),
so the child starts in a few tens of milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
import os
import queue
import struct
import threading
import time
import zlib
from typing import BinaryIO, Protocol, cast

from accel_daemon import exception

try:
    from isal import igzip
    from isal import isal_zlib
except ImportError:  # pragma: no cover - exercised only on broken installs
    # The library is a hard requirement (requirements.txt); the names are
    # None only on a broken install, which IsalCompressor.availability()
    # reports.  Typed as the modules so every use is checked.
    igzip = isal_zlib = None  # type: ignore[assignment]

GZIP_WBITS = 31        # zlib convention: 16 + 15 = gzip wrapper
MAX_LEVEL = 3          # ISA-L supports levels 0..3; higher requests clamp.


# Errors the gzip reader raises for bad input (never for our own I/O errors).
# The cast: isal's stub declares ``isal_zlib.error`` an instance of
# Exception; it is the exception class (igzip_lib.IsalError).
DECODE_ERRORS: tuple[type[Exception], ...] = (EOFError, zlib.error) + (
    (cast(type[Exception], isal_zlib.error), igzip.BadGzipFile)
    if isal_zlib is not None else ())


_IN_BLOCK = 1024 * 1024
_OUT_BLOCK = 1024 * 1024

_ZERO_MEMBERS: dict[tuple[int, int], bytes] = {}
_ZERO_LOCK = threading.Lock()


def zero_member(length: int, level: int) -> bytes:
    """The gzip member for ``length`` zero bytes (cached per length/level)."""
    key = (length, level)
    with _ZERO_LOCK:
        member = _ZERO_MEMBERS.get(key)
        if member is None:
            member = isal_zlib.compress(bytes(length), level, wbits=GZIP_WBITS)
            _ZERO_MEMBERS[key] = member
        return member


def known_zero_members(chunk: int) -> dict[bytes, int]:
    """The zero members our compressor writes for ``chunk``, by level."""
    return {zero_member(chunk, level): chunk for level in range(MAX_LEVEL + 1)}


_PEEK = 64 * 1024     # enough input to compare a whole zero member
# Zeros after a member that are kept (as a count) to replay into the
# decoder when a non-zero byte follows them: more than a gzip header.
_PAD_KEEP = 64


def inflate_members(raw: BinaryIO, path: str,
                    zero_members: dict[bytes, int] | None = None
                    ) -> Iterator[bytes | int]:
    """Yield the decompressed bytes of every gzip member in ``raw``.

    One zlib stream per member (the gzip wrapper checks each member's CRC32
    and length); what follows a member starts the next one.  Input that
    ends inside a member is truncated: CorruptInput.

    A member that is byte for byte one of ``zero_members`` (the members of
    zeros our compressor writes for holes) decodes, by construction, to
    that many zero bytes: it is yielded as that count (an int) without
    being inflated, so the writer can leave a hole.

    Zero bytes after the last complete member, up to the end of the input,
    are padding (tape tools, block-padded transfers) and are skipped, as
    ``gzip -d`` does; they are read block by block, never held, so any
    length of padding takes bounded memory.  Zeros followed by anything
    else are not padding: that input is decoded as before and fails as
    before (garbage after a member is not a gzip member).
    """
    zero_members = zero_members or {}
    longest = max(map(len, zero_members), default=0)
    d = isal_zlib.decompressobj(GZIP_WBITS)
    in_member = False
    after_member = False   # at least one complete member read
    padding = 0            # zero bytes since the last member (capped)
    data = b''
    ended = False
    while True:
        if not in_member and zero_members and not ended \
                and len(data) < max(longest, _PEEK):
            more = raw.read(_IN_BLOCK)
            ended = not more
            data += more
        if not data:
            data = raw.read(_IN_BLOCK)
            if not data:
                if in_member:
                    raise exception.CorruptInput(
                        path=path, reason='compressed data ends inside a '
                                          'gzip member (truncated)')
                return      # end of input, after members or padding
        if after_member and not in_member and (padding or data[0] == 0):
            rest = data.lstrip(b'\0')
            padding = min(_PAD_KEEP, padding + len(data) - len(rest))
            if not rest:
                data = b''      # all zeros so far: drop them, read on
                continue
            # Something follows the zeros: not padding.  Decode from the
            # zeros as if they had never been skipped (the first
            # _PAD_KEEP bytes decide how the header check fails).
            data = bytes(padding) + rest
            padding = 0
            after_member = False
        if not in_member and zero_members:
            run = _zero_run(data, zero_members)
            if run:
                member, length = run
                yield length
                data = data[len(member):]
                after_member = True
                continue
        in_member = True
        while True:     # drain: input left over, or output held back
            out = d.decompress(data, _OUT_BLOCK)
            if out:
                yield out
            data = d.unconsumed_tail
            if d.eof or (not data and len(out) < _OUT_BLOCK):
                break
        if d.eof:
            data = d.unused_data
            d = isal_zlib.decompressobj(GZIP_WBITS)
            in_member = False
            after_member = True


def _zero_run(data: bytes, zero_members: dict[bytes, int]
              ) -> tuple[bytes, int] | None:
    for member, length in zero_members.items():
        if data.startswith(member):
            return member, length
    return None


class BackgroundReader:
    """Decodes in its own thread so decoding overlaps the engine's writes.

    The queue hands the writer ready blocks, so reading ahead and writing
    overlap (the writer's memcmp and pwrite release the GIL).  Items are
    bytes, or an int for a run of zeros that needs no inflating.  At most
    ``depth`` items wait in the queue.  Bad input surfaces in the reading
    thread as CorruptInput.
    """

    def __init__(self, chunks: Iterator[bytes | bytearray | int], path: str,
                 depth: int = 4,
                 block_size: int = 1024 * 1024) -> None:
        self._chunks, self._path = chunks, path
        self._block_size = block_size
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._current = memoryview(b'')
        self._zeros = 0
        self._eof = False
        self.cpu_seconds = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='isal-decode')
        self._thread.start()

    def _run(self) -> None:
        started = time.thread_time()
        try:
            for data in self._chunks:
                if self._stop.is_set():
                    return
                self._put(data)
            self._put(b'')
        except DECODE_ERRORS as e:
            self._put(exception.CorruptInput(
                path=self._path, reason=str(e) or type(e).__name__))
        except BaseException as e:  # re-raised in the reading thread
            self._put(e)
        finally:
            self.cpu_seconds = time.thread_time() - started

    def _put(self, item: bytes | bytearray | int | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def _next(self) -> None:
        """Make the next queued item current (bytes or a zero run)."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        if isinstance(item, int):
            self._zeros = item
        elif not item:
            self._eof = True
        else:
            self._current = memoryview(item)

    def take_zeros(self) -> int:
        """Consume and return a run of zeros that comes next, else 0.

        The sparse writer calls this between reads so that members of
        zeros become holes without being inflated or compared.
        """
        if not self._current and not self._zeros and not self._eof:
            self._next()
        n, self._zeros = self._zeros, 0
        return n

    def readinto(self, buf: bytearray | memoryview) -> int:
        if not self._current and not self._zeros:
            if self._eof:
                return 0
            self._next()
            if self._eof:
                return 0
        if self._zeros:     # a reader that does not ask for zero runs
            n = min(len(buf), self._zeros)
            buf[:n] = bytes(n)
            self._zeros -= n
            return n
        n = min(len(buf), len(self._current))
        buf[:n] = self._current[:n]
        self._current = self._current[n:]
        return n

    def zeros_pending(self) -> bool:
        return bool(self._zeros)

    def read(self, size: int = -1) -> bytes:
        buf = bytearray(size if size > 0 else self._block_size)
        n = self.readinto(buf)
        return bytes(buf[:n])

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# --- the child's frames ------------------------------------------------------
_FRAME = struct.Struct('>cQ')
DATA, ZEROS, END = b'D', b'Z', b'.'
# inflate_members yields at most one output block of bytes at a time.
MAX_FRAME = _OUT_BLOCK


def _write_all(fd: int, *parts: bytes | bytearray | memoryview) -> None:
    views = [memoryview(p) for p in parts]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views:
            views[0] = views[0][n:]


def write_frames(chunks: Iterable[bytes | int], fd: int) -> None:
    """The child's side: every item of ``inflate_members`` as a frame on
    ``fd``, then the end mark (only after the whole input decoded)."""
    for item in chunks:
        if isinstance(item, int):
            _write_all(fd, _FRAME.pack(ZEROS, item))
        else:
            for start in range(0, len(item), MAX_FRAME):
                part = memoryview(item)[start:start + MAX_FRAME]
                _write_all(fd, _FRAME.pack(DATA, len(part)), part)
    _write_all(fd, _FRAME.pack(END, 0))


class _Readable(Protocol):
    def readinto(self, buf: bytearray | memoryview) -> int: ...


def _fill(stream: _Readable, buf: bytearray) -> int:
    """Read until ``buf`` is full or the stream ends; the count read."""
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        n = stream.readinto(view[got:])
        if n == 0:
            break
        got += n
    return got


def read_frames(stream: _Readable, path: str
                ) -> Iterator[bytes | bytearray | int]:
    """The helper's side: what the child decoded, from its frames.

    ``stream`` is the child's stdout (``drivers.cli.DecodingChild``, which
    raises ``CorruptInput`` with the child's own words when it failed)."""
    header = bytearray(_FRAME.size)
    while True:
        got = _fill(stream, header)
        if got != len(header):
            raise exception.CorruptInput(
                path=path, reason='the decoder ended before the end of '
                                  'the data')
        tag, length = _FRAME.unpack(header)
        if tag == END and length == 0:
            if _fill(stream, bytearray(1)):
                break
            return
        if tag == ZEROS:
            yield length
        elif tag == DATA and 0 < length <= MAX_FRAME:
            data = bytearray(length)
            if _fill(stream, data) != length:
                break
            yield data
        else:
            break
    raise exception.CorruptInput(path=path,
                                 reason='the decoder broke its protocol')
