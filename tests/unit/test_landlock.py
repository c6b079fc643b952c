# SPDX-License-Identifier: Apache-2.0
"""engine.landlock on this kernel: a confined child opens nothing but its
inherited descriptors and the system's program directories.  Each case
runs in a child process (a Landlock domain cannot be left)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from accel_daemon.engine import landlock

pytestmark = pytest.mark.skipif(landlock.abi() < 1,
                                reason='this kernel has no Landlock')

# Runs in the child: confine to the descriptors named on the command line,
# then try each path; prints one line per try: "<what> ok" or "<what> EACCES".
_CHILD = r'''
import ctypes, errno, os, sys
from accel_daemon.engine import landlock
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(38, 1, 0, 0, 0)              # no_new_privs
fds = [int(a) for a in sys.argv[1].split(',') if a]
landlock.confine(fds)
for spec in sys.argv[2:]:
    mode, path = spec.split(':', 1)
    flags = {'r': os.O_RDONLY, 'w': os.O_WRONLY,
             'd': os.O_RDONLY | os.O_DIRECTORY}[mode]
    try:
        os.close(os.open(path, flags))
        print(spec, 'ok')
    except OSError as e:
        print(spec, errno.errorcode[e.errno])
'''


def confined(fds, *tries):
    proc = subprocess.run(
        [sys.executable, '-c', _CHILD, ','.join(map(str, fds))] + list(tries),
        pass_fds=fds, capture_output=True, text=True, check=True)
    return dict(line.rsplit(' ', 1) for line in proc.stdout.splitlines())


@pytest.fixture
def files(tmp_path):
    given = tmp_path / 'given.img'
    other = tmp_path / 'other.img'
    given.write_bytes(b'given')
    other.write_bytes(b'secret')
    return given, other


def test_only_the_inherited_file_can_be_reopened(files):
    given, other = files
    fd = os.open(given, os.O_RDONLY)
    try:
        seen = confined([fd], 'r:/dev/fd/%d' % fd, 'r:%s' % given,
                        'r:%s' % other, 'w:/dev/fd/%d' % fd)
    finally:
        os.close(fd)
    assert seen == {'r:/dev/fd/%d' % fd: 'ok',
                    # The same inode by its name: the rule is the inode's.
                    'r:%s' % given: 'ok',
                    'r:%s' % other: 'EACCES',
                    # Inherited read-only: no write through a reopen.
                    'w:/dev/fd/%d' % fd: 'EACCES'}


def test_an_output_descriptor_may_be_written(files):
    given, _ = files
    fd = os.open(given, os.O_RDWR)
    try:
        seen = confined([fd], 'w:/dev/fd/%d' % fd)
    finally:
        os.close(fd)
    assert seen == {'w:/dev/fd/%d' % fd: 'ok'}


def test_nothing_else_of_the_host(files):
    seen = confined([], 'r:/etc/passwd', 'r:/etc/hostname', 'd:/etc',
                    'd:/tmp', 'r:/proc/1/environ', 'w:/dev/null',
                    'r:/etc/shadow', 'd:/dev',
                    'r:/usr/bin/env', 'd:/usr/lib', 'r:/etc/ld.so.cache')
    assert seen == {'r:/etc/passwd': 'EACCES', 'r:/etc/hostname': 'EACCES',
                    'd:/etc': 'EACCES', 'd:/tmp': 'EACCES',
                    'r:/proc/1/environ': 'EACCES', 'w:/dev/null': 'ok',
                    'r:/etc/shadow': 'EACCES', 'd:/dev': 'EACCES',
                    # What a program needs to run.
                    'r:/usr/bin/env': 'ok', 'd:/usr/lib': 'ok',
                    'r:/etc/ld.so.cache': 'ok'}


def test_fd_rights_follow_the_open_mode(files):
    given, _ = files
    handled = landlock.handled_fs(landlock.abi())
    ro = os.open(given, os.O_RDONLY)
    rw = os.open(given, os.O_RDWR)
    try:
        assert landlock.fd_rights(ro, handled) == landlock.READ_FILE
        assert landlock.fd_rights(rw, handled) & landlock.WRITE_FILE
    finally:
        os.close(ro)
        os.close(rw)


def test_handled_rights_grow_with_the_abi():
    assert landlock.handled_fs(0) == 0
    assert landlock.handled_fs(1) & landlock.TRUNCATE == 0
    assert landlock.handled_fs(3) & landlock.TRUNCATE
    assert landlock.handled_fs(7) & landlock.IOCTL_DEV


def test_without_landlock_nothing_is_confined():
    with pytest.raises(OSError, match='Landlock is not available'):
        landlock.confine([], version=0)


def test_the_engine_confines_its_tools_unless_told_not_to(tmp_path):
    from accel_daemon.engine.context import Context
    from accel_daemon.engine.settings import Settings
    confined = Context.create(Settings(tool_extra_paths=('/dev/qat',)))
    assert confined.policy.sandbox == landlock.Sandbox(('/dev/qat',))
    assert Context.create(Settings(confine_tools=False)).policy.sandbox \
        is None


# Two confined children, as two tasks' tools: each in its own domain.
_PEER = r'''
import ctypes, errno, os, sys, time
from accel_daemon.engine import landlock
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(38, 1, 0, 0, 0)
landlock.confine([])
if sys.argv[1] == 'wait':
    print('ready', flush=True)
    time.sleep(30)
else:
    other = int(sys.argv[2])
    for what, act in (('signal', lambda: os.kill(other, 0)),
                      ('ptrace', lambda: os.close(os.open(
                          '/proc/%d/mem' % other, os.O_RDONLY)))):
        try:
            act()
            print(what, 'ok')
        except OSError as e:
            print(what, errno.errorcode[e.errno])
'''


@pytest.mark.skipif(landlock.abi() < 6, reason='signal scoping: ABI 6')
def test_one_tasks_tools_cannot_signal_or_trace_anothers():
    victim = subprocess.Popen([sys.executable, '-c', _PEER, 'wait'],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout.readline() == 'ready\n'
        seen = subprocess.run(
            [sys.executable, '-c', _PEER, 'attack', str(victim.pid)],
            capture_output=True, text=True, check=True).stdout.split('\n')
        # Same uid (this test's): only the Landlock domains stand between.
        assert seen[:2] == ['signal EPERM', 'ptrace EACCES'], seen
        # Unconfined, the same process could do both.
        os.kill(victim.pid, 0)
    finally:
        victim.kill()
        victim.wait()
