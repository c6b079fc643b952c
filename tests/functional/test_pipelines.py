# SPDX-License-Identifier: Apache-2.0
"""The cinder flows through the Engine, with the real tools.

upload   = inspect -> convert to the disk format -> compress
download = decompress (capped) -> inspect the inner image -> convert
"""

import dataclasses
import gzip
import hashlib
import os
import shutil
import threading
from unittest import mock

import pytest

from accel_daemon.engine.engine import Engine
from accel_daemon.engine import files
from accel_daemon.engine import paths
from accel_daemon import exception
from accel_daemon import operations
from tests.functional import imagegen as gen

MiB = 1024 * 1024

pytestmark = gen.REQUIRES_QEMU


@pytest.fixture
def engine(env):
    return Engine(env.settings, env.policy)


def nothing_left(env, *outputs):
    for out in outputs:
        assert not os.path.lexists(out), out
    assert paths.stray_temp_files(env.images) == []


def gzip_file(path, data):
    with gzip.open(path, 'wb', compresslevel=1) as f:
        f.write(data)
    return path


def test_upload_qcow2_as_raw_then_download_as_qcow2(env, engine):
    src = gen.qcow2_with_data(env.path('vol.qcow2'))
    image = env.path('image.gz')
    up = operations.run(engine, 'u1', 'upload', {'src': src, 'dst': image,
                                                 'src_format': 'qcow2',
                                                 'disk_format': 'raw'})
    assert up['output'] == image and up['converted'] is True
    assert up['engine'] == 'isal' and up['hardware'] is False
    assert len(up['sha256']) == 64
    assert up['virtual_size'] == 64 * MiB
    # What Glance would store is plain gzip of the raw disk.
    raw = env.path('check.raw')
    with gzip.open(image) as f, open(raw, 'wb') as g:
        shutil.copyfileobj(f, g)
    assert gen.compare(src, 'qcow2', raw, 'raw')
    back = env.path('back.qcow2')
    down = operations.run(engine, 'd1', 'download', {
        'src': image, 'dst': back, 'disk_format': 'raw',
        'dst_format': 'qcow2', 'max_bytes': 64 * MiB})
    assert down['output'] == back and down['decompress_engine'] == 'isal'
    assert gen.compare(src, 'qcow2', back, 'qcow2')
    assert paths.stray_temp_files(env.images) == []


def test_upload_qcow2_is_rewritten_not_copied(env, engine):
    """A qcow2 is never published as its owner wrote it: its header could
    change after inspection (tests/functional/
    test_content_after_inspection.py)."""
    src = gen.qcow2_with_data(env.path('vol.qcow2'), size=8 * MiB,
                              written=MiB)
    up = operations.run(engine, 'u3', 'upload', {
        'src': src, 'dst': env.path('q.gz'), 'src_format': 'qcow2',
        'disk_format': 'qcow2'})
    assert up['converted'] is True
    out = env.path('q.qcow2')
    with gzip.open(up['output']) as f, open(out, 'wb') as g:
        shutil.copyfileobj(f, g)
    assert gen.compare(src, 'qcow2', out, 'qcow2')


def test_upload_same_format_compresses_the_source(env, engine):
    src = gen.write(env.path('vol.raw'), b'\x5a' * MiB, size=8 * MiB)
    up = operations.run(engine, 'u2', 'upload', {
        'src': src, 'dst': env.path('v.gz'), 'src_format': 'raw',
        'disk_format': 'raw'})
    assert up['converted'] is False
    with gzip.open(up['output']) as f:
        assert f.read() == open(src, 'rb').read()


