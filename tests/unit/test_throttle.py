# SPDX-License-Identifier: Apache-2.0
"""Bandwidth limits: the pacing math (fake clock), real pacing against the
wall clock (generous but meaningful tolerances), and cancel while paced."""

import io
import os
import threading
import time

import pytest

from accel_daemon.drivers import isal as isal_driver
from accel_daemon.engine import copy
from accel_daemon.engine.progress import Progress
from accel_daemon.engine.settings import Settings
from accel_daemon.engine import sparse
from accel_daemon.engine import throttle
from accel_daemon import exception
from accel_daemon import operations
from tests import fdutil

MiB = 1024 * 1024


class FakeClock:
    """A clock that only moves when the pacer sleeps (plus ``late``)."""

    def __init__(self, late=0.0):
        self.now = 100.0
        self.late = late
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds + self.late


def fake_pacer(bps, clock, **kw):
    return throttle.Pacer(bps, clock=clock, sleep=clock.sleep, **kw)


# --- the math ---------------------------------------------------------------
def test_each_step_waits_for_its_bytes():
    clock = FakeClock()
    pacer = fake_pacer(1000, clock)
    for _ in range(4):
        pacer.pace(250)
    assert clock.sleeps == pytest.approx([0.25] * 4)
    assert clock.now - 100.0 == pytest.approx(1.0)
    assert pacer.slept == pytest.approx(1.0)


def test_no_sleep_reaches_past_the_deadline():
    clock = FakeClock()
    progress = Progress(deadline=101.0)         # one second from now
    pacer = fake_pacer(1000, clock, progress=progress)
    pacer.pace(500)
    pacer.pace(400)
    with pytest.raises(exception.RateLimitTooLow) as e:
        pacer.pace(200)                         # due at 101.1
    # Slept for what fits, not towards a deadline it cannot make.
    assert clock.sleeps == pytest.approx([0.5, 0.4])
    assert e.value.message.startswith('bps_limit 1000 is too low: ')


def test_late_wake_ups_do_not_add_up():
    # Every sleep overshoots by 20 ms: the absolute schedule takes it back
    # from the next sleep, so 100 steps still take 10 s (+ one overshoot),
    # not 12 s.
    clock = FakeClock(late=0.02)
    pacer = fake_pacer(1000, clock)
    for _ in range(100):
        pacer.pace(100)
    assert clock.now - 100.0 == pytest.approx(10.0 + 0.02, abs=1e-6)


def test_work_time_counts_towards_the_schedule():
    # Steps that take time themselves (reading, compressing) sleep only
    # for the rest.
    clock = FakeClock()
    pacer = fake_pacer(1000, clock)
    for _ in range(10):
        clock.now += 0.04          # 40 ms of work per 100-byte step
        pacer.pace(100)
    assert clock.sleeps == pytest.approx([0.1] + [0.06] * 9)
    assert clock.now - 100.0 == pytest.approx(0.04 + 1.0)


def test_a_stalled_flow_catches_up_by_one_burst_only():
    clock = FakeClock()
    pacer = fake_pacer(1000, clock, burst=0.25)
    pacer.pace(1000)                       # 1 s
    clock.now += 10.0                      # a 10 s stall (slow disk)
    pacer.pace(250)                        # within the burst: no sleep
    assert clock.sleeps == pytest.approx([1.0])
    pacer.pace(1000)                       # back on the limit
    assert clock.sleeps == pytest.approx([1.0, 1.0])


def test_a_flow_slower_than_the_limit_never_sleeps():
    clock = FakeClock()
    pacer = fake_pacer(1000, clock)
    pacer.pace(100)
    for _ in range(20):
        clock.now += 0.5                  # 100 bytes per 0.5 s: 200 B/s
        pacer.pace(100)
    assert clock.sleeps == pytest.approx([0.1])


def test_nothing_counted_nothing_slept():
    clock = FakeClock()
    pacer = fake_pacer(10, clock)
    pacer.pace(0)
    pacer.pace(-5)
    assert clock.sleeps == []


@pytest.mark.parametrize('bps', [0, -1, True])
def test_limit_is_at_least_one_byte_per_second(bps):
    with pytest.raises(ValueError):
        throttle.Pacer(bps)


