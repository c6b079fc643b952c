# SPDX-License-Identifier: Apache-2.0
"""A corpus of malicious and odd inputs through the real daemon over RPC.

Each refused input must fail with a typed error, promptly, leaving nothing
in the allowed directory (no output, no temp file); accepted ones must
give exactly what ``gzip -d`` gives.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import time

import pytest

from accel_daemon import exception
from tests.functional import imagegen as gen
from tests.functional.reliability import bombs
from tests.functional.reliability import common

pytestmark = common.marks(300)

MiB = common.MiB
GiB = 1024 * MiB
BOUND = 120.0


daemon = common.module_daemon('corpus')


@pytest.fixture
def client(daemon):
    with daemon.client() as c:
        yield c


@pytest.fixture
def images(daemon):
    """The allowed directory, emptied after each test."""
    yield daemon.images
    for name in os.listdir(daemon.images):
        path = os.path.join(daemon.images, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def put(images, name, data):
    return gen.write(os.path.join(images, name), data)


def listing(images):
    return sorted(os.listdir(images))


def refused(images, call, bound=BOUND):
    """Run ``call`` (returns a TaskHandle); it must fail typed, leaving the
    directory as it was.  Returns the Outcome."""
    before = listing(images)
    out = common.run_task(call, bound)
    assert not out.ok, 'accepted: %r' % (out.result,)
    common.assert_typed(out)
    assert common.wait_no_strays(images) == []
    assert listing(images) == before
    return out


def is_inspection_error(out):
    return issubclass(exception.lookup(out.error_type),
                      exception.ImageInspectionError)


# --- decompression/conversion bombs -----
def test_qcow2_cluster_bomb_download_capped(client, images):
    bomb = bombs.qcow2_cluster_bomb(virtual_size=4 * GiB)
    src = put(images, 'bomb.qcow2.gz', gzip.compress(bomb))
    assert os.path.getsize(src) < 64 * 1024
    dst = os.path.join(images, 'bomb.raw')
    handles = []

    def submit():
        handles.append(client.download(src, dst, 'qcow2', 'raw',
                                       max_bytes=1 * GiB))
        return handles[0]

    def too_much():          # stop the flood once the test has its answer
        if handles:
            handles[0].cancel()

    with common.AllocationWatch(images, exclude={'bomb.qcow2.gz'},
                                limit=1 * GiB, on_exceed=too_much) as watch:
        out = common.run_task(submit, BOUND)
    print('\ncluster bomb: %d bytes gzip\'d, 4 GiB virtual; peak allocation '
          '%.1f MiB; outcome %r' % (os.path.getsize(src), watch.peak / MiB,
                                    out))
    assert watch.peak <= 1 * GiB, 'output grew past max_bytes'
    assert not out.ok
    common.assert_typed(out)
    assert out.error_type != 'Cancelled', 'only the test stopped it'
    assert not os.path.lexists(dst)
    assert common.wait_no_strays(images) == []


def test_virtual_size_over_max_bytes_refused_before_output(client, images):
    inner = gen.qcow2_with_data(os.path.join(images, 'big.qcow2'),
                                size=256 * MiB, written=8 * MiB)
    with open(inner, 'rb') as f:
        src = put(images, 'big.qcow2.gz', gzip.compress(f.read(), 1))
    inner_size = os.path.getsize(inner)
    os.unlink(inner)
    dst = os.path.join(images, 'big.raw')
    with common.AllocationWatch(images, exclude={'big.qcow2.gz'}) as watch:
        out = refused(images, lambda: client.download(
            src, dst, 'qcow2', 'raw', max_bytes=64 * MiB))
    print('\nvirtual 256 MiB > max_bytes 64 MiB: %r, peak %.1f MiB'
          % (out, watch.peak / MiB))
    # At most the unpacked container was staged: no byte of raw output.
    assert watch.peak <= inner_size + MiB


@pytest.mark.parametrize('op', ['decompress', 'download'])
def test_gzip_bomb(client, images, op):
    zeros = subprocess.run('head -c %d /dev/zero | gzip -1' % (512 * MiB),
                           shell=True, check=True,
                           capture_output=True).stdout
    src = put(images, 'zeros.gz', zeros)
    dst = os.path.join(images, 'zeros.out')
    with common.AllocationWatch(images, exclude={'zeros.gz'}) as watch:
        if op == 'decompress':
            out = refused(images, lambda: client.decompress(
                src, dst, max_bytes=16 * MiB))
        else:
            out = refused(images, lambda: client.download(
                src, dst, 'raw', 'raw', max_bytes=16 * MiB))
    assert out.error_type == 'SizeLimitExceeded', out
    assert watch.peak <= 16 * MiB + MiB


# --- gzip trailers -----
def gunzip_tool(path):
    run = subprocess.run(['gzip', '-dc', path], capture_output=True)
    return run.returncode, run.stdout


def test_trailing_zero_padding_accepted_like_gzip(client, images):
    raw = os.urandom(MiB) + b'padded tape image\n' * 50000
    src = put(images, 'pad.raw.gz', gzip.compress(raw) + b'\0' * 512)
    rc, expected = gunzip_tool(src)
    assert rc == 0 and expected == raw        # the premise: gzip accepts it
    dst = os.path.join(images, 'pad.raw')
    out = common.run_task(lambda: client.decompress(
        src, dst, max_bytes=64 * MiB), BOUND)
    assert out.ok, out
    with open(dst, 'rb') as f:
        assert f.read() == expected
    qcow2 = gen.qcow2_with_data(os.path.join(images, 'pad.qcow2'),
                                size=8 * MiB, written=MiB)
    with open(qcow2, 'rb') as f:
        src2 = put(images, 'pad.qcow2.gz',
                   gzip.compress(f.read()) + b'\0' * 512)
    dst2 = os.path.join(images, 'pad.qcow2.raw')
    out = common.run_task(lambda: client.download(
        src2, dst2, 'qcow2', 'raw', max_bytes=64 * MiB), BOUND)
    assert out.ok, out
    assert gen.compare(qcow2, 'qcow2', dst2, 'raw')
    assert common.wait_no_strays(images) == []


@pytest.mark.parametrize('op', ['decompress', 'download'])
def test_trailing_garbage_refused(client, images, op):
    raw = b'some image data\n' * 65536
    src = put(images, 'junk.gz', gzip.compress(raw) + b'GARBAGE!' * 64)
    rc, _ = gunzip_tool(src)
    assert rc == 2              # gzip -d only warns ("trailing garbage")
    dst = os.path.join(images, 'junk.out')
    if op == 'decompress':
        out = refused(images, lambda: client.decompress(
            src, dst, max_bytes=64 * MiB))
    else:
        out = refused(images, lambda: client.download(
            src, dst, 'raw', 'raw', max_bytes=64 * MiB))
    assert out.error_type == 'CorruptInput', out


# --- qemu-img refuses what inspection passed -----
def test_qcow2_with_absurd_l1_not_published(client, images):
    ok = gen.qemu_create(os.path.join(images, 'ok.qcow2'), 'qcow2', '16M')
    with open(ok, 'rb') as f:
        src = put(images, 'l1.qcow2', bombs.qcow2_huge_l1(f.read()))
    os.unlink(ok)
    run = subprocess.run(['qemu-img', 'info', '-f', 'qcow2', src],
                         capture_output=True, text=True)
    assert 'L1 table too large' in run.stderr      # the premise
    dst = os.path.join(images, 'l1.image')
    out = refused(images, lambda: client.upload(src, dst, 'qcow2', 'qcow2'))
    print('\nabsurd L1, upload without conversion: %r' % out)
    with pytest.raises(exception.AccelError) as err:
        client.image_info(src, 'qcow2')
    assert type(err.value).__name__ not in common.UNTYPED


# --- FIFOs -----
FIFO_CALLS = {
    'compress': lambda c, s, d: c.compress(s, d),
    'decompress': lambda c, s, d: c.decompress(s, d, max_bytes=MiB),
    'copy': lambda c, s, d: c.copy(s, d),
    'convert': lambda c, s, d: c.convert(s, d, 'raw', 'qcow2'),
    'upload': lambda c, s, d: c.upload(s, d, 'raw', 'raw'),
    'download': lambda c, s, d: c.download(s, d, 'raw', 'raw',
                                           max_bytes=MiB),
}


@pytest.mark.parametrize('op', sorted(FIFO_CALLS))
def test_fifo_source_refused_at_once(client, images, op):
    src = os.path.join(images, 'fifo.in')
    os.mkfifo(src)
    dst = os.path.join(images, 'fifo.out')
    started = time.monotonic()
    refused(images, lambda: FIFO_CALLS[op](client, src, dst), bound=10)
    assert time.monotonic() - started < 2.5
    with pytest.raises(exception.AccelError) as err:
        client.image_info(src, 'raw')
    assert type(err.value).__name__ not in common.UNTYPED


@pytest.mark.parametrize('op', sorted(FIFO_CALLS))
def test_fifo_destination_refused_at_once(client, images, op):
    data = gzip.compress(b'x' * 65536) if op in ('decompress', 'download') \
        else b'x' * 65536
    src = put(images, 'plain.in', data)
    dst = os.path.join(images, 'fifo.out')
    os.mkfifo(dst)
    started = time.monotonic()
    refused(images, lambda: FIFO_CALLS[op](client, src, dst), bound=10)
    assert time.monotonic() - started < 2.5
    assert os.path.exists(dst) and not os.path.isfile(dst)


# --- the known attacks, through RPC, every entry point -----
def _backing(images, root):
    return gen.qcow2_with_backing(os.path.join(images, 'a.qcow2'),
                                  os.path.join(root, 'base.raw')), 'qcow2'


def _data_file(images, root):
    return gen.qcow2_with_data_file(os.path.join(images, 'a.qcow2'),
                                    os.path.join(root, 'host.raw')), 'qcow2'


def _vmdk_flat(images, root):
    secret = gen.write(os.path.join(root, 'secret.raw'), b's' * 4096, MiB)
    return put(images, 'a.vmdk', gen.vmdk_flat_descriptor(secret)), 'vmdk'


def _iso(images, root):
    return put(images, 'a.iso',
               gen.iso_bytes(system_area=gen.qcow2_header())), 'raw'


def _gpt(images, root):
    path = gen.write(os.path.join(images, 'a.img'), gen.qcow2_behind_gpt(),
                     MiB)
    return path, 'raw'


ATTACKS = {'backing_file': _backing, 'data_file': _data_file,
           'vmdk_flat_extent': _vmdk_flat, 'qcow2_in_iso': _iso,
           'qcow2_behind_gpt': _gpt}


@pytest.mark.parametrize('attack', sorted(ATTACKS))
def test_known_attack_refused_everywhere(client, images, daemon, attack):
    src, fmt = ATTACKS[attack](images, daemon.root)
    with open(src, 'rb') as f:
        packed = put(images, 'packed.gz', gzip.compress(f.read()))
    dst = os.path.join(images, 'out.img')
    with pytest.raises(exception.AccelError) as err:
        client.image_info(src, fmt)
    assert issubclass(type(err.value), exception.ImageInspectionError), \
        err.value
    for call in (
            lambda: client.convert(src, dst, fmt, 'raw'),
            lambda: client.convert(src, dst, fmt, 'qcow2'),
            lambda: client.upload(src, dst, fmt, 'qcow2'),
            lambda: client.download(packed, dst, fmt, 'raw',
                                    max_bytes=64 * MiB)):
        out = refused(images, call)
        assert is_inspection_error(out), out
