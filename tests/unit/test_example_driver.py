# SPDX-License-Identifier: Apache-2.0
"""The example driver of doc/source/drivers.rst (doc/source/examples/), run
as the guide says a driver is run: loaded by entry point, chosen by the
engine, its output read by stock gzip readers.  If the driver interface
changes, these fail and the guide is fixed with them."""

import configparser
import dataclasses
import gzip
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import zlib

import pytest
from stevedore import extension

from accel_daemon.engine import compression
from accel_daemon.engine import driver as base
from accel_daemon.engine.engine import Engine
from accel_daemon.engine.progress import Progress
from accel_daemon.engine.settings import Settings
from accel_daemon import exception

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, 'doc', 'source', 'examples')
MiB = 1024 * 1024


@pytest.fixture(scope='module')
def example():
    sys.path.insert(0, EXAMPLES)
    try:
        yield importlib.import_module('zlib_driver')
    finally:
        sys.path.remove(EXAMPLES)


@pytest.fixture
def driver(example):
    return example.ZlibCompressor(Settings(), policy=None)


def _source(tmp_path, data):
    path = tmp_path / 'src'
    path.write_bytes(data)
    return path


def _sample(size=3 * MiB + 123):
    # Compressible, but not trivially: text with a counter.
    line = b'block %08d of a disk image that compresses well enough\n'
    out = bytearray()
    i = 0
    while len(out) < size:
        out += line % i
        i += 1
    return bytes(out[:size])


def _compress(driver, src, dst, **kwargs):
    progress = Progress()
    sfd = os.open(src, os.O_RDONLY)
    dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        stats = driver.compress(sfd, dfd, progress, **kwargs)
    finally:
        os.close(sfd)
        os.close(dfd)
    return stats, progress


def _decompress(driver, src, bufsize=64 * 1024):
    fd = os.open(src, os.O_RDONLY)
    out = bytearray()
    buf = bytearray(bufsize)
    try:
        with driver.open_decompressed(fd, Progress()) as stream:
            while n := stream.readinto(buf):
                assert n <= bufsize
                out += buf[:n]
    finally:
        os.close(fd)
    return bytes(out), stream


def test_the_setup_cfg_entry_point_names_the_class(example):
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(EXAMPLES, 'setup.cfg'))
    lines = [line for line in cfg['entry_points'][
        compression.NAMESPACE].splitlines() if line.strip()]
    assert len(lines) == 1
    name, target = (part.strip() for part in lines[0].split('='))
    module, cls = target.split(':')
    assert name == example.ZlibCompressor.name
    assert getattr(importlib.import_module(module), cls) \
        is example.ZlibCompressor


def test_it_is_a_compressor_writing_gzip(driver):
    assert isinstance(driver, base.Compressor)
    assert (driver.name, driver.hardware, driver.output_format) == (
        'zlib', False, base.GZIP)


def test_available_with_the_library_version(driver):
    avail = driver.availability()
    assert avail.available
    assert avail.version == 'zlib %s' % zlib.ZLIB_RUNTIME_VERSION


def test_a_failed_probe_makes_it_unavailable_with_the_reason(example):
    class Broken(example.ZlibCompressor):
        def probe(self):
            return 'no such device'

    avail = Broken(Settings(), None).availability()
    assert (avail.available, avail.reason) == (False, 'no such device')


def test_levels_clamp_to_what_zlib_compresses_with(driver):
    assert [driver.level(v) for v in (0, 1, 6, 9, 12)] == [1, 1, 6, 9, 9]
    assert driver.level() == Settings().compression_level


def test_output_is_gzip_the_stdlib_reads(driver, tmp_path):
    data = _sample()
    src = _source(tmp_path, data)
    stats, progress = _compress(driver, src, tmp_path / 'out.gz',
                                digest=True)
    packed = (tmp_path / 'out.gz').read_bytes()
    assert gzip.decompress(packed) == data
    assert (stats.bytes_in, stats.bytes_out) == (len(data), len(packed))
    assert stats.sha256 == hashlib.sha256(packed).hexdigest()
    assert (stats.engine, stats.hardware) == ('zlib', False)
    assert progress.snapshot() == {'done': len(data), 'total': len(data)}


