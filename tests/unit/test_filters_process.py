# SPDX-License-Identifier: Apache-2.0
import os
import threading
import time

import pytest

from accel_daemon.engine import filters
from accel_daemon.engine import process
from accel_daemon.engine.progress import Phase
from accel_daemon.engine.progress import Progress
from accel_daemon import exception

FILTERS = """
[Filters]
# only 'echo hello <word>' and 'sleep <n>' and 'sh -c' never
echo: RegExpFilter, echo, root, echo, hello, [a-z]+
sleep: RegExpFilter, sleep, root, sleep, [0-9]+
cat: RegExpFilter, cat, root, cat
helper: CommandFilter, privsep-helper, root
sh-ignored: RegExpFilter, /usr/bin/privsep-helper, root, privsep-helper, .*
"""


@pytest.fixture
def policy(tmp_path):
    d = tmp_path / 'filters'
    d.mkdir()
    (d / 'test.filters').write_text(FILTERS)
    (d / '.hidden').write_text('[Filters]\nall: CommandFilter, rm, root\n')
    return filters.CommandPolicy([str(d)], ['/usr/bin', '/bin'])


def test_allowed_command_is_resolved(policy):
    argv = policy.check(['echo', 'hello', 'world'])
    assert os.path.isabs(argv[0]) and argv[1:] == ['hello', 'world']


@pytest.mark.parametrize('argv', [
    ['echo', 'hello', 'WORLD'],          # argument pattern
    ['echo', 'hello', 'a', 'b'],         # argument count
    ['rm', '-rf', '/'],          # no filter (the hidden file is ignored)
    ['privsep-helper', '--config-file', '/x'],   # never allowed in-process
])
def test_denied(policy, argv):
    assert not policy.allows(argv)
    with pytest.raises(exception.CommandDenied):
        policy.check(argv)


def test_privsep_helper_lines_dropped(policy):
    assert len(policy) == 3


def test_reload_picks_up_edits(policy, tmp_path):
    assert policy.allows(['sleep', '1'])
    f = tmp_path / 'filters' / 'test.filters'
    f.write_text(FILTERS.replace('sleep: ', '# sleep: '))
    policy.reload()
    assert not policy.allows(['sleep', '1'])


def test_denied_command_never_runs(policy, tmp_path):
    marker = tmp_path / 'ran'
    with pytest.raises(exception.CommandDenied):
        process.run(['touch', str(marker)], policy)
    assert not marker.exists()


def test_run_captures_output_and_cpu(policy):
    res = process.run(['echo', 'hello', 'there'], policy)
    assert res.stdout == b'hello there\n'
    assert res.returncode == 0
    assert res.cpu_seconds >= 0.0 and res.wall_seconds > 0.0


def test_run_failure_is_typed(policy):
    with pytest.raises(exception.ProcessFailed) as e:
        process.run(['cat'], policy, stdin=os.open('/', os.O_RDONLY))
    assert e.value.fields['exit_code'] == 1


def test_cancel_kills_child(policy):
    progress = Progress()
    threading.Timer(0.2, progress.cancel).start()
    started = time.monotonic()
    with pytest.raises(exception.Cancelled):
        process.run(['sleep', '30'], policy, progress=progress)
    assert time.monotonic() - started < 5


def test_limits_apply_in_child(tmp_path):
    d = tmp_path / 'f'
    d.mkdir()
    (d / 'x.filters').write_text(
        '[Filters]\nsh: RegExpFilter, sh, root, sh, -c, ulimit -t\n')
    pol = filters.CommandPolicy([str(d)], ['/usr/bin', '/bin'])
    res = process.run(['sh', '-c', 'ulimit -t'], pol,
                      limits=process.Limits(cpu_seconds=7))
    assert res.stdout.strip() == b'7'


def test_on_output_streams(policy):
    seen = []
    process.run(['echo', 'hello', 'stream'], policy, on_output=seen.append)
    assert b''.join(seen) == b'hello stream\n'


def test_progress_fraction_and_snapshot():
    p = Progress(total=200)
    p.add(50)
    assert p.fraction == 0.25
    p.set_fraction(2.0)
    assert p.snapshot() == {'done': 200, 'total': 200}
    p.cancel()
    with pytest.raises(exception.Cancelled):
        p.check()


def test_phase_maps_into_parent_and_shares_cancel():
    parent = Progress(total=300)
    first = Phase(parent, 0, 100)
    first.set_total(50)          # the step learns its own size
    first.add(25)
    assert parent.done == 50
    second = Phase(parent, 100, 200)
    second.set_total(10)
    second.set_fraction(0.5)
    assert parent.done == 200
    parent.cancel()
    with pytest.raises(exception.Cancelled):
        second.check()


# --- wall-clock timeouts --------------------------------------------------
# Real commands that hang; each check looks at /proc for what is left.
HANGING = """
[Filters]
sleep: RegExpFilter, sleep, root, sleep, [0-9.]+
cat: RegExpFilter, cat, root, cat
sh: RegExpFilter, sh, root, sh, -c, .*
echo: RegExpFilter, echo, root, echo, [a-z]+
"""


def _policy(tmp_path, timeout=None):
    d = tmp_path / 'hanging'
    d.mkdir(exist_ok=True)
    (d / 'hang.filters').write_text(HANGING)
    return filters.CommandPolicy([str(d)], ['/usr/bin', '/bin'],
                                 timeout=timeout)


