# SPDX-License-Identifier: Apache-2.0
"""Faults: the privsep helper or the daemon killed mid-task, a full file
system, commands and tasks that run past their timeouts, a broker restart.

After each: the task ends with a typed error (the daemon knows what
happened), nothing is left in the allowed directory (no output, no temp
file), no tool the daemon started keeps running, and the daemon serves.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from accel_daemon import exception
from tests.functional.reliability import common

pytestmark = common.marks(300)

MiB = common.MiB


daemon = common.module_daemon('faults')


def listing(directory):
    return sorted(os.listdir(directory))


def tools_of(daemon) -> dict:
    """Live processes below the privsep helper that exec'ed a tool."""
    found = {}
    for helper in common.helper_pids(daemon):
        for pid, st in common.descendants(helper).items():
            argv = common.cmdline(pid)
            name = os.path.basename(argv[0]) if argv else b''
            if name and not name.startswith(b'python') and \
                    b'privsep-helper' not in b' '.join(argv):
                found[pid] = st
    return found


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, 'timed out waiting for ' + what
        time.sleep(0.05)


def wait_running(handle, timeout=30.0):
    wait_for(lambda: handle.status()['state'] != 'queued', timeout,
             'the task to start')
    assert handle.state == 'running', handle.task


def small_copy_works(daemon):
    src = os.path.join(daemon.images, common.unique('alive') + '.raw')
    with open(src, 'wb') as f:
        f.write(b'still serving\n' * 4096)
    dst = src + '.copy'
    with daemon.client() as c:
        out = common.run_task(lambda: c.copy(src, dst), 60)
    assert out.ok, out
    assert common.sha256_file(src) == common.sha256_file(dst)
    os.unlink(src)
    os.unlink(dst)


def settled(directory, seconds=10.0):
    """Wait until the free space of ``directory``'s file system stops
    growing (freed blocks of killed writers come back)."""
    deadline = time.monotonic() + seconds
    last = -1
    while time.monotonic() < deadline:
        st = os.statvfs(directory)
        free = st.f_bavail * st.f_frsize
        if free == last:
            return
        last = free
        time.sleep(0.3)


def big_random(directory, name, size):
    return common.random_file(os.path.join(directory, name), size)


# --- the privsep helper killed mid-task -----
def start_long(client, daemon, kind, src):
    if kind == 'compress':
        return client.compress(src, src + '.gz', driver='gzip', level=9)
    return client.convert(src, src + '.qcow2', 'raw', 'qcow2', compress=True)


def remove_new(directory, before):
    for name in set(listing(directory)) - set(before):
        os.unlink(os.path.join(directory, name))


@pytest.mark.parametrize('kind', ['compress', 'convert'])
def test_privsep_helper_killed_mid_task(daemon, kind):
    src = big_random(daemon.images, 'long-%s.raw' % kind, 160 * MiB)
    before = listing(daemon.images)
    problems = []
    try:
        with daemon.client() as client:
            handle = start_long(client, daemon, kind, src)
            wait_running(handle)
            tools = wait_for(lambda: tools_of(daemon), 20, 'a tool to run')
            (helper,) = common.helper_pids(daemon)
            time.sleep(0.3)
            os.kill(helper, signal.SIGKILL)
            out = common.run_task(lambda: handle, 60)
        print('\nhelper killed during %s: %r; tools were %s'
              % (kind, out, sorted(tools)))
        if out.ok or out.error_type in common.UNTYPED:
            problems.append('not a typed failure: %r' % out)
        # The tools the helper started die with it.
        deadline = time.monotonic() + 10
        while common.still_alive(tools) and time.monotonic() < deadline:
            time.sleep(0.1)
        if common.still_alive(tools):
            problems.append('orphan tools: %s' % common.still_alive(tools))
        left = common.wait_no_strays(daemon.images)
        if left:
            problems.append('temp files left: %s' % left)
        small_copy_works(daemon)
        daemon.stop()
        daemon.start()
        if common.strays(daemon.images):
            problems.append('temp files left after a restart: %s'
                            % common.strays(daemon.images))
        if listing(daemon.images) != before:
            problems.append('files left after a restart: %s'
                            % sorted(set(listing(daemon.images))
                                     - set(before)))
        small_copy_works(daemon)
    finally:
        remove_new(daemon.images, before)
        os.unlink(src)
    assert not problems


