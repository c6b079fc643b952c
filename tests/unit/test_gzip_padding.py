# SPDX-License-Identifier: Apache-2.0
"""Zero padding after the last gzip member, in the in-process ISA-L reader.

``gzip -d`` skips zero bytes that follow the last member up to the end of
the input (tape tools and block-padded transfers write them) and refuses
anything else after a member.  ``inflate_members`` does the same, reading
the padding block by block, and refuses other trailing bytes exactly as it
did before padding was allowed.
"""

import gzip
import io
import os
import tracemalloc

import pytest

from accel_daemon.drivers import isal as isal_driver
from accel_daemon.drivers import isal_decode
from accel_daemon.engine.progress import Progress
from accel_daemon import exception
from tests import fdutil

MiB = 1024 * 1024
CHUNK = MiB
PADDINGS = [1, 2, 9, 10, 63, 64, 65, 511, 512, 4096, MiB, MiB + 1,
            3 * MiB + 7]


def _payload():
    return os.urandom(200000) + b'some text\n' * 30000


def _member(data):
    return isal_driver.isal_zlib.compress(data, 1, wbits=31)


def _decode(blob, zero_members=None, reader=None):
    """Everything ``inflate_members`` yields, ints expanded to zeros."""
    raw = reader or io.BytesIO(blob)
    items = list(isal_decode.inflate_members(raw, 'x.gz', zero_members))
    return b''.join(i if isinstance(i, bytes) else bytes(i) for i in items)


def _old_failure(tail):
    """How the reader fails on ``tail`` right after a member: what a fresh
    gzip decoder says of it (the reader's behaviour before padding was
    allowed), or None when the decoder just waits for more input."""
    d = isal_driver.isal_zlib.decompressobj(31)
    try:
        d.decompress(tail)
    except isal_decode.DECODE_ERRORS as e:
        return type(e), str(e)
    return None


def _refused(blob, zero_members=None):
    """The reader's failure for ``blob`` as (type, message)."""
    try:
        _decode(blob, zero_members)
    except isal_decode.DECODE_ERRORS as e:
        return type(e), str(e)
    except exception.CorruptInput as e:
        return exception.CorruptInput, str(e)
    raise AssertionError('accepted %d bytes of bad input' % len(blob))


@pytest.mark.parametrize('pad', PADDINGS)
def test_zero_padding_is_skipped(pad):
    data = _payload()
    blob = _member(data) + bytes(pad)
    assert _decode(blob) == data
    assert gzip.decompress(blob) == data      # Python's gzip agrees


@pytest.mark.parametrize('pad', [1, 511, 512, 4096, MiB])
def test_padding_after_several_members(pad):
    a, b = _payload(), b'second member'
    blob = _member(a) + _member(b) + bytes(pad)
    assert _decode(blob) == a + b


def test_padding_arriving_in_many_small_reads():
    class Dribble(io.RawIOBase):
        """Hands out at most 3 bytes a read, like a slow pipe."""

        def __init__(self, blob):
            self._f = io.BytesIO(blob)

        def readable(self):
            return True

        def read(self, n=-1):
            return self._f.read(min(3, n if n >= 0 else 3))

    data = b'hello ' * 100
    blob = _member(data) + bytes(100)
    assert _decode(None, reader=Dribble(blob)) == data
    bad = _member(data) + bytes(100) + b'\x01'
    with pytest.raises(isal_decode.DECODE_ERRORS):
        _decode(None, reader=Dribble(bad))


class ZeroTail(io.RawIOBase):
    """A member, then ``pad`` zero bytes produced on demand (never stored)."""

    def __init__(self, member, pad, tail=b''):
        self._head = io.BytesIO(member)
        self._left = pad
        self._tail = io.BytesIO(tail)
        self._block = bytes(isal_decode._IN_BLOCK)
        self.reads = 0

    def readable(self):
        return True

    def read(self, n=-1):
        self.reads += 1
        head = self._head.read(n)
        if head:
            return head
        if self._left:
            k = min(n, self._left, len(self._block))
            self._left -= k
            return self._block if k == len(self._block) else bytes(k)
        return self._tail.read(n)


@pytest.mark.parametrize('tail', [b'', b'\x01'])
def test_long_zero_run_takes_bounded_memory(tail):
    data = b'payload ' * 1000
    pad = 2048 * MiB        # 2 GiB of zeros, far more than any buffer
    raw = ZeroTail(_member(data), pad, tail)
    tracemalloc.start()
    try:
        if tail:
            with pytest.raises(isal_decode.DECODE_ERRORS):
                _decode(None, reader=raw)
        else:
            assert _decode(None, reader=raw) == data
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert raw._left == 0               # all the padding was read...
    assert raw.reads >= pad // isal_decode._IN_BLOCK
    assert peak < 8 * MiB               # ...without being held


