# SPDX-License-Identifier: Apache-2.0
"""The state directory lock, with real files, real flock and real
processes (a second open file description stands in for a second daemon
where a process is not needed)."""

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from accel_daemon.manager import lock

# A second holder in its own process: prints "locked" once it holds the
# lock, then sleeps until killed; or prints the refusal and exits 3.
HOLDER = textwrap.dedent('''
    import sys, time
    from accel_daemon.manager import lock
    try:
        held = lock.StateLock.acquire(
            sys.argv[1], lock.holder_info(server='child-server'))
    except lock.StateDirLocked as e:
        print(e, flush=True)
        sys.exit(3)
    print('locked', flush=True)
    time.sleep(60)
''')


def spawn_holder(state_dir):
    return subprocess.Popen([sys.executable, '-c', HOLDER, str(state_dir)],
                            stdout=subprocess.PIPE, text=True)


def lock_path(state_dir):
    return os.path.join(str(state_dir), lock.LOCK_NAME)


def test_second_open_file_description_is_refused(tmp_path):
    held = lock.StateLock.acquire(str(tmp_path),
                                  lock.holder_info(server='srv-a'))
    with pytest.raises(lock.StateDirLocked) as err:
        lock.StateLock.acquire(str(tmp_path))
    assert err.value.holder['pid'] == os.getpid()
    assert 'pid %d, server name srv-a' % os.getpid() in str(err.value)
    assert str(tmp_path) in str(err.value)
    held.release()
    assert not held.held
    lock.StateLock.acquire(str(tmp_path)).release()


def test_another_process_is_refused_and_told_who_holds_it(tmp_path):
    held = lock.StateLock.acquire(str(tmp_path),
                                  lock.holder_info(server='srv-b'))
    child = spawn_holder(tmp_path)
    out, _ = child.communicate(timeout=30)
    held.release()
    assert child.returncode == 3
    assert 'pid %d, server name srv-b, host ' % os.getpid() in out


def test_lock_of_a_killed_holder_does_not_block(tmp_path):
    child = spawn_holder(tmp_path)
    try:
        assert child.stdout.readline().strip() == 'locked'
        with pytest.raises(lock.StateDirLocked) as err:
            lock.StateLock.acquire(str(tmp_path))
        assert err.value.holder['pid'] == child.pid
        assert err.value.holder['server'] == 'child-server'
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    # The file it wrote is still there, naming the dead process...
    with open(lock_path(tmp_path)) as f:
        assert json.load(f)['pid'] == child.pid
    # ...and does not stop the next holder, at once.
    started = time.monotonic()
    held = lock.StateLock.acquire(str(tmp_path))
    assert time.monotonic() - started < 1
    with open(lock_path(tmp_path)) as f:
        assert json.load(f)['pid'] == os.getpid()
    held.release()


def test_garbage_in_a_stale_lock_file_is_overwritten(tmp_path):
    with open(lock_path(tmp_path), 'w') as f:
        f.write('not json at all\n' * 10)
    held = lock.StateLock.acquire(str(tmp_path), {'pid': 1234})
    with open(lock_path(tmp_path)) as f:
        assert f.read() == '{"pid": 1234}\n'
    held.release()


def test_lock_file_is_private(tmp_path):
    path = lock_path(tmp_path)
    with open(path, 'w'):
        pass
    os.chmod(path, 0o644)
    held = lock.StateLock.acquire(str(tmp_path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    held.release()


def test_children_do_not_inherit_the_lock(tmp_path):
    held = lock.StateLock.acquire(str(tmp_path))
    # close_fds=False: the descriptor is close-on-exec (O_CLOEXEC, and
    # Python's non-inheritable default), so a child that outlives a
    # release -- the privsep helper, a tool -- does not keep the lock.
    child = subprocess.Popen(['sleep', '30'], close_fds=False)
    try:
        held.release()
        lock.StateLock.acquire(str(tmp_path)).release()
    finally:
        child.kill()
        child.wait(10)


def test_symlink_in_place_of_the_lock_file_is_refused(tmp_path):
    target = tmp_path / 'target'
    target.write_text('precious\n')
    os.symlink(str(target), lock_path(tmp_path))
    with pytest.raises(OSError) as err:
        lock.StateLock.acquire(str(tmp_path))
    assert 'symbolic link' in str(err.value)
    assert target.read_text() == 'precious\n'


def test_fifo_in_place_of_the_lock_file_is_refused(tmp_path):
    os.mkfifo(lock_path(tmp_path))
    with pytest.raises(OSError) as err:
        lock.StateLock.acquire(str(tmp_path))
    assert 'not a regular file' in str(err.value)


def test_describe_what_the_holder_wrote():
    assert lock.describe({'pid': 7, 'server': 's', 'host': 'h'}) == \
        'pid 7, server name s, host h'
    assert lock.describe({'pid': 7}) == 'pid 7'
    assert lock.describe({}) == 'holder unknown'
