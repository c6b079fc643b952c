# SPDX-License-Identifier: Apache-2.0
"""Compression and decompression with the real tools (and the qzip stand-in).

Interop both ways: what we write is read by stock ``gzip -d`` and checked
with ``cmp``; what gzip/pigz/igzip/qzip write is read by our decompressor.
Bad inputs are refused with the right error type and leave nothing behind.
"""

import dataclasses
import hashlib
import os
import shutil
import subprocess

import pytest

from accel_daemon.drivers import cli
from accel_daemon.drivers import isal as isal_driver
from accel_daemon.engine import compression
from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine import paths
from accel_daemon.engine.progress import Progress
from accel_daemon.engine import sparse
from accel_daemon import exception
from tests import envfixture
from tests.fakes import sysfs
from tests import fdutil

pytestmark = pytest.mark.functional

MiB = 1024 * 1024
FAKES = os.path.join(envfixture.ROOT, 'tests', 'fakes')


def needs(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    return pytest.mark.skipif(bool(missing), reason='%s not installed'
                              % ', '.join(missing))


def make_image(path, size=48 * MiB):
    """A sparse 'volume': binary and text data, allocated zeros, holes."""
    with open('/usr/bin/python3', 'rb') as f:
        binary = f.read(3 * MiB)
    with open(path, 'wb') as f:
        f.truncate(size)
        f.seek(MiB + 17)
        f.write(binary)
        f.seek(20 * MiB)
        f.write(b'accel-daemon line of text\n' * 40000)
        f.seek(30 * MiB)
        f.write(bytes(2 * MiB))
        f.seek(size - 3)
        f.write(b'end')
    return path


def nothing_left(env, *outputs):
    assert paths.stray_temp_files(env.images) == []
    for out in outputs:
        assert not os.path.lexists(out)


def cmp(a, b):
    return subprocess.run(['cmp', a, b]).returncode == 0


def with_qat(env, tmp_path, builder=sysfs.qat_pf_bound):
    settings = dataclasses.replace(
        env.settings, sysfs_root=builder(str(tmp_path / 'sys')),
        exec_dirs=(FAKES,) + env.settings.exec_dirs)
    return settings, CommandPolicy(settings.filters_path, settings.exec_dirs)


# --- our output, read by the stock tools ------------------------------------
@needs('gzip', 'cmp')
@pytest.mark.parametrize('driver', ['isal', 'igzip', 'pigz', 'gzip'])
def test_compress_read_by_gzip_d(env, driver):
    src, dst = make_image(env.path('vol.raw')), env.path('vol.raw.gz')
    result = fdutil.engine_compress(src, dst, env.settings, env.policy,
                                    Progress(), driver=driver)
    assert result['engine'] == driver and result['hardware'] is False
    assert result['output'] == dst
    assert result['size'] == os.path.getsize(dst) < 12 * MiB
    assert result['cpu_seconds'] > 0 and result['wall_seconds'] > 0
    out = env.path('check.raw')
    with open(out, 'wb') as f:
        subprocess.run(['gzip', '-d', '-c', dst], stdout=f, check=True)
    assert cmp(src, out)
    assert result['sha256'] == hashlib.sha256(
        open(dst, 'rb').read()).hexdigest()


@needs('zstd')
def test_zstd_on_request(env):
    src, dst = make_image(env.path('vol.raw')), env.path('vol.raw.zst')
    result = fdutil.engine_compress(src, dst, env.settings, env.policy,
                                    Progress(), format='zstd')
    assert (result['engine'], result['format']) == ('zstd', 'zstd')
    back = env.path('back.raw')
    res = fdutil.engine_decompress(dst, back, env.settings, env.policy,
                                   Progress())
    assert res['engine'] == 'zstd' and cmp(src, back)


def test_default_selection_is_isal(env):
    src, dst = make_image(env.path('vol.raw')), env.path('vol.raw.gz')
    result = fdutil.engine_compress(src, dst, env.settings, env.policy,
                                    Progress(), level=9)
    assert result['engine'] == 'isal'


# --- their output, read by us -----------------------------------------------
@needs('cmp')
@pytest.mark.parametrize('argv', [['gzip', '-6', '-c'], ['pigz', '-c'],
                                  ['igzip', '-c'],
                                  [os.path.join(FAKES, 'qzip'), '-O', 'gzip'],
                                  ['gzip', '-1', '-c', '-']])
def test_decompress_foreign_gzip_sparse(env, argv):
    if shutil.which(argv[0]) is None:
        pytest.skip('%s not installed' % argv[0])
    src = make_image(env.path('vol.raw'))
    packed = env.path('vol.gz')
    with open(src, 'rb') as i, open(packed, 'wb') as o:
        subprocess.run(argv, stdin=i, stdout=o, check=True)
    if argv[-1] == '-':      # a second member appended: multi-member input
        with open(packed, 'ab') as o:
            subprocess.run(['gzip', '-c'], input=b'more', stdout=o,
                           check=True)
        with open(src, 'ab') as f:
            f.write(b'more')
    out = env.path('out.raw')
    result = fdutil.engine_decompress(packed, out, env.settings, env.policy,
                                      Progress(), checksum=True)
    assert result['engine'] == 'isal' and result['format'] == 'gzip'
    assert result['size'] == os.path.getsize(src)
    assert cmp(src, out)
    st = os.stat(out)
    assert st.st_blocks * 512 < st.st_size // 4     # holes, not zeros
    assert oct(st.st_mode & 0o777) == oct(env.settings.output_file_mode)


@needs('pigz', 'cmp')
def test_cli_decoder_pipe(env):
    src = make_image(env.path('vol.raw'))
    packed = env.path('vol.gz')
    with open(src, 'rb') as i, open(packed, 'wb') as o:
        subprocess.run(['gzip', '-c'], stdin=i, stdout=o, check=True)
    drv = cli.PigzCompressor(env.settings, env.policy)
    out = env.path('out.raw')
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    try:
        with fdutil.decompressing(drv, packed, Progress()) as stream:
            sparse.copy_capped(stream, fd, sparse.Flow(1 << 30))
    finally:
        os.close(fd)
    # The child's CPU is reported on the stream (per run), not the driver.
    assert cmp(src, out) and stream.cpu_seconds > 0


# --- bad input: right error, nothing left -----------------------------------
def write_bomb(path, logical):
    """``logical`` zero bytes as gzip, generated streaming (members)."""
    member = isal_driver.zero_member(4 * MiB, 1)
    with open(path, 'wb') as f:
        for _ in range(logical // (4 * MiB)):
            f.write(member)
    return path


def test_gzip_bomb_capped_by_request(env):
    bomb = write_bomb(env.path('bomb.gz'), 10 * 1024 * MiB)   # 10 GiB
    assert os.path.getsize(bomb) < 20 * MiB
    out = env.path('bomb.raw')
    with pytest.raises(exception.SizeLimitExceeded):
        fdutil.engine_decompress(bomb, out, env.settings, env.policy,
                                 Progress(), max_bytes=64 * MiB)
    nothing_left(env, out)


def test_gzip_bomb_capped_by_settings(env):
    bomb = write_bomb(env.path('bomb.gz'), 256 * MiB)
    settings = dataclasses.replace(env.settings,
                                   max_decompressed_bytes=32 * MiB)
    out = env.path('bomb.raw')
    with pytest.raises(exception.SizeLimitExceeded):
        fdutil.engine_decompress(bomb, out, settings, env.policy, Progress(),
                                 max_bytes=1024 * MiB)
    nothing_left(env, out)


@needs('gzip')
@pytest.mark.parametrize('decoder', ['isal', 'pigz'])
def test_truncated_gzip(env, decoder):
    src = make_image(env.path('vol.raw'))
    full = subprocess.run(['gzip', '-c', src], capture_output=True,
                          check=True).stdout
    bad = env.path('bad.gz')
    with open(bad, 'wb') as f:
        f.write(full[:len(full) // 2])
    out = env.path('bad.raw')
    if decoder == 'isal':    # the default decoder, through the operation
        with pytest.raises(exception.CorruptInput):
            fdutil.engine_decompress(bad, out, env.settings, env.policy,
                                     Progress())
    else:                    # a CLI decoder: the child's failure maps too
        drv = cli.PigzCompressor(env.settings, env.policy)
        with pytest.raises(exception.CorruptInput):
            with fdutil.decompressing(drv, bad, Progress()) as stream:
                while stream.readinto(bytearray(MiB)):
                    pass
    nothing_left(env, out)


@pytest.mark.parametrize('content', [b'QFI\xfb' + bytes(508), b'',
                                     b'plain text, not compressed'])
def test_not_compressed_input(env, content):
    src = env.path('x.gz')
    with open(src, 'wb') as f:
        f.write(content)
    out = env.path('x.raw')
    with pytest.raises(exception.CorruptInput):
        fdutil.engine_decompress(
            src, out, env.settings, env.policy, Progress())
    nothing_left(env, out)


class CancelAfter(Progress):
    """Cancels itself once ``limit`` bytes are done (a user pressing ^C)."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit

    def set_done(self, nbytes):
        super().set_done(nbytes)
        if nbytes >= self.limit:
            self.cancel()


@pytest.mark.parametrize('driver', ['isal', 'pigz'])
def test_cancel_compress_leaves_nothing(env, driver):
    src, dst = make_image(env.path('vol.raw'), 96 * MiB), env.path('v.gz')
    settings = dataclasses.replace(env.settings, chunk_size=MiB,
                                   compression_level=9)
    with pytest.raises(exception.Cancelled):
        fdutil.engine_compress(src, dst, settings, env.policy,
                               CancelAfter(2 * MiB), driver=driver)
    nothing_left(env, dst)


def test_cancel_decompress_leaves_nothing(env):
    bomb = write_bomb(env.path('z.gz'), 64 * MiB)
    out = env.path('z.raw')
    with pytest.raises(exception.Cancelled):
        fdutil.engine_decompress(bomb, out, env.settings, env.policy,
                                 CancelAfter(8 * MiB))
    nothing_left(env, out)


def test_path_outside_allowed_dirs(env, tmp_path):
    outside = make_image(str(tmp_path / 'outside.raw'), MiB)
    with pytest.raises(exception.PathNotAllowed):
        fdutil.engine_compress(outside, env.path('o.gz'), env.settings,
                               env.policy, Progress())
    nothing_left(env, env.path('o.gz'))


# --- selection with the real filters and tools ------------------------------
@needs('pigz')
def test_filters_forbidding_pigz(env):
    settings = dataclasses.replace(env.settings, drivers=('pigz', 'gzip'))
    drivers = compression.load_drivers(settings, env.policy)
    assert compression.select(drivers, settings).name == 'pigz'
    envfixture.copy_filters_without(env, 'pigz')
    avail = drivers['pigz'].availability()
    assert not avail.available and 'refused by the filters' in avail.reason
    assert compression.select(drivers, settings).name == 'gzip'
    with pytest.raises(exception.NoEngineAvailable):
        fdutil.engine_compress(make_image(env.path('v.raw'), MiB),
                               env.path('v.gz'), settings, env.policy,
                               Progress(), driver='pigz')
    nothing_left(env, env.path('v.gz'))


@needs('gzip', 'cmp')
def test_qat_with_stand_in_is_selected_first(env, tmp_path):
    settings, policy = with_qat(env, tmp_path)
    caps = {c['name']: c for c in compression.capabilities(
        compression.load_drivers(settings, policy))}
    assert caps['qat']['available'] and caps['qat']['hardware']
    assert 'test double' in caps['qat']['version']
    src, dst = make_image(env.path('vol.raw')), env.path('vol.gz')
    result = fdutil.engine_compress(src, dst, settings, policy, Progress())
    assert (result['engine'], result['hardware']) == ('qat', True)
    out = env.path('check.raw')
    with open(out, 'wb') as f:
        subprocess.run(['gzip', '-d', '-c', dst], stdout=f, check=True)
    assert cmp(src, out)


@pytest.mark.parametrize('builder', [sysfs.empty, sysfs.qat_unbound,
                                     sysfs.non_qat_intel])
def test_qat_skipped_without_bound_device(env, tmp_path, builder):
    settings, policy = with_qat(env, tmp_path, builder)
    assert shutil.which('qzip', path=FAKES)      # qzip is there...
    src, dst = make_image(env.path('vol.raw'), MiB), env.path('vol.gz')
    result = fdutil.engine_compress(src, dst, settings, policy, Progress())
    assert result['engine'] == 'isal' and result['hardware'] is False


def test_fallback_disabled_without_hardware(env, tmp_path):
    settings, policy = with_qat(env, tmp_path, sysfs.empty)
    settings = dataclasses.replace(settings, allow_software_fallback=False)
    src, dst = make_image(env.path('vol.raw'), MiB), env.path('vol.gz')
    with pytest.raises(exception.NoEngineAvailable):
        fdutil.engine_compress(src, dst, settings, policy, Progress())
    nothing_left(env, dst)


def test_fallback_disabled_with_hardware(env, tmp_path):
    settings, policy = with_qat(env, tmp_path)
    settings = dataclasses.replace(settings, allow_software_fallback=False)
    src, dst = make_image(env.path('vol.raw'), MiB), env.path('vol.gz')
    result = fdutil.engine_compress(src, dst, settings, policy, Progress())
    assert result['hardware'] is True


@needs('zstd', 'gzip')
@pytest.mark.parametrize('tool, container, accepted', [
    ('zstd', 'gzip', False),     # a zstd stream where the image says gzip
    ('gzip', 'zstd', False),
    ('gzip', 'gzip', True),
    ('zstd', 'zstd', True),
])
def test_decompress_takes_only_what_the_container_says(env, tool, container,
                                                       accepted):
    from accel_daemon.engine.engine import Engine
    from accel_daemon import operations
    image = make_image(env.path('in.raw'), 8 * MiB)
    packed = env.path('in.packed')
    with open(image, 'rb') as f, open(packed, 'wb') as g:
        subprocess.run([tool, '-c'], stdin=f, stdout=g, check=True)
    out = env.path('out.raw')
    run = lambda: operations.run(  # noqa: E731
        Engine(env.settings, env.policy), 't', 'decompress',
        {'src': packed, 'dst': out, 'container': container})
    if accepted:
        run()
        assert cmp(image, out)
        return
    with pytest.raises(exception.CorruptInput) as e:
        run()
    assert e.value.message.endswith('%s data where %s was announced'
                                    % (tool, container))
    nothing_left(env, out)