@pytest.mark.parametrize('pad', [0, 1, 512, 3 * MiB])
def test_zero_members_still_counts_with_padding(pad):
    zero = isal_driver.zero_member(CHUNK, 1)
    data = b'abc' * 1000
    blob = zero + _member(data) + zero + zero + bytes(pad)
    with io.BytesIO(blob) as raw:
        items = list(isal_decode.inflate_members(
            raw, 'z.gz', isal_decode.known_zero_members(CHUNK)))
    assert items[0] == CHUNK
    assert items[-2:] == [CHUNK, CHUNK]     # not inflated: counts
    assert b''.join(i for i in items if isinstance(i, bytes)) == data
    assert gzip.decompress(blob) == bytes(CHUNK) + data + bytes(2 * CHUNK)


def test_padding_right_after_a_zero_member():
    zero = isal_driver.zero_member(CHUNK, 1)
    with io.BytesIO(zero + bytes(4096)) as raw:
        items = list(isal_decode.inflate_members(
            raw, 'z.gz', isal_decode.known_zero_members(CHUNK)))
    assert items == [CHUNK]


# --- what is not padding: refused, as before ------------------------------
def _bad_tails():
    member = _member(b'second member, whole')
    return {
        'garbage': b'garbage after the member',
        'short garbage': b'garbage!',
        'one byte': b'\x01',
        'magic only': b'\x1f\x8b',
        'partial member': member[:len(member) // 2],
        'partial header': member[:5],
        'zeros then garbage': bytes(512) + b'garbage',
        'zeros then one byte': bytes(4096) + b'\x01',
        'one zero then a member': b'\0' + member,
        'zeros then a member': bytes(512) + member,
        'long zeros then a member': bytes(3 * MiB) + member,
        'zeros then partial header': bytes(100) + member[:5],
        'zeros, member, zeros': bytes(512) + member + bytes(512),
        'byte in the middle of zeros': bytes(700) + b'\x80' + bytes(700),
    }


@pytest.mark.parametrize('name', sorted(_bad_tails()))
@pytest.mark.parametrize('fast_path', [False, True])
def test_trailing_non_zero_refused_as_before(name, fast_path):
    tail = _bad_tails()[name]
    known = isal_decode.known_zero_members(CHUNK) if fast_path else None
    head = _member(b'first member')
    if fast_path:
        head = isal_driver.zero_member(CHUNK, 1) + head
    got = _refused(head + tail, known)
    # The same failure as before padding was allowed: the decoder's own
    # error for the bytes after the member, or "truncated" when the
    # decoder was still waiting for the rest of a header or member.
    want = _old_failure(tail)
    if want is None:
        assert got[0] is exception.CorruptInput
        assert 'truncated' in got[1]
    else:
        assert got == want


@pytest.mark.parametrize('blob', [bytes(1), bytes(512), bytes(MiB)])
def test_zeros_without_a_member_are_not_gzip(blob):
    # Padding follows a member; zeros alone are not a gzip file (gzip -d:
    # "not in gzip format").
    with pytest.raises((exception.CorruptInput,) + isal_decode.DECODE_ERRORS):
        _decode(blob)


@pytest.mark.parametrize('pad', [1, 512, MiB])
def test_open_decompressed_reads_padded_file(env, pad):
    data = _payload()
    src = env.path('p.gz')
    with open(src, 'wb') as f:
        f.write(gzip.compress(data) + bytes(pad))
    drv = isal_driver.IsalCompressor(env.settings, env.policy)
    got = bytearray()
    with fdutil.decompressing(drv, src, Progress()) as stream:
        while block := stream.read(65536):
            got += block
    assert bytes(got) == data


@pytest.mark.parametrize('tail', [b'garbage', bytes(512) + b'\x01',
                                  bytes(512) + gzip.compress(b'x')])
def test_open_decompressed_refuses_trailing_garbage(env, tail):
    src = env.path('g.gz')
    with open(src, 'wb') as f:
        f.write(gzip.compress(b'data') + tail)
    drv = isal_driver.IsalCompressor(env.settings, env.policy)
    with pytest.raises(exception.CorruptInput):
        with fdutil.decompressing(drv, src, Progress()) as stream:
            while stream.read(65536):
                pass
