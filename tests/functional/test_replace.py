# SPDX-License-Identifier: Apache-2.0
"""replace=True with the real engine and the real tools, then through a real
daemon.  cinder calls ``ImageAccel(tmp, tmp)``: it compresses and
decompresses in place, on files it created with mkstemp beforehand, so its
output always exists."""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
import tempfile

import pytest

from accel_daemon.engine.engine import Engine
from accel_daemon.engine import paths
from accel_daemon import exception
from accel_daemon import operations
from tests.functional import imagegen as gen
from tests.functional import test_rpc_daemon as rpcd

MiB = 1024 * 1024
pytestmark = gen.REQUIRES_QEMU


@pytest.fixture
def engine(env):
    return Engine(env.settings, env.policy)


def mkstemp(env, data: bytes = b'') -> str:
    """A temp file as cinder makes it (mkstemp: 0600, in the directory)."""
    fd, path = tempfile.mkstemp(dir=env.images, prefix='tmp')
    os.write(fd, data)
    os.close(fd)
    return path


def raw_image(path: str, size: int = 8 * MiB) -> str:
    with open(path, 'wb') as f:
        f.truncate(size)
        for off in range(0, size, 2 * MiB):
            f.seek(off)
            f.write((b'accel-daemon %d\n' % off) * 2048)
            f.write(os.urandom(32 * 1024))
    return path


def same_bytes(a: str, b: str) -> bool:
    return subprocess.run(['cmp', '-s', a, b]).returncode == 0


def only(env, *names: str) -> None:
    """Exactly these names in the allowed directory: no temp name left."""
    assert sorted(os.listdir(env.images)) == sorted(
        os.path.basename(n) for n in names)
    assert paths.stray_temp_files(env.images) == []


def run(engine, name, **params):
    return operations.run(engine, 'r-%s' % name, name, params)


# --- cinder's in-place round trip --------------------------------------------
@pytest.mark.parametrize('fmt', ['gzip', 'zstd'])
def test_in_place_compress_then_decompress_gives_back_the_bytes(
        env, engine, fmt):
    if fmt == 'zstd' and 'zstd' not in engine.drivers:
        pytest.skip('no zstd driver')
    original = raw_image(os.path.join(env.root, 'original.raw'))
    tmp = mkstemp(env)
    with open(original, 'rb') as f, open(tmp, 'wb') as g:
        g.write(f.read())
    packed = run(engine, 'compress', src=tmp, dst=tmp, format=fmt,
                 replace=True)
    assert packed['output'] == tmp
    assert os.path.getsize(tmp) == packed['size'] < os.path.getsize(original)
    with open(tmp, 'rb') as f:
        assert f.read(4)[:2] in (b'\x1f\x8b', b'\x28\xb5')
    assert stat.S_IMODE(os.stat(tmp).st_mode) == env.settings.output_file_mode
    unpacked = run(engine, 'decompress', src=tmp, dst=tmp, replace=True)
    assert unpacked['size'] == os.path.getsize(original)
    assert same_bytes(original, tmp)
    only(env, tmp)


def test_in_place_without_replace_is_output_exists(env, engine):
    tmp = mkstemp(env, b'data' * 1000)
    with pytest.raises(exception.OutputExists):
        run(engine, 'compress', src=tmp, dst=tmp)
    with open(tmp, 'rb') as f:
        assert f.read() == b'data' * 1000
    only(env, tmp)


# --- every other operation over an existing file -----------------------------
def test_convert_over_an_existing_file(env, engine):
    src = gen.qcow2_with_data(env.path('in.qcow2'), size=16 * MiB)
    dst = mkstemp(env, b'old contents')
    result = run(engine, 'convert', src=src, dst=dst, src_format='qcow2',
                 dst_format='raw', replace=True, checksum=True)
    assert result['output'] == dst
    assert gen.compare(src, 'qcow2', dst, 'raw')
    assert os.path.getsize(dst) == 16 * MiB
    only(env, src, dst)