# --- the daemon killed mid-task -----
@pytest.mark.parametrize('kind', ['compress', 'convert'])
def test_daemon_killed_mid_task_then_restarted(daemon, kind):
    src = big_random(daemon.images, 'crash-%s.raw' % kind, 160 * MiB)
    before = listing(daemon.images)
    try:
        crash_and_check(daemon, kind, src, before)
    finally:
        remove_new(daemon.images, before)
        os.unlink(src)


def crash_and_check(daemon, kind, src, before):
    with daemon.client() as client:
        handle = start_long(client, daemon, kind, src)
        wait_running(handle)
        tools = wait_for(lambda: tools_of(daemon), 20, 'a tool to run')
        time.sleep(0.3)
    everything = common.family(daemon)
    daemon.crash()
    wait_for(lambda: not common.still_alive(everything), 10,
             'the daemon\'s processes to go: %s'
             % common.still_alive(everything))
    daemon.start()
    with daemon.client() as client:
        task = client.task(handle.id)
        assert task.state == 'failed', task.task
        assert task.task['error']['type'] == 'TaskInterrupted'
        with pytest.raises(exception.TaskInterrupted):
            task.wait(5)
    assert not common.still_alive(tools)
    assert common.wait_no_strays(daemon.images) == []
    assert listing(daemon.images) == before
    small_copy_works(daemon)


# --- ENOSPC: a 32 MiB ext4 as the allowed directory -----
@pytest.fixture(scope='module')
def full_daemon():
    if shutil.which('mkfs.ext4') is None or shutil.which('mount') is None:
        pytest.skip('needs mkfs.ext4 and mount')
    root = tempfile.mkdtemp(prefix='accel-enospc-', dir='/tmp')
    image = os.path.join(root, 'fs.img')
    with open(image, 'wb') as f:
        f.truncate(32 * MiB)
    subprocess.run(['mkfs.ext4', '-q', '-F', image], check=True)
    mounted = []

    def mount(d):
        run = subprocess.run(['mount', '-o', 'loop', image, d.images],
                             capture_output=True, text=True)
        if run.returncode != 0:
            pytest.skip('cannot loop-mount: %s' % run.stderr)
        mounted.append(d.images)
    d = None
    try:
        d = common.start_daemon(os.path.join(root, 'd'), before_start=mount)
        yield d
    finally:
        if d is not None:
            common.stop_daemon(d)
        for m in mounted:
            subprocess.run(['umount', m], check=False)
        shutil.rmtree(root, ignore_errors=True)