def test_no_limit_no_pacer():
    assert throttle.pacer(None) is None
    assert throttle.pacer(0) is None
    assert throttle.pacer(5).bps == 5


@pytest.mark.parametrize('bps, expected', [
    (None, 64 * MiB),
    (32 * MiB, int(3.2 * MiB) - int(3.2 * MiB) % 4096),
    (1, throttle.MIN_STEP),
    (10 ** 12, 64 * MiB),
])
def test_step_is_a_tenth_of_a_second(bps, expected):
    size = throttle.step(bps, 64 * MiB)
    assert size == expected
    assert size % 4096 == 0


# --- cancel ---------------------------------------------------------------
def cancel_after(progress, seconds):
    timer = threading.Timer(seconds, progress.cancel)
    timer.start()
    return timer


def test_cancel_ends_a_long_sleep_at_once():
    progress = Progress()
    pacer = throttle.Pacer(1, progress)   # 1 MiB at 1 B/s: 12 days
    cancel_after(progress, 0.2)
    started = time.monotonic()
    with pytest.raises(exception.Cancelled):
        pacer.pace(MiB)
    assert time.monotonic() - started < 1.0


def test_cancelled_before_the_sleep():
    progress = Progress()
    progress.cancel()
    with pytest.raises(exception.Cancelled):
        throttle.Pacer(1, progress).pace(100)


# --- real pacing ------------------------------------------------------------
def random_file(path, size):
    with open(path, 'wb') as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    return str(path)


def timed(func, *args, **kwargs):
    started = time.monotonic()
    result = func(*args, **kwargs)
    return time.monotonic() - started, result


def test_copy_64mib_at_32mib_per_second_takes_2s(tmp_path):
    src = random_file(tmp_path / 'src', 64 * MiB)
    src_fd = os.open(src, os.O_RDONLY)
    dst_fd = os.open(tmp_path / 'dst', os.O_RDWR | os.O_CREAT, 0o600)
    try:
        progress = Progress()
        wall, size = timed(copy.copy_fd, src_fd, dst_fd, progress,
                           bps_limit=32 * MiB)
    finally:
        os.close(src_fd)
        os.close(dst_fd)
    assert size == 64 * MiB and progress.done == 64 * MiB
    assert 2.0 * 0.85 <= wall <= 2.0 * 1.15, wall
    with open(src, 'rb') as a, open(tmp_path / 'dst', 'rb') as b:
        assert a.read() == b.read()


def test_copy_holes_are_not_paced(tmp_path):
    # 1 MiB of data in 1 GiB: at 1 MiB/s the copy takes ~1 s, not 17 min.
    src = tmp_path / 'sparse'
    with open(src, 'wb') as f:
        f.truncate(1024 * MiB)
        f.seek(512 * MiB)
        f.write(os.urandom(MiB))
    src_fd = os.open(src, os.O_RDONLY)
    dst_fd = os.open(tmp_path / 'dst', os.O_RDWR | os.O_CREAT, 0o600)
    try:
        wall, _ = timed(copy.copy_fd, src_fd, dst_fd, Progress(),
                        bps_limit=MiB)
    finally:
        os.close(src_fd)
        os.close(dst_fd)
    assert 0.85 <= wall <= 1.5, wall


def test_copy_cancel_during_pacing_is_prompt(tmp_path):
    src = random_file(tmp_path / 'src', 16 * MiB)
    src_fd = os.open(src, os.O_RDONLY)
    dst_fd = os.open(tmp_path / 'dst', os.O_RDWR | os.O_CREAT, 0o600)
    progress = Progress()
    cancel_after(progress, 0.3)
    started = time.monotonic()
    try:
        with pytest.raises(exception.Cancelled):
            copy.copy_fd(src_fd, dst_fd, progress, bps_limit=MiB)
    finally:
        os.close(src_fd)
        os.close(dst_fd)
    assert time.monotonic() - started < 0.8


