# SPDX-License-Identifier: Apache-2.0
"""Zero-padded gzip files from the real tools, read by the default decoder.

Tape tools and block-padded transfers leave zero bytes after the last gzip
member.  ``gzip -d`` skips them; the decompress operation (the in-process
ISA-L reader, the default decoder) must produce, byte for byte, what
``gzip -d`` produces, and must still refuse other bytes after a member.
The last tests pin down what the CLI decoders themselves do with padding
(their exit status is what the CLI drivers turn into CorruptInput).
"""

import os
import shutil
import subprocess

import pytest

from accel_daemon.drivers import cli
from accel_daemon.engine.progress import Progress
from accel_daemon.engine import sparse
from accel_daemon import exception
from tests import fdutil

pytestmark = pytest.mark.functional

MiB = 1024 * 1024
PADDINGS = [1, 511, 512, 4096, MiB]
COMPRESSORS = {
    'gzip': ['gzip', '-6', '-c', '-n'],
    'pigz': ['pigz', '-c', '-n', '-p', '2'],
    'igzip': ['igzip', '-c'],
}


def needs(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    return pytest.mark.skipif(bool(missing), reason='%s not installed'
                              % ', '.join(missing))


def _image(path):
    """8 MiB: binary and text data, allocated zeros, a hole, a tail."""
    with open('/usr/bin/python3', 'rb') as f:
        binary = f.read(MiB)
    with open(path, 'wb') as f:
        f.truncate(8 * MiB)
        f.seek(4096 + 17)
        f.write(binary)
        f.seek(3 * MiB)
        f.write(b'accel-daemon line of text\n' * 20000)
        f.seek(5 * MiB)
        f.write(bytes(MiB))
        f.seek(8 * MiB - 3)
        f.write(b'end')


@pytest.fixture(scope='module')
def packed(tmp_path_factory):
    """The image, and its compressed form by each installed tool."""
    root = tmp_path_factory.mktemp('padding')
    src = str(root / 'vol.raw')
    _image(src)
    out = {'raw': src}
    for tool, argv in COMPRESSORS.items():
        if shutil.which(tool) is None:
            continue
        with open(src, 'rb') as i:
            out[tool] = subprocess.run(argv, stdin=i, capture_output=True,
                                       check=True).stdout
    return out


def _gzip_d(path, *options):
    """``gzip -d -c`` on ``path`` as the CLI drivers run it (from stdin)."""
    with open(path, 'rb') as i:
        return subprocess.run(['gzip', *options, '-d', '-c'], stdin=i,
                              capture_output=True)


def _write(path, data):
    with open(path, 'wb') as f:
        f.write(data)
    return path


@needs('gzip', 'cmp')
@pytest.mark.parametrize('pad', PADDINGS)
@pytest.mark.parametrize('tool', sorted(COMPRESSORS))
def test_padded_output_equals_gzip_d(env, packed, tool, pad):
    if tool not in packed:
        pytest.skip('%s not installed' % tool)
    src = _write(env.path('vol.gz'), packed[tool] + bytes(pad))
    ref = _gzip_d(src)
    assert ref.returncode == 0, ref.stderr
    expected = _write(env.path('expected.raw'), ref.stdout)
    out = env.path('out.raw')
    result = fdutil.engine_decompress(src, out, env.settings, env.policy,
                                      Progress(), checksum=True)
    assert result['engine'] == 'isal' and result['format'] == 'gzip'
    assert result['size'] == len(ref.stdout) == os.path.getsize(
        packed['raw'])
    assert subprocess.run(['cmp', expected, out]).returncode == 0
    assert subprocess.run(['cmp', packed['raw'], out]).returncode == 0


@needs('gzip', 'pigz', 'igzip', 'cmp')
def test_padded_multi_member_from_three_tools(env, packed):
    blob = packed['gzip'] + packed['pigz'] + packed['igzip'] + bytes(4096)
    src = _write(env.path('multi.gz'), blob)
    ref = _gzip_d(src)
    assert ref.returncode == 0, ref.stderr
    assert len(ref.stdout) == 3 * os.path.getsize(packed['raw'])
    expected = _write(env.path('expected.raw'), ref.stdout)
    out = env.path('out.raw')
    fdutil.engine_decompress(src, out, env.settings, env.policy, Progress())
    assert subprocess.run(['cmp', expected, out]).returncode == 0


BAD_TAILS = {
    'garbage': lambda member: b'trailing garbage',
    'partial member': lambda member: member[:len(member) // 2],
    'zeros then garbage': lambda member: bytes(512) + b'\x01',
    'zeros then a member': lambda member: bytes(512) + member,
}


@needs('gzip')
@pytest.mark.parametrize('name', sorted(BAD_TAILS))
def test_not_padding_refused_like_gzip_d(env, packed, name):
    tail = BAD_TAILS[name](packed['gzip'])
    src = _write(env.path('bad.gz'), packed['gzip'] + tail)
    ref = _gzip_d(src)
    assert ref.returncode != 0         # gzip -d: error (1) or warning (2)
    out = env.path('bad.raw')
    with pytest.raises(exception.CorruptInput):
        fdutil.engine_decompress(src, out, env.settings, env.policy,
                                 Progress())
    assert not os.path.lexists(out)


# --- what the CLI decoders do with padding (for the CLI drivers) -----------
@needs('gzip')
@pytest.mark.parametrize('pad', PADDINGS)
def test_gzip_d_exit_status_on_padding(packed, tmp_path, pad):
    path = _write(str(tmp_path / 'in.gz'), packed['gzip'] + bytes(pad))
    quiet = _gzip_d(path)
    # Without -v, gzip 1.12 skips zero padding silently with status 0...
    assert (quiet.returncode, quiet.stderr) == (0, b'')
    verbose = _gzip_d(path, '-v')
    # ...with -v it warns, and a warning is exit status 2.
    assert verbose.returncode == 2
    assert b'trailing zero bytes ignored' in verbose.stderr
    assert verbose.stdout == quiet.stdout


@needs('gzip', 'pigz', 'igzip', 'cmp')
@pytest.mark.parametrize('pad', [1, 512, MiB])
@pytest.mark.parametrize('driver', [cli.GzipCompressor, cli.PigzCompressor,
                                    cli.IgzipCompressor])
def test_cli_decoders_accept_zero_padding(env, packed, driver, pad):
    src = _write(env.path('vol.gz'), packed['gzip'] + bytes(pad))
    drv = driver(env.settings, env.policy)
    out = env.path('out.raw')
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    try:
        with fdutil.decompressing(drv, src, Progress()) as stream:
            sparse.copy_capped(stream, fd, sparse.Flow(1 << 30))
    finally:
        os.close(fd)
    assert subprocess.run(['cmp', packed['raw'], out]).returncode == 0