def test_download_raw_to_raw_inflates_straight_into_the_output(env,
                                                               engine):
    data = b'\x11' * MiB + bytes(7 * MiB)
    image = gzip_file(env.path('img.gz'), data)
    down = operations.run(engine, 'd2', 'download', {
        'src': image, 'dst': env.path('out.raw'), 'disk_format': 'raw',
        'dst_format': 'raw', 'checksum': True})
    with open(down['output'], 'rb') as f:
        assert f.read() == data
    assert down['sha256'] == hashlib.sha256(data).hexdigest()
    assert down['engine'] == 'stream' and down['size'] == len(data)
    # Sparse: the 7 MiB of zeros were not allocated.
    assert os.stat(down['output']).st_blocks * 512 < 4 * MiB
    assert paths.stray_temp_files(env.images) == []


def test_download_raw_onto_a_device_stages_nothing(env, tmp_path):
    backing = str(tmp_path / 'disk.img')
    with open(backing, 'wb') as f:
        f.write(b'\x5a' * 16 * MiB)
    data = os.urandom(MiB) + bytes(3 * MiB) + os.urandom(MiB)
    image = gzip_file(env.path('img.gz'), data)
    with gen.loop_device(backing) as dev:
        engine = Engine(env.with_settings(
            allowed_block_devices=(dev,)).settings, env.policy)
        seen = []
        real = files.Output.__init__

        def watched(self, conf, path, *args, **kwargs):
            seen.append(path)
            real(self, conf, path, *args, **kwargs)
        with mock.patch.object(files.Output, '__init__', watched):
            down = operations.run(engine, 'd-dev', 'download', {
                'src': image, 'dst': dev, 'disk_format': 'raw',
                'dst_format': 'raw'})
        with open(dev, 'rb') as f:
            written = f.read(16 * MiB)
    # Every byte of the image, zeros too, nothing past it; one output (the
    # device): no stage in the allowed directory.
    assert written[:len(data)] == data
    assert written[len(data):] == b'\x5a' * (16 * MiB - len(data))
    assert seen == [dev]
    assert down['size'] == len(data)
    assert sorted(os.listdir(env.images)) == ['img.gz']


def test_download_content_not_an_image(env, engine):
    # A 'compressed' container claimed to hold a qcow2 that holds text.
    image = gzip_file(env.path('text.gz'), b'just some text\n' * 5000)
    out = env.path('out.raw')
    with pytest.raises(exception.FormatMismatch) as e:
        operations.run(engine, 'd3', 'download', {'src': image, 'dst': out,
                                                  'disk_format': 'qcow2',
                                                  'dst_format': 'raw'})
    assert 'text.gz' in e.value.message
    nothing_left(env, out)


def test_download_inner_qcow2_with_backing_file(env, engine):
    evil = gen.qcow2_with_backing(os.path.join(env.root, 'evil.qcow2'),
                                  os.path.join(env.root, 'base.raw'))
    with open(evil, 'rb') as f:
        image = gzip_file(env.path('evil.gz'), f.read())
    out = env.path('out.raw')
    with pytest.raises(exception.UnsafeImage):
        operations.run(engine, 'd4', 'download', {'src': image, 'dst': out,
                                                  'disk_format': 'qcow2',
                                                  'dst_format': 'raw'})
    nothing_left(env, out)


def test_download_bomb_stops_at_max_bytes(env, engine):
    image = gzip_file(env.path('bomb.gz'), bytes(64 * MiB))
    out = env.path('out.raw')
    with pytest.raises(exception.SizeLimitExceeded):
        operations.run(engine, 'd5', 'download', {'src': image, 'dst': out,
                                                  'disk_format': 'raw',
                                                  'dst_format': 'raw',
                                                  'max_bytes': 8 * MiB})
    nothing_left(env, out)


@pytest.mark.parametrize('kind,params', [
    ('upload', {'src_format': 'raw', 'disk_format': 'iso'}),
    ('download', {'disk_format': 'raw', 'dst_format': 'auto'}),
])
def test_unsupported_formats(env, engine, kind, params):
    src = gen.write(env.path('in'), b'x' * MiB)
    out = env.path('out')
    with pytest.raises(exception.UnsupportedFormat):
        operations.run(engine, 'f', kind, dict(params, src=src, dst=out))
    nothing_left(env, out)