def test_without_digest_no_sha256(driver, tmp_path):
    stats, _ = _compress(driver, _source(tmp_path, b'x' * 1000),
                         tmp_path / 'out.gz')
    assert stats.sha256 is None


def test_empty_input_is_a_valid_empty_gzip(driver, tmp_path):
    _compress(driver, _source(tmp_path, b''), tmp_path / 'out.gz')
    assert gzip.decompress((tmp_path / 'out.gz').read_bytes()) == b''


@pytest.mark.skipif(shutil.which('gzip') is None, reason='needs gzip')
def test_output_passes_gzip_t_and_gzip_d(driver, tmp_path):
    data = _sample(MiB)
    _compress(driver, _source(tmp_path, data), tmp_path / 'out.gz')
    subprocess.run(['gzip', '-t', str(tmp_path / 'out.gz')], check=True)
    out = subprocess.run(['gzip', '-d', '-c', str(tmp_path / 'out.gz')],
                         check=True, capture_output=True).stdout
    assert out == data


def test_a_cancelled_run_stops(driver, tmp_path):
    src = _source(tmp_path, _sample(MiB))
    progress = Progress()
    progress.cancel()
    sfd = os.open(src, os.O_RDONLY)
    dfd = os.open(tmp_path / 'out.gz', os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(exception.Cancelled):
            driver.compress(sfd, dfd, progress)
    finally:
        os.close(sfd)
        os.close(dfd)


def test_decompresses_concatenated_members(driver, tmp_path):
    # What pigz, the isal driver and qzip write: several gzip members.
    parts = [_sample(200000), b'', os.urandom(70000), _sample(5000)]
    path = tmp_path / 'multi.gz'
    path.write_bytes(b''.join(gzip.compress(p) for p in parts))
    out, stream = _decompress(driver, path)
    assert out == b''.join(parts)
    assert stream.cpu_seconds >= 0.0


def test_each_read_is_bounded_however_well_the_input_compresses(
        driver, tmp_path):
    path = tmp_path / 'zeros.gz'
    path.write_bytes(gzip.compress(bytes(8 * MiB)))
    out, _ = _decompress(driver, path, bufsize=4096)
    assert out == bytes(8 * MiB)


@pytest.mark.parametrize('damage', ['truncated', 'garbage'])
def test_corrupt_input_is_corruptinput(driver, tmp_path, damage):
    packed = gzip.compress(_sample(100000))
    path = tmp_path / 'bad.gz'
    if damage == 'truncated':
        path.write_bytes(packed[:len(packed) // 2])
    else:
        path.write_bytes(packed + b'not gzip at all')
    with pytest.raises(exception.CorruptInput):
        _decompress(driver, path)


def _registry(example, settings):
    # What stevedore gives the engine once the example's package is
    # installed with its entry point.
    mgr = extension.ExtensionManager.make_test_instance(
        [extension.Extension('zlib', None, example.ZlibCompressor, None)],
        namespace=compression.NAMESPACE)
    return compression.load_drivers(settings, policy=None, manager=mgr)


def test_the_engine_selects_it_from_the_preference_list(example):
    settings = Settings(drivers=('zlib',))
    drivers = _registry(example, settings)
    assert compression.select(drivers, settings).name == 'zlib'
    caps = compression.capabilities(drivers)
    assert [(c['name'], c['available'], c['format']) for c in caps] == [
        ('zlib', True, 'gzip')]


def test_the_engine_refuses_it_outside_the_preference_list(example):
    settings = Settings(drivers=('gzip',))
    with pytest.raises(exception.NoEngineAvailable):
        compression.select(_registry(example, settings), settings,
                           driver='zlib')


def test_compress_through_the_engine(example, env):
    settings = dataclasses.replace(env.settings, drivers=('zlib',))
    engine = Engine(settings, env.policy,
                    drivers=_registry(example, settings))
    data = _sample()
    src = os.path.join(env.images, 'vol.raw')
    dst = os.path.join(env.images, 'vol.raw.gz')
    with open(src, 'wb') as f:
        f.write(data)
    result = engine.compress(Progress(), src, dst)
    assert (result['engine'], result['format']) == ('zlib', 'gzip')
    with open(dst, 'rb') as f:
        packed = f.read()
    assert gzip.decompress(packed) == data
    assert result['sha256'] == hashlib.sha256(packed).hexdigest()
