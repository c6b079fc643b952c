import os
import threading
import time

import pytest

from accel_daemon import exception
from accel_daemon.engine import filters
from accel_daemon.engine import process
from accel_daemon.engine.progress import Phase
from accel_daemon.engine.progress import Progress

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