def test_cancel_upload_leaves_nothing(env, engine):
    src = gen.write(env.path('big.raw'), os.urandom(MiB) * 96)
    out = env.path('big.gz')
    errors = []

    def run():
        try:
            operations.run(engine, 'c1', 'upload', {'src': src, 'dst': out,
                                                    'src_format': 'raw',
                                                    'disk_format': 'qcow2'})
        except exception.AccelError as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    while engine.progress('c1') is None and t.is_alive():
        pass
    assert engine.cancel('c1') or not t.is_alive()
    t.join(60)
    assert [type(e) for e in errors] == [exception.Cancelled]
    nothing_left(env, out)


def test_engine_rejects_unknown_kind_and_parameters(env, engine):
    with pytest.raises(exception.InvalidRequest):
        operations.run(engine, 'x', 'format_disk', {})
    with pytest.raises(exception.InvalidRequest):
        operations.run(engine, 'x', 'compress', {'src': '/a', 'dst': '/b',
                                                 'shell': 'rm -rf /'})
    assert engine.progress('x') is None


def test_discard_partial_removes_only_that_outputs_temps(env, engine):
    # What a crash leaves: temp names of two outputs, plus a look-alike.
    mine = env.path('.accel-out.raw.0123abcd.part')
    other = env.path('.accel-out.raw.x.89abcdef.part')
    odd = env.path('.accel-out.raw.nothex!!.part')
    for p in (mine, other, odd):
        gen.write(p, b'partial')
    removed = engine.discard_partial(env.path('out.raw'))
    assert removed == [mine]
    assert os.path.exists(other) and os.path.exists(odd)


def test_capabilities(env, engine):
    caps = engine.capabilities()
    names = {d['name']: d for d in caps['drivers']}
    assert caps['default_driver'] == 'isal'
    assert caps['hardware'] is False
    assert names['qat']['available'] is False
    assert 'qcow2' in caps['formats']['input']
    assert caps['tools']['isal']


def test_capabilities_report_qemu_img_version(engine):
    assert engine.capabilities()['tools']['qemu-img'].startswith(
        'qemu-img version ')


@pytest.fixture
def named_device(env):
    """A loop device reached through a symlinked name, the way LVM and
    device-mapper volumes are (/dev/<vg>/<lv> -> /dev/dm-N)."""
    backing = os.path.join(env.root, 'disk.img')
    gen.write(backing, b'\x42' * MiB, 16 * MiB)
    with gen.loop_device(backing) as dev:
        name = '/dev/accel-test-%d' % os.getpid()
        os.symlink(dev, name)
        try:
            yield name, backing
        finally:
            os.unlink(name)


def test_compress_from_symlinked_device_name(env, named_device):
    name, backing = named_device
    env = env.with_settings(allowed_block_devices=('/dev/accel-test-*',))
    engine = Engine(env.settings, env.policy)
    out = env.path('dev.gz')
    result = operations.run(engine, 'dev', 'compress',
                            {'src': name, 'dst': out})
    with gzip.open(out) as f, open(backing, 'rb') as g:
        assert f.read() == g.read()
    assert result['bytes_in'] == 16 * MiB
    # Without the pattern the same name is refused.
    plain = Engine(dataclasses.replace(env.settings,
                                       allowed_block_devices=()), env.policy)
    with pytest.raises(exception.PathNotAllowed):
        operations.run(plain, 'dev2', 'compress',
                       {'src': name, 'dst': env.path('dev2.gz')})
    assert not os.path.exists(env.path('dev2.gz'))


def test_discard_partial_of_a_download_onto_a_device(env, named_device):
    name, _ = named_device
    env = env.with_settings(allowed_block_devices=('/dev/accel-test-*',))
    engine = Engine(env.settings, env.policy)
    # Only where O_TMPFILE is missing does a stage have a name to leave.
    left = env.path('.accel-stage.0123abcd.part')
    gen.write(left, b'stage of a crashed download')
    assert engine.discard_partial(name) == [left]
    assert not os.path.exists(left)
