# SPDX-License-Identifier: Apache-2.0
"""Reading gzip with ISA-L, member by member, in an unprivileged child.

Split from ``isal`` (the compressor).  The bytes a caller hands us are
inflated by ``isal_child``, run as a tool (the tool user, no capability,
Landlock) by ``IsalCompressor.open_decompressed``: the root helper never
parses a tenant's deflate stream.  The child sends what it decoded on its
stdout as frames (``write_frames``): decoded bytes, or a count of zeros
for a member of zeros our compressor wrote (never inflated), then an end
mark.  ``FrameReader`` takes them apart in the helper and trusts nothing
of them but the framing: a frame longer than ``MAX_FRAME``, an unknown
tag or a missing end mark is ``CorruptInput``; the zeros it announces
count against the same output cap as any byte.

This module imports nothing above ``accel_daemon.exception`` (and ISA-L),
so the child starts in a few tens of milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
import os
import struct
import threading
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


class FrameReader:
    """The helper's side: the child's frames as a ``Decompressed`` stream,
    read on demand from its stdout (``drivers.cli.DecodingChild``, which
    raises ``CorruptInput`` with the child's own words when it failed).

    Data is read from the pipe straight into the caller's buffer (no
    intermediate copy, no thread: the child decodes in parallel already);
    a run of zeros is handed over by ``take_zeros()``, or as zero bytes to
    a reader that does not ask.  Only the framing is trusted: a frame of
    an unknown kind, an empty or oversized data frame, an end mark with a
    length, bytes after it, or an end of the pipe before it is
    ``CorruptInput``.
    """

    def __init__(self, stream: _Readable, path: str) -> None:
        self._stream = stream
        self._path = path
        self._header = bytearray(_FRAME.size)
        self._left = 0          # bytes of the current data frame unread
        self._zeros = 0         # zeros announced, not yet handed over
        self._eof = False
        self.cpu_seconds = 0.0

    def _broken(self, reason: str = 'the decoder broke its protocol'
                ) -> exception.CorruptInput:
        self._eof = True
        return exception.CorruptInput(path=self._path, reason=reason)

    def _next(self) -> None:
        """Read the next frame's header."""
        if _fill(self._stream, self._header) != len(self._header):
            raise self._broken('the decoder ended before the end of the '
                               'data')
        tag, length = _FRAME.unpack(self._header)
        if tag == END and length == 0:
            if _fill(self._stream, bytearray(1)):
                raise self._broken()
            self._eof = True
        elif tag == ZEROS:
            self._zeros = length
        elif tag == DATA and 0 < length <= MAX_FRAME:
            self._left = length
        else:
            raise self._broken()

    def take_zeros(self) -> int:
        """Consume and return a run of zeros that comes next, else 0."""
        if not (self._left or self._zeros or self._eof):
            self._next()
        n, self._zeros = self._zeros, 0
        return n

    def zeros_pending(self) -> bool:
        return bool(self._zeros)

    def readinto(self, buf: bytearray | memoryview) -> int:
        while not self._left:
            if self._zeros:
                n = min(len(buf), self._zeros, len(_ZERO_BLOCK))
                buf[:n] = _ZERO_BLOCK[:n]
                self._zeros -= n
                return n
            if self._eof:
                return 0
            self._next()
        with memoryview(buf) as view:
            n = self._stream.readinto(view[:min(len(view), self._left)])
        if n == 0:
            raise self._broken('the decoder ended inside a frame')
        self._left -= n
        return n

    def read(self, size: int = -1) -> bytes:
        buf = bytearray(size if size > 0 else _OUT_BLOCK)
        n = self.readinto(buf)
        return bytes(buf[:n])


_ZERO_BLOCK = memoryview(bytes(_OUT_BLOCK))