def test_convert_in_place(env, engine):
    src = gen.qcow2_with_data(env.path('vol.qcow2'), size=16 * MiB)
    keep = env.path('keep.qcow2')
    with open(src, 'rb') as f, open(keep, 'wb') as g:
        g.write(f.read())
    run(engine, 'convert', src=src, dst=src, src_format='qcow2',
        dst_format='raw', replace=True)
    assert gen.compare(keep, 'qcow2', src, 'raw')
    only(env, src, keep)


def test_copy_over_an_existing_file(env, engine):
    src = raw_image(env.path('in.raw'))
    dst = mkstemp(env, b'x' * 100)
    result = run(engine, 'copy', src=src, dst=dst, replace=True,
                 checksum=True)
    assert same_bytes(src, dst) and result['size'] == os.path.getsize(src)
    only(env, src, dst)


@pytest.mark.parametrize('dst_format', ['raw', 'qcow2'])
def test_download_over_a_mkstemp_file(env, engine, dst_format):
    original = raw_image(os.path.join(env.root, 'original.raw'))
    image = env.path('image.gz')
    with open(original, 'rb') as f, gzip.open(image, 'wb', 1) as g:
        g.write(f.read())
    tmp = mkstemp(env)          # empty, as cinder's temp file is
    run(engine, 'download', src=image, dst=tmp, disk_format='raw',
        dst_format=dst_format, replace=True)
    assert gen.compare(original, 'raw', tmp, dst_format)
    only(env, image, tmp)


@pytest.mark.parametrize('src_format', ['raw', 'qcow2'])
def test_upload_over_an_existing_file(env, engine, src_format):
    if src_format == 'raw':
        src = raw_image(env.path('vol.raw'))
    else:
        src = gen.qcow2_with_data(env.path('vol.qcow2'), size=16 * MiB)
    dst = mkstemp(env, b'an older upload')
    result = run(engine, 'upload', src=src, dst=dst, src_format=src_format,
                 disk_format='raw', replace=True)
    assert result['converted'] is (src_format != 'raw')
    back = os.path.join(env.root, 'back.raw')
    with gzip.open(dst) as f, open(back, 'wb') as g:
        g.write(f.read())
    assert gen.compare(src, src_format, back, 'raw')
    only(env, src, dst)


# --- refusals: typed, nothing written, nothing left --------------------------
def _symlink(env, name, victim):
    os.symlink(victim, name)


def _fifo(env, name, victim):
    os.mkfifo(name)


def _directory(env, name, victim):
    os.mkdir(name)


def _hard_link(env, name, victim):
    os.link(mkstemp(env, b'theirs'), name)


REFUSALS = pytest.mark.parametrize('make, error', [
    (_symlink, exception.SymlinkEscape),
    (_fifo, exception.PathNotAllowed),
    (_directory, exception.PathNotAllowed),
    (_hard_link, exception.PathNotAllowed),
], ids=['symlink', 'fifo', 'directory', 'hard-link'])


def _listing(env):
    return {n: os.lstat(os.path.join(env.images, n)).st_mtime_ns
            for n in os.listdir(env.images)}


@REFUSALS
@pytest.mark.parametrize('operation', ['compress', 'decompress', 'copy',
                                       'convert', 'upload', 'download'])
def test_refusals(env, engine, make, error, operation):
    victim = os.path.join(env.root, 'victim')
    with open(victim, 'wb') as f:
        f.write(b'root:secret\n')
    src = raw_image(env.path('in.raw'), 2 * MiB)
    if operation in ('decompress', 'download'):
        with open(src, 'rb') as f, gzip.open(env.path('in.gz'), 'wb') as g:
            g.write(f.read())
        src = env.path('in.gz')
    dst = env.path('out')
    make(env, dst, victim)
    before = _listing(env)
    params = {'src': src, 'dst': dst, 'replace': True}
    if operation in ('convert', 'upload'):
        params.update(src_format='raw', dst_format='qcow2',
                      disk_format='qcow2')
        params.pop('dst_format' if operation == 'upload' else 'disk_format')
    if operation == 'download':
        params.update(disk_format='raw', dst_format='raw')
    with pytest.raises(error) as err:
        run(engine, operation, **params)
    assert type(err.value) is error
    assert _listing(env) == before
    assert paths.stray_temp_files(env.images) == []
    with open(victim, 'rb') as f:
        assert f.read() == b'root:secret\n'