def _stat(pid):
    """(state, ppid, pgrp) of a process, None once it is gone."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1]), int(fields[2])


def _all_pids():
    return [int(p) for p in os.listdir('/proc') if p.isdigit()]


class Children:
    """Records the children this process starts, by sampling /proc from a
    thread while run() blocks; the pid of each is its process group."""

    def __init__(self):
        self.pids = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self):
        me = os.getpid()
        while not self._stop.wait(0.02):
            for pid in _all_pids():
                st = _stat(pid)
                if st and st[1] == me and st[2] == pid:
                    self.pids.add(pid)


def _live_members(pgid):
    """Processes of the group that are still alive (zombies are dead; in a
    container without a reaping init, orphans stay zombies forever)."""
    return [pid for pid in _all_pids()
            if (st := _stat(pid)) and st[2] == pgid and st[0] != 'Z']


def _assert_group_gone(pgid):
    # The child run() started was reaped: its group is empty.
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


@pytest.mark.parametrize('with_progress', [False, True],
                         ids=['no-progress', 'progress'])
@pytest.mark.parametrize('output', ['pipe', 'file', 'nothing'])
def test_timeout_kills_hung_command(tmp_path, with_progress, output):
    policy = _policy(tmp_path)
    kw = {'progress': Progress() if with_progress else None}
    stdin_r, stdin_w = os.pipe()     # a pipe nobody writes
    out_fd = None
    try:
        if output == 'pipe':         # stdout captured, nothing ever comes
            argv = ['sleep', '30']
        elif output == 'file':
            out_fd = os.open(tmp_path / 'out', os.O_WRONLY | os.O_CREAT)
            argv, kw['stdout'] = ['sleep', '30'], out_fd
        else:                        # blocked reading, writes nothing
            out_fd = os.open(os.devnull, os.O_WRONLY)
            argv, kw['stdout'], kw['stdin'] = ['cat'], out_fd, stdin_r
        started = time.monotonic()
        with Children() as children:
            with pytest.raises(exception.CommandTimeout) as e:
                process.run(argv, policy, timeout=0.5, **kw)
        elapsed = time.monotonic() - started
    finally:
        for fd in (stdin_r, stdin_w, out_fd):
            if fd is not None:
                os.close(fd)
    assert 0.5 <= elapsed < 1.5
    assert e.value.fields['timeout'] == 0.5
    assert e.value.fields['command'].split()[0].endswith(argv[0])
    assert len(children.pids) == 1
    _assert_group_gone(children.pids.pop())


def test_timeout_kills_the_whole_group(tmp_path):
    # sh exits at once; the background sleep keeps the output pipe open, so
    # the command is not finished: the deadline covers it too, and the
    # whole group is killed, not just the child run() started.
    policy = _policy(tmp_path)
    seen = []
    started = time.monotonic()
    with Children() as children:
        with pytest.raises(exception.CommandTimeout):
            process.run(['sh', '-c', 'sleep 30 & echo $!'], policy,
                        timeout=0.5, on_output=seen.append)
    assert time.monotonic() - started < 1.5
    sleeper = int(b''.join(seen))
    assert _stat(sleeper) is None or _stat(sleeper)[0] == 'Z'
    (pgid,) = children.pids
    assert _stat(sleeper) is None or _stat(sleeper)[2] == pgid
    assert _live_members(pgid) == []


def test_policy_timeout_is_the_default(tmp_path):
    policy = _policy(tmp_path, timeout=0.3)
    assert policy.timeout == 0.3
    started = time.monotonic()
    with pytest.raises(exception.CommandTimeout) as e:
        process.run(['sleep', '30'], policy)
    assert time.monotonic() - started < 1.3
    assert e.value.fields['timeout'] == 0.3
    assert e.value.message == (
        'Command /usr/bin/sleep 30 did not finish within 0.3 seconds and '
        'was killed')


def test_call_timeout_overrides_policy(tmp_path):
    policy = _policy(tmp_path, timeout=0.2)
    res = process.run(['sleep', '0.6'], policy, timeout=5)
    assert res.returncode == 0 and res.wall_seconds >= 0.6
    long_default = _policy(tmp_path, timeout=60)
    started = time.monotonic()
    with pytest.raises(exception.CommandTimeout):
        process.run(['sleep', '30'], long_default, timeout=0.3)
    assert time.monotonic() - started < 1.3


def test_quick_command_under_timeout_keeps_output(tmp_path):
    policy = _policy(tmp_path, timeout=10)
    res = process.run(['echo', 'fine'], policy)
    assert res.stdout == b'fine\n' and res.returncode == 0
    assert res.wall_seconds < 5


def test_cancel_with_timeout_is_still_cancelled(tmp_path):
    policy = _policy(tmp_path, timeout=10)
    progress = Progress()
    threading.Timer(0.2, progress.cancel).start()
    started = time.monotonic()
    with Children() as children:
        with pytest.raises(exception.Cancelled):
            process.run(['sleep', '30'], policy, progress=progress)
    assert time.monotonic() - started < 2
    _assert_group_gone(children.pids.pop())


@pytest.mark.parametrize('bad', [0, -1])
def test_policy_refuses_non_positive_timeout(tmp_path, bad):
    with pytest.raises(ValueError):
        _policy(tmp_path, timeout=bad)