def compressible(path, size):
    """Non-zero data that gzip shrinks ~1000x (a repeated random block)."""
    block = os.urandom(4096)
    with open(path, 'wb') as f:
        for _ in range(size // MiB):
            f.write(block * 256)
    return path


ENOSPC_CASES = {
    'compress': ('raw', lambda c, s, d: c.compress(s, d)),
    'copy': ('raw', lambda c, s, d: c.copy(s, d)),
    'convert': ('raw', lambda c, s, d: c.convert(s, d, 'raw', 'qcow2')),
    'upload': ('raw', lambda c, s, d: c.upload(s, d, 'raw', 'qcow2')),
    'decompress': ('gz', lambda c, s, d: c.decompress(
        s, d, max_bytes=256 * MiB)),
    'download': ('gz', lambda c, s, d: c.download(
        s, d, 'raw', 'raw', max_bytes=256 * MiB)),
}


@pytest.mark.parametrize('op', sorted(ENOSPC_CASES))
def test_no_space_left(full_daemon, op):
    images = full_daemon.images
    kind, call = ENOSPC_CASES[op]
    if kind == 'raw':
        src = big_random(images, 'fill.raw', 14 * MiB)
    else:
        plain = compressible(os.path.join(full_daemon.root, 'plain'),
                             64 * MiB)
        with open(plain, 'rb') as f:
            src = os.path.join(images, 'fill.gz')
            with open(src, 'wb') as g:
                g.write(gzip.compress(f.read(), 1))
        os.unlink(plain)
    before = listing(images)
    dst = os.path.join(images, 'fill.out')
    with full_daemon.client() as client:
        out = common.run_task(lambda: call(client, src, dst), 120)
    print('\nENOSPC %s: %r' % (op, out))
    try:
        assert not out.ok
        assert out.error_type == 'NoSpace', out
        assert not os.path.lexists(dst)
        assert common.wait_no_strays(images) == []
        assert listing(images) == before
    finally:
        for name in listing(images):
            if name != 'lost+found':
                os.unlink(os.path.join(images, name))
        # A qemu-img stopped before the disk was full may still have
        # direct I/O in flight that holds its unnamed output a moment after
        # it was reaped: the next case starts with the space back.
        settled(images)
    small_copy_works(full_daemon)


# --- timeouts -----
@pytest.fixture(scope='module')
def slow_input(tmp_path_factory):
    """Random data that gzip -9 needs several seconds for (~40 MB/s)."""
    path = os.path.join(str(tmp_path_factory.mktemp('slow')), 'slow.bin')
    return common.random_file(path, 192 * MiB)


def timeout_daemon(tmp_path_factory, extra):
    return common.start_daemon(str(tmp_path_factory.mktemp('timeout')),
                               extra=extra)


@pytest.mark.parametrize('option,error', [
    ('[accel_daemon]\ncommand_timeout = 2\n', 'CommandTimeout'),
    ('task_timeout = 2\n', 'TaskTimeout'),      # appended to [tasks]
])
def test_timeout(tmp_path_factory, slow_input, option, error):
    d = timeout_daemon(tmp_path_factory, option)
    try:
        src = os.path.join(d.images, 'slow.bin')
        os.link(slow_input, src)
        before = listing(d.images)
        with d.client() as client:
            started = time.monotonic()
            out = common.run_task(lambda: client.compress(
                src, src + '.gz', driver='gzip', level=9), 60)
            elapsed = time.monotonic() - started
        print('\n%s: %r after %.1fs' % (option.strip(), out, elapsed))
        assert not out.ok, 'ran to the end in %.1fs' % elapsed
        assert out.error_type == error, out
        assert elapsed < 2 + 3
        assert tools_of(d) == {}
        assert common.wait_no_strays(d.images) == []
        assert listing(d.images) == before
        small_copy_works(d)
    finally:
        common.stop_daemon(d)


# --- the broker restarted mid-task (last: it disturbs every broker user) -----
@pytest.mark.last
@pytest.mark.broker_restart
@pytest.mark.timeout(240)
def test_broker_restart_mid_task_loses_nothing(daemon):
    if shutil.which('rabbitmqctl') is None:
        pytest.skip('needs rabbitmqctl')
    src = big_random(daemon.images, 'broker.raw', 96 * MiB)
    dst = src + '.gz'
    with daemon.client() as client:
        done = client.copy(src, src + '.copy')
        done_result = done.wait(60)
        handle = client.compress(src, dst, driver='gzip', level=6)
        wait_running(handle)
        task_id = handle.id
    subprocess.run(['rabbitmqctl', 'stop_app'], check=True,
                   capture_output=True, timeout=60)
    try:
        time.sleep(1)
    finally:
        subprocess.run(['rabbitmqctl', 'start_app'], check=True,
                       capture_output=True, timeout=120)
    deadline = time.monotonic() + 120
    result = None
    while result is None:
        assert time.monotonic() < deadline, daemon.log_tail()
        try:
            with daemon.client() as client:
                task = client.task(task_id)
                result = task.wait(timeout=30)
                assert client.task(done.id).result == done_result
        except (exception.ServiceUnavailable, exception.TaskWaitTimeout):
            time.sleep(1)
    assert result['output'] == dst
    with gzip.open(dst, 'rb') as g, open(src, 'rb') as f:
        assert common.sha256_bytes(g.read()) == \
            common.sha256_bytes(f.read())
    small_copy_works(daemon)
