# SPDX-License-Identifier: Apache-2.0
"""qemu-img operations through the engine with the real tools."""

import os
import threading
import time

import pytest

from accel_daemon.engine import images
from accel_daemon.engine import paths
from accel_daemon.engine import process
from accel_daemon.engine.progress import Progress
from accel_daemon.engine import qemu_img
from accel_daemon import exception
from accel_daemon.options import Options
from tests import envfixture
from tests.functional import imagegen as gen

MiB = 1024 * 1024

pytestmark = gen.REQUIRES_QEMU


@pytest.fixture
def qcow2(env):
    return gen.qcow2_with_data(env.path('src.qcow2'))


def convert(env, src, name, src_fmt, dst_fmt, progress=None, **kw):
    return images.convert(env.ctx, progress or Progress(), src,
                          env.path(name), src_fmt, dst_fmt, Options(**kw))


def test_info(env, qcow2):
    data = images.info(env.ctx, qcow2, 'qcow2')
    assert data['format'] == 'qcow2'
    assert data['virtual-size'] == 64 * MiB


def test_round_trips(env, qcow2):
    chain = [('qcow2', 'raw'), ('raw', 'vmdk'), ('vmdk', 'vhdx'),
             ('vhdx', 'vhd'), ('vpc', 'qcow2'), ('qcow2', 'raw')]
    src = qcow2
    for i, (src_fmt, dst_fmt) in enumerate(chain):
        result = convert(env, src, 'step%d.%s' % (i, dst_fmt), src_fmt,
                         dst_fmt)
        out = result['output']
        assert result['engine'] == 'qemu-img' and result['hardware'] is False
        # vpc rounds the size up to its CHS geometry (64 MiB + 16 KiB).
        assert 64 * MiB <= result['virtual_size'] < 65 * MiB
        assert result['cache_mode'] in ('none', 'writeback')
        assert os.stat(out).st_size == result['size']
        assert gen.compare(qcow2, 'qcow2', out, result['format'])
        src = out
    assert paths.stray_temp_files(env.images) == []
    # The last raw file is sparse: most of the 64 MiB are holes.
    assert os.stat(src).st_blocks * 512 < 16 * MiB


def test_vdi_input(env, qcow2):
    vdi = env.path('in.vdi')
    gen.run('qemu-img', 'convert', '-f', 'qcow2', '-O', 'vdi', qcow2, vdi)
    result = convert(env, vdi, 'out.raw', 'vdi', 'raw')
    assert gen.compare(qcow2, 'qcow2', result['output'], 'raw')


def test_raw_output_uses_unordered_writes_and_direct_io(env, qcow2):
    result = convert(env, qcow2, 'out.raw', 'qcow2', 'raw')
    # O_DIRECT works on the test filesystem (ext4 here); tmpfs would
    # legitimately give 'writeback'.
    fd = os.open(env.images, os.O_TMPFILE | os.O_RDWR)
    try:
        assert result['cache_mode'] == images.target_cache_mode(fd)
    finally:
        os.close(fd)
    assert result['cache_mode'] != 'writethrough'
    assert result['source_cache_mode'] == 'writeback'


def test_unordered_writes_for_raw_and_compressed_qcow2(
        env, qcow2, monkeypatch):
    unordered = []
    real = qemu_img.convert_cmd

    def spy(src, dst, src_fmt, dst_fmt, flags):
        unordered.append(flags.unordered)
        return real(src, dst, src_fmt, dst_fmt, flags)
    monkeypatch.setattr(images.qemu_img, 'convert_cmd', spy)
    convert(env, qcow2, 'o.raw', 'qcow2', 'raw')
    convert(env, qcow2, 'p.qcow2', 'qcow2', 'qcow2')
    c = convert(env, qcow2, 'c.qcow2', 'qcow2', 'qcow2', compress=True)
    assert unordered == [True, False, True]
    assert gen.compare(qcow2, 'qcow2', c['output'], 'qcow2')


def test_compressed_qcow2(env, qcow2):
    result = convert(env, qcow2, 'c.qcow2', 'qcow2', 'qcow2', compress=True)
    plain = convert(env, qcow2, 'p.qcow2', 'qcow2', 'qcow2')
    assert result['size'] < plain['size']
    assert gen.compare(qcow2, 'qcow2', result['output'], 'qcow2')


def test_target_is_zero_needs_a_device(env, qcow2):
    with pytest.raises(exception.InvalidRequest):
        convert(env, qcow2, 'o.raw', 'qcow2', 'raw', target_is_zero=True)
    assert os.listdir(env.images) == ['src.qcow2']


def test_existing_output_refused(env, qcow2):
    gen.write(env.path('taken.raw'), b'mine')
    with pytest.raises(exception.OutputExists):
        convert(env, qcow2, 'taken.raw', 'qcow2', 'raw')
    with open(env.path('taken.raw'), 'rb') as f:
        assert f.read() == b'mine'


