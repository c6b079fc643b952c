# SPDX-License-Identifier: Apache-2.0
"""The owner of an image changes its bytes after inspection, with no trace.

Stores through a shared ``mmap`` into a page that is already dirty move
neither mtime nor ctime: the owner dirties the header page before the
request, then, as ``qemu-img`` is about to start (after every check the
engine made), writes a backing file name into the qcow2 header.  Nothing
in the file's times shows it.  The backing file is a host file outside the
allowed directories, which the tools could read (as root here).

Two layers make that harmless, each on its own: ``qemu-img`` opens the
image over NBD with ``backing: null`` (``engine.nbd``), so it never looks
for the backing file, and it runs in a Landlock domain
(``engine.landlock``) where it can open nothing it was not handed.  The
attack is run with and without Landlock (``confine_tools = False``): in
both, no byte of the host file reaches an output, and the task fails with
``UnsafeImage`` once the image is inspected again after ``qemu-img``
(``images.check_unchanged``), so nothing is published.
"""

from __future__ import annotations

import mmap
import os
import struct
import subprocess

import pytest

from accel_daemon.engine.context import Context
from accel_daemon.engine.engine import Engine
from accel_daemon.engine import images
from accel_daemon.engine import landlock
from accel_daemon.engine import paths
from accel_daemon.engine import pipelines
from accel_daemon.engine import process
from accel_daemon.engine.progress import Progress
from accel_daemon.engine.settings import Settings
from accel_daemon import exception
from accel_daemon.options import Options
from tests import envfixture
from tests.functional.hooks import ActBeforeExec
from tests.functional import imagegen as gen

MiB = 1024 * 1024
SECRET = b'ROOT-ONLY-SECRET'
NAME_OFFSET = 0x800          # inside the header cluster, after extensions

pytestmark = gen.REQUIRES_QEMU


@pytest.fixture(params=[True, False], ids=['confined', 'unconfined'])
def env(request, tmp_path):
    return envfixture.make_env(tmp_path, confine_tools=request.param)


@pytest.fixture
def secret(env):
    path = os.path.join(env.root, 'secret.raw')      # outside images/
    gen.write(path, SECRET * (MiB // len(SECRET)))
    os.chmod(path, 0o600)
    return path


class Attacker:
    """Holds the image mapped shared, header page already dirty."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR)
        size = min(64 * 1024, os.fstat(self.fd).st_size)
        self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED)
        self.map[0:1] = self.map[0:1]         # dirty the page, once
        self.times = None

    def add_backing_file(self, target: str) -> None:
        st = os.fstat(self.fd)
        self.times = (st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        name = target.encode()
        self.map[NAME_OFFSET:NAME_OFFSET + len(name)] = name
        self.map[8:20] = struct.pack('>QI', NAME_OFFSET, len(name))

    def unseen(self) -> bool:
        st = os.fstat(self.fd)
        return self.times == (st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


def _leaked(directory: str) -> list[str]:
    found = []
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), 'rb') as f:
            data = f.read()
        if name.endswith('.gz'):
            data = subprocess.run(['gzip', '-dc'], input=data,
                                  capture_output=True).stdout
        if SECRET in data:
            found.append(name)
    return found


def _attack(env, secret, verb, run):
    src = gen.qcow2_with_data(env.path('src.qcow2'), size=4 * MiB,
                              written=MiB)
    attacker = Attacker(src)
    policy = ActBeforeExec(env.policy, verb,
                           lambda: attacker.add_backing_file(secret))
    try:
        outcome = run(Context.create(env.settings, policy), src)
        assert policy.acted
        # The premise: the times show nothing.
        assert attacker.unseen()
        return outcome
    finally:
        attacker.close()


def _convert(ctx, src):
    return images.convert(ctx, Progress(), src, os.path.join(
        os.path.dirname(src), 'out.raw'), 'qcow2', 'raw')


def _upload(ctx, src):
    return pipelines.upload(Engine(ctx.settings, ctx.policy), Progress(),
                            src, os.path.join(os.path.dirname(src),
                                              'out.qcow2.gz'),
                            'qcow2', 'qcow2', Options(checksum=True))


@pytest.mark.parametrize('run', [_convert, _upload], ids=['convert',
                                                          'upload'])
def test_backing_file_written_through_mmap_after_inspection(env, secret,
                                                            run):
    with pytest.raises(exception.UnsafeImage) as e:
        _attack(env, secret, 'convert', run)
    assert 'changed after it was inspected' in e.value.message
    assert 'nothing it names was read' in e.value.message
    assert sorted(os.listdir(env.images)) == ['src.qcow2']
    assert paths.stray_temp_files(env.images) == []
    assert _leaked(env.images) == []


def test_info_after_inspection_reports_no_backing_file(tmp_path):
    # qemu-img info names a backing file without reading it: refused the
    # same way with or without confinement.
    env = envfixture.make_env(tmp_path)
    path = os.path.join(env.root, 'secret.raw')
    gen.write(path, SECRET)
    with pytest.raises(exception.UnsafeImage):
        _attack(env, path, 'info', lambda ctx, src: images.info(
            ctx, src, 'qcow2'))


def test_download_never_reads_the_callers_file_twice(env, secret):
    """download decompresses the caller's gzip once, into a file of its
    own: rewriting the caller's file afterwards changes nothing."""
    raw = gen.qcow2_with_data(os.path.join(env.root, 'img.qcow2'),
                              size=4 * MiB, written=MiB)
    with open(raw, 'rb') as f:
        packed = subprocess.run(['gzip', '-c'], stdin=f,
                                capture_output=True, check=True).stdout
    src = gen.write(env.path('img.qcow2.gz'), packed)
    attacker = Attacker(src)
    size = len(attacker.map)
    policy = ActBeforeExec(env.policy, 'convert', lambda: (
        attacker.map.__setitem__(slice(0, size), bytes(size))))
    try:
        pipelines.download(Engine(env.settings, policy), Progress(), src,
                           env.path('out.raw'), 'qcow2', 'raw', Options())
    finally:
        attacker.close()
    assert policy.acted
    assert gen.compare(raw, 'qcow2', env.path('out.raw'), 'raw')


def test_a_kernel_without_landlock_runs_no_tool(tmp_path, monkeypatch):
    """Refused, not run unconfined, unless the operator says so."""
    env = envfixture.make_env(tmp_path)
    monkeypatch.setattr(landlock, 'abi', lambda: 0)
    with pytest.raises(exception.ConfinementUnavailable) as e:
        process.run(['gzip', '--version'], env.policy)
    assert 'no Landlock' in e.value.message
    # Unconfined on purpose: runs.
    loose = Context.create(Settings(filters_path=env.settings.filters_path,
                                    confine_tools=False))
    assert process.run(['gzip', '--version'], loose.policy).returncode == 0