def test_outside_is_refused(env, engine):
    src = raw_image(env.path('in.raw'), MiB)
    outside = os.path.join(env.root, 'outside.raw')
    with open(outside, 'wb') as f:
        f.write(b'keep')
    with pytest.raises(exception.PathNotAllowed):
        run(engine, 'copy', src=src, dst=outside, replace=True)
    with open(outside, 'rb') as f:
        assert f.read() == b'keep'
    only(env, src)


def test_replace_on_a_block_device_is_invalid(env):
    engine = Engine(env.with_settings(
        allowed_block_devices=('/dev/accel-test-*',)).settings, env.policy)
    src = raw_image(env.path('in.raw'), MiB)
    with gzip.open(env.path('in.gz'), 'wb') as g:
        g.write(b'\0' * MiB)
    for name, params in (
            ('convert', {'src': src, 'src_format': 'raw',
                         'dst_format': 'raw'}),
            ('download', {'src': env.path('in.gz'), 'disk_format': 'raw',
                          'dst_format': 'raw'})):
        with pytest.raises(exception.InvalidRequest) as err:
            run(engine, name, dst='/dev/accel-test-0', replace=True,
                **params)
        assert type(err.value) is exception.InvalidRequest, name
        assert 'block devices' in err.value.message
    only(env, src, env.path('in.gz'))


# --- through a real daemon: RPC, privsep, client -----------------------------
@pytest.fixture(scope='module')
def daemon(tmp_path_factory):
    rpcd.require_broker()
    d = rpcd.DaemonProcess(str(tmp_path_factory.mktemp('replaced')))
    d.start()
    yield d
    d.stop()


@pytest.mark.rpc
@pytest.mark.privsep
def test_through_the_daemon(daemon):
    images = daemon.images
    original = raw_image(os.path.join(daemon.root, 'original.raw'))
    fd, tmp = tempfile.mkstemp(dir=images)
    with open(original, 'rb') as f:
        os.write(fd, f.read())
    os.close(fd)
    victim = os.path.join(daemon.root, 'victim')
    with open(victim, 'wb') as f:
        f.write(b'root:secret\n')
    with daemon.client() as client:
        with pytest.raises(exception.OutputExists):
            client.compress(tmp, tmp).wait(120)
        packed = client.compress(tmp, tmp, replace=True).wait(120)
        assert packed['output'] == tmp
        assert packed['size'] == os.path.getsize(tmp)
        client.decompress(tmp, tmp, replace=True).wait(120)
        assert same_bytes(original, tmp)
        st = os.stat(tmp)
        assert (st.st_uid, st.st_gid) == (os.stat(images).st_uid,
                                          os.stat(images).st_gid)
        copy = os.path.join(images, 'copy.raw')
        with open(copy, 'wb') as f:
            f.write(b'old')
        client.copy(tmp, copy, replace=True).wait(120)
        assert same_bytes(original, copy)

        # The refusals, answered typed before a task is queued.
        link = os.path.join(images, 'link')
        os.symlink(victim, link)
        fifo = os.path.join(images, 'fifo')
        os.mkfifo(fifo)
        hard = os.path.join(images, 'hard')
        os.link(copy, hard)
        sub = os.path.join(images, 'sub')
        os.mkdir(sub)
        before = sorted(os.listdir(images))
        for dst, error in ((link, exception.SymlinkEscape),
                           (fifo, exception.PathNotAllowed),
                           (sub, exception.PathNotAllowed),
                           (hard, exception.PathNotAllowed),
                           (victim, exception.PathNotAllowed)):
            with pytest.raises(error) as err:
                client.copy(tmp, dst, replace=True).wait(60)
            assert type(err.value) is error, dst
        assert sorted(os.listdir(images)) == before
        assert paths.stray_temp_files(images) == []
        with open(victim, 'rb') as f:
            assert f.read() == b'root:secret\n'
        assert client.tasks(limit=1)        # still serving