def test_copy_capped_paces_the_stream(tmp_path):
    data = os.urandom(16 * MiB)
    fd = os.open(tmp_path / 'out', os.O_RDWR | os.O_CREAT, 0o600)
    try:
        wall, total = timed(sparse.copy_capped, io.BytesIO(data), fd,
                            sparse.Flow(32 * MiB,
                                        pacer=throttle.Pacer(16 * MiB)))
    finally:
        os.close(fd)
    assert total == 16 * MiB
    assert 0.85 <= wall <= 1.15, wall
    assert (tmp_path / 'out').read_bytes() == data


def test_copy_capped_cancel_while_paced(tmp_path):
    progress = Progress()
    cancel_after(progress, 0.2)
    fd = os.open(tmp_path / 'out', os.O_RDWR | os.O_CREAT, 0o600)
    started = time.monotonic()
    try:
        with pytest.raises(exception.Cancelled):
            sparse.copy_capped(io.BytesIO(bytes(64 * MiB)), fd, sparse.Flow(
                128 * MiB, progress=progress,
                pacer=throttle.Pacer(MiB, progress)))
    finally:
        os.close(fd)
    assert time.monotonic() - started < 1.5   # one 1 MiB block: 1 s max


def isal(chunk=MiB):
    return isal_driver.IsalCompressor(
        Settings(chunk_size=chunk, compression_threads=2), None)


def test_isal_compress_paces_its_reads(tmp_path):
    src = random_file(tmp_path / 'src', 32 * MiB)
    dst = tmp_path / 'dst.gz'
    dst.touch()
    wall, stats = timed(fdutil.compress, isal(), src, str(dst),
                        bps_limit=16 * MiB)
    assert stats.bytes_in == 32 * MiB
    assert 2.0 * 0.85 <= wall <= 2.0 * 1.15, wall


def test_isal_holes_are_not_paced(tmp_path):
    src = tmp_path / 'sparse'
    with open(src, 'wb') as f:
        f.truncate(256 * MiB)
        f.write(os.urandom(MiB))
    dst = tmp_path / 'dst.gz'
    dst.touch()
    wall, _ = timed(fdutil.compress, isal(), str(src), str(dst),
                    bps_limit=4 * MiB)
    assert wall < 1.0, wall      # 1 MiB of data: 0.25 s


def test_isal_cancel_while_paced(tmp_path):
    src = random_file(tmp_path / 'src', 32 * MiB)
    dst = tmp_path / 'dst.gz'
    dst.touch()
    progress = Progress()
    cancel_after(progress, 0.3)
    started = time.monotonic()
    with pytest.raises(exception.Cancelled):
        fdutil.compress(isal(), src, str(dst), progress, bps_limit=MiB)
    assert time.monotonic() - started < 1.0


# --- the operation table ----------------------------------------------------
PACED = ('compress', 'decompress', 'convert', 'copy', 'upload', 'download')


@pytest.mark.parametrize('name', PACED)
def test_every_moving_operation_takes_bps_limit(name):
    field = operations.OPERATIONS[name].fields['bps_limit']
    assert not field.required and field.default is None


@pytest.mark.parametrize('name', PACED)
@pytest.mark.parametrize('value', [0, -1, True, 1.5, '1M', 2 ** 62 + 1])
def test_bps_limit_is_a_positive_integer(name, value):
    op = operations.OPERATIONS[name]
    args = {n: '/a' if f.role else 'raw' for n, f in op.fields.items()
            if f.required}
    op.validate(dict(args, bps_limit=1))
    with pytest.raises(exception.InvalidRequest, match='bps_limit'):
        op.validate(dict(args, bps_limit=value))


def test_sparse_on_convert_download_and_stream_in_only():
    for name, op in operations.OPERATIONS.items():
        assert ('sparse' in op.fields) == (
            name in ('convert', 'download', 'stream_in'))
    args = {'src': '/a', 'dst': '/b', 'src_format': 'raw',
            'dst_format': 'raw'}
    assert operations.OPERATIONS['convert'].bind(args)['sparse'] is True
    bound = operations.OPERATIONS['convert'].bind(dict(args, sparse=False))
    assert bound['sparse'] is False
    with pytest.raises(exception.InvalidRequest, match='sparse'):
        operations.OPERATIONS['convert'].validate(dict(args, sparse=0))
