# SPDX-License-Identifier: Apache-2.0
"""An allowed directory whose file system has no O_TMPFILE (NFS, CIFS,
some FUSE; here a real FUSE mount, bindfs): every output is made in the
daemon's private staging directory and copied in only once it is complete
and accepted, so nothing unfinished or refused is ever named in the
caller's directory; without a staging directory such outputs are refused.

The real tools, then a real daemon (RPC, privsep), write into the mount.
Mounting needs root and bindfs (bindep.txt, test profile)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import threading
import time

import pytest

from accel_daemon.engine.engine import Engine
from accel_daemon.engine import paths
from accel_daemon import exception
from accel_daemon import operations
from tests import envfixture
from tests.functional import imagegen as gen
from tests.functional import test_rpc_daemon as rpcd

MiB = 1024 * 1024

pytestmark = [
    *gen.REQUIRES_QEMU,
    pytest.mark.skipif(os.geteuid() != 0, reason='mounting needs root'),
    pytest.mark.skipif(shutil.which('bindfs') is None,
                       reason='bindfs is not installed (bindep.txt test)'),
]


def has_tmpfile(directory: str) -> bool:
    try:
        os.close(os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600))
    except OSError:
        return False
    return True


def mount_fuse(directory: str, backing: str) -> None:
    os.makedirs(backing, exist_ok=True)
    subprocess.run(['bindfs', '-o', 'allow_other', backing, directory],
                   check=True)
    # The premise of every test here.
    assert not has_tmpfile(directory), 'bindfs gained O_TMPFILE'


def unmount(directory: str) -> None:
    for _ in range(50):
        if subprocess.run(['umount', directory]).returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError('cannot unmount %s' % directory)


@pytest.fixture
def env(tmp_path):
    env = envfixture.make_env(tmp_path,
                              staging_dir=str(tmp_path / 'staging'))
    mount_fuse(env.images, str(tmp_path / 'backing'))
    try:
        yield env
    finally:
        unmount(env.images)


@pytest.fixture
def engine(env):
    return Engine(env.settings, env.policy)


def run(engine, name, **params):
    return operations.run(engine, 'n-%s' % name, name, params)


def staged(env) -> list[str]:
    staging = env.settings.staging_dir
    return os.listdir(staging) if os.path.isdir(staging) else []


def only(env, *names: str) -> None:
    assert sorted(os.listdir(env.images)) == sorted(
        os.path.basename(n) for n in names)
    assert paths.stray_temp_files(env.images) == []
    assert staged(env) == []


def test_every_operation_writes_into_the_mount(env, engine):
    src = gen.qcow2_with_data(env.path('in.qcow2'), size=16 * MiB)
    run(engine, 'convert', src=src, dst=env.path('out.raw'),
        src_format='qcow2', dst_format='raw')
    assert gen.compare(src, 'qcow2', env.path('out.raw'), 'raw')
    # The copy-in keeps the holes qemu-img left (8 MiB of data in 16).
    assert os.stat(env.path('out.raw')).st_blocks * 512 <= 9 * MiB
    packed = run(engine, 'compress', src=env.path('out.raw'),
                 dst=env.path('out.raw.gz'))
    assert packed['size'] == os.path.getsize(env.path('out.raw.gz'))
    run(engine, 'decompress', src=env.path('out.raw.gz'),
        dst=env.path('back.raw'))
    assert gen.compare(src, 'qcow2', env.path('back.raw'), 'raw')
    run(engine, 'download', src=env.path('out.raw.gz'),
        dst=env.path('down.qcow2'), disk_format='raw', dst_format='qcow2')
    assert gen.compare(src, 'qcow2', env.path('down.qcow2'), 'qcow2')
    run(engine, 'upload', src=src, dst=env.path('up.gz'),
        src_format='qcow2', disk_format='raw')
    copied = run(engine, 'copy', src=env.path('back.raw'),
                 dst=env.path('copy.raw'), checksum=True)
    assert copied['size'] == 16 * MiB
    with open(env.path('out.raw'), 'wb') as f:
        f.write(b'an older output')
    run(engine, 'convert', src=src, dst=env.path('out.raw'),
        src_format='qcow2', dst_format='raw', replace=True)
    assert gen.compare(src, 'qcow2', env.path('out.raw'), 'raw')
    only(env, src, 'out.raw', 'out.raw.gz', 'back.raw', 'down.qcow2',
         'up.gz', 'copy.raw')


def test_nothing_is_named_while_qemu_img_writes(env, engine):
    # A name appearing in the caller's directory before the output is
    # accepted is what a second request (or the owner's write()) could
    # use; watch the directory while a throttled conversion runs.
    src = gen.qcow2_with_data(env.path('in.qcow2'), size=16 * MiB)
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.update(os.listdir(env.images))
            time.sleep(0.005)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        run(engine, 'convert', src=src, dst=env.path('out.raw'),
            src_format='qcow2', dst_format='raw', bps_limit=8 * MiB)
    finally:
        stop.set()
        watcher.join()
    # Only the final name and at most the copy-in name of the accepted
    # output, which exists after qemu-img is done.
    temp = {n for n in seen if n.startswith(paths.TEMP_PREFIX)}
    assert 'in.qcow2' in seen and seen - temp <= {'in.qcow2', 'out.raw'}
    only(env, src, 'out.raw')


def test_a_refused_output_is_never_named(env, engine):
    # A decompression bomb over its cap and an image that fails
    # inspection after decompression: refused, typed, nothing named.
    bomb = env.path('bomb.gz')
    with gzip.open(bomb, 'wb', 1) as f:
        f.write(b'\x01' * (8 * MiB))
    with pytest.raises(exception.SizeLimitExceeded):
        run(engine, 'decompress', src=bomb, dst=env.path('big.raw'),
            max_bytes=MiB)
    fake = env.path('fake.gz')
    with gzip.open(fake, 'wb', 1) as f:
        f.write(gen.qcow2_header(backing=b'/etc/shadow'))
    with pytest.raises(exception.UnsafeImage):
        run(engine, 'download', src=fake, dst=env.path('down.raw'),
            disk_format='qcow2', dst_format='raw')
    only(env, bomb, fake)


def test_without_a_staging_dir_the_mount_is_refused(env, tmp_path):
    engine = Engine(env.with_settings(staging_dir=None).settings,
                    env.policy)
    src = env.path('in.raw')
    with open(src, 'wb') as f:
        f.write(b'data' * 1024)
    with pytest.raises(exception.PathNotAllowed) as e:
        run(engine, 'copy', src=src, dst=env.path('out.raw'))
    assert 'O_TMPFILE' in e.value.message
    only(env, src)


# --- through a real daemon ---------------------------------------------------
@pytest.fixture(scope='module')
def daemon(tmp_path_factory):
    rpcd.require_broker()
    d = rpcd.DaemonProcess(str(tmp_path_factory.mktemp('no-tmpfile')))
    mount_fuse(d.images, os.path.join(d.root, 'backing'))
    try:
        d.start()
        yield d
        d.stop()
    finally:
        unmount(d.images)


@pytest.mark.rpc
@pytest.mark.privsep
def test_through_the_daemon(daemon):
    images = daemon.images
    src = gen.qcow2_with_data(os.path.join(images, 'in.qcow2'),
                              size=16 * MiB)
    staging = os.path.join(daemon.root, 'staging')
    with daemon.client() as client:
        client.convert(src, os.path.join(images, 'out.raw'), 'qcow2',
                       'raw').wait(120)
        client.compress(os.path.join(images, 'out.raw'),
                        os.path.join(images, 'out.gz')).wait(120)
        with pytest.raises(exception.SizeLimitExceeded):
            client.decompress(os.path.join(images, 'out.gz'),
                              os.path.join(images, 'small.raw'),
                              max_bytes=MiB).wait(120)
    assert gen.compare(src, 'qcow2', os.path.join(images, 'out.raw'), 'raw')
    assert sorted(os.listdir(images)) == ['in.qcow2', 'out.gz', 'out.raw']
    # Made by the privileged helper on first use: root's alone, empty.
    st = os.stat(staging)
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o700)
    assert os.listdir(staging) == []
    # Published with the directory's owner, as any output.
    st = os.stat(os.path.join(images, 'out.raw'))
    assert (st.st_uid, st.st_gid) == (os.stat(images).st_uid,
                                      os.stat(images).st_gid)