def test_check_compare_measure(env, qcow2):
    report = images.check(env.ctx, qcow2, 'qcow2')
    assert report['clean'] and report['check-errors'] == 0
    raw = convert(env, qcow2, 'o.raw', 'qcow2', 'raw')['output']
    assert images.check(env.ctx, raw, 'raw')['supported'] is False
    assert images.compare(env.ctx, qcow2, 'qcow2', raw,
                          'raw') == {'identical': True}
    gen.qemu_write(raw, 'raw', (0x11, 0, 512))
    assert images.compare(env.ctx, qcow2, 'qcow2', raw,
                          'raw') == {'identical': False}
    measured = images.measure(env.ctx, qcow2, 'qcow2', 'qcow2')
    assert 8 * MiB <= measured['required'] < 64 * MiB


def test_progress_observed_while_running(env):
    src = gen.qemu_create(env.path('big.qcow2'), 'qcow2', '512M')
    gen.qemu_write(src, 'qcow2', (0x5a, 0, 256 * MiB))
    progress = Progress()
    seen = []
    running = threading.Event()

    def watch():
        while running.is_set():
            seen.append(progress.done)
            time.sleep(0.002)

    running.set()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = convert(env, src, 'big.qcow2.out', 'qcow2', 'vmdk',
                         progress=progress)
    finally:
        running.clear()
        watcher.join()
    total = 512 * MiB
    middle = sorted({d for d in seen if 0 < d < total})
    assert len(middle) >= 2, seen[-5:]
    assert seen == sorted(seen)  # never goes backwards
    assert progress.snapshot() == {'done': total, 'total': total}
    assert result['virtual_size'] == total


def test_cancel_leaves_nothing(env):
    src = env.path('random.raw')
    with open(src, 'wb') as f:
        for _ in range(128):
            f.write(os.urandom(MiB))
    progress = Progress()

    def cancel_when_started():
        deadline = time.monotonic() + 30
        while progress.done == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        progress.cancel()

    canceller = threading.Thread(target=cancel_when_started)
    canceller.start()
    started = time.monotonic()
    with pytest.raises(exception.Cancelled):
        # zlib on random data is slow: plenty of time to cancel.
        convert(env, src, 'out.qcow2', 'raw', 'qcow2', compress=True,
                progress=progress)
    canceller.join()
    assert time.monotonic() - started < 20
    assert os.listdir(env.images) == ['random.raw']
    assert paths.stray_temp_files(env.images) == []


def test_denied_command_never_runs(env):
    victim = env.path('created-by-qemu-img.raw')
    with pytest.raises(exception.CommandDenied):
        process.run(['qemu-img', 'create', '-f', 'raw', victim, '1M'],
                    env.policy)
    assert not os.path.exists(victim)


def test_convert_without_qemu_img_filters(env, qcow2):
    envfixture.copy_filters_without(env, 'qemu-img')
    with pytest.raises(exception.CommandDenied):
        convert(env, qcow2, 'out.raw', 'qcow2', 'raw')
    assert os.listdir(env.images) == ['src.qcow2']


def test_info_runs_under_limits(env, qcow2):
    # An address-space limit too small for qemu-img makes info fail: proof
    # that the limits from settings really reach the child.
    tight = env.with_settings(info_address_space=16 * MiB)
    with pytest.raises(exception.ImageInspectionError):
        images.info(tight.ctx, qcow2, 'qcow2')
    assert images.info(env.ctx, qcow2, 'qcow2')


# --- block devices (loop device) -------------------------------------------
@pytest.fixture
def loopdev(env):
    backing = os.path.join(env.root, 'disk.img')
    gen.write(backing, b'', 64 * MiB)
    with gen.loop_device(backing) as dev:
        # The shipped filters only list device-mapper devices; a deployment
        # using other devices adds its own line, like this one.
        with open(os.path.join(env.filters_dir, 'test-loop.filters'),
                  'w') as f:
            f.write('[Filters]\nloop: RegExpFilter, qemu-img, root, '
                    'qemu-img, convert, -p, -f, qcow2, -O, raw, -T, '
                    '(none|writeback), -t, (none|writeback), -W, -m, '
                    '[0-9]+, -S, 4k, -n, (--target-is-zero), '
                    '(%s/.+|/dev/fd/[0-9]+), (%s|/dev/fd/[0-9]+)\n'
                    % (env.images, dev))
        env.policy.reload()
        yield dev, backing


def test_convert_onto_zeroed_block_device(env, qcow2, loopdev):
    dev, backing = loopdev
    env = env.with_settings(allowed_block_devices=('/dev/loop*',))
    result = images.convert(env.ctx, Progress(), qcow2, dev, 'qcow2', 'raw',
                            Options(target_is_zero=True))
    assert result['output'] == dev and result['size'] == 64 * MiB
    assert gen.compare(qcow2, 'qcow2', backing, 'raw')
    assert os.listdir(env.images) == ['src.qcow2']


def test_version_is_cached_but_the_filters_are_asked_each_time(env):
    first = images.version(env.policy)
    assert first and first.startswith('qemu-img version')
    calls = []
    real_run = process.run

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real_run(*args, **kwargs)

    process.run, saved = counting, process.run
    try:
        assert images.version(env.policy) == first
        assert calls == []                  # no exec for a known binary
        envfixture.copy_filters_without(env, 'qemu-img')
        assert images.version(env.policy) is None
    finally:
        process.run = saved
