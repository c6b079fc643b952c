# SPDX-License-Identifier: Apache-2.0
"""accel-image's parts: the bounded broker check, the deadline of a call,
the progress bar and the ISO times."""

import io
import re
import threading
import time

from oslo_config import cfg
from oslo_messaging import conffixture
import pytest

from accel_daemon.cmd.cli import base
from accel_daemon.cmd.cli import broker
from accel_daemon.cmd.cli import progress
from accel_daemon import exception


class Clock:
    def __init__(self):
        self.now = 100.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.sleeps.append(s)
        self.now += s


def test_check_gives_up_after_its_attempts():
    clock = Clock()
    tries = []

    def refuse(address, timeout):
        tries.append((address, timeout))
        clock.now += 0.01
        raise ConnectionRefusedError(111, 'Connection refused')

    with pytest.raises(exception.ServiceUnavailable) as e:
        broker.check([('h1', 5672)], timeout=20, attempts=3, interval=1.0,
                     clock=clock, sleep=clock.sleep, connect=refuse)
    assert len(tries) == 3
    assert clock.sleeps == [1.0, 1.0]
    msg = e.value.message
    assert 'cannot reach the message broker at h1:5672: Connection ' \
           'refused (3 attempts in 2.0 s)' in msg


def test_check_never_outlives_its_timeout():
    clock = Clock()

    def slow(address, timeout):
        clock.now += timeout        # a connect that times out
        raise OSError('timed out')

    with pytest.raises(exception.ServiceUnavailable):
        broker.check([('h1', 1), ('h2', 2)], timeout=3, attempts=10,
                     clock=clock, sleep=clock.sleep, connect=slow)
    assert clock.now - 100.0 <= 3.0


def test_check_returns_once_a_host_answers():
    calls = []

    class Sock:
        def close(self):
            calls.append('closed')

    def flaky(address, timeout):
        calls.append(address)
        if len(calls) < 3:
            raise ConnectionRefusedError(111, 'Connection refused')
        return Sock()

    clock = Clock()
    broker.check([('a', 1), ('b', 2)], timeout=10, clock=clock,
                 sleep=clock.sleep, connect=flaky)
    assert calls == [('a', 1), ('b', 2), ('a', 1), 'closed']


def test_no_check_for_a_transport_without_hosts():
    broker.check([], timeout=0.0)       # returns, tries nothing


def test_broker_hosts_of_the_transport_url():
    conf = cfg.ConfigOpts()
    fixture = conffixture.ConfFixture(
        conf, transport_url='rabbit://u:p@b1:5673,u:p@b2/vh')
    fixture.setUp()
    try:
        assert broker.broker_hosts(conf) == [('b1', 5673), ('b2', 5672)]
        conf.set_override('transport_url', 'fake:/')
        assert broker.broker_hosts(conf) == []
    finally:
        fixture.cleanUp()


def test_deadline_expiry_says_one_line_and_exits():
    said, exits = [], []
    done = threading.Event()

    def exit_(code):
        exits.append(code)
        done.set()

    with broker.Deadline(0.05, 'the daemon on host h', said.append,
                         exit=exit_, shown=20):
        assert done.wait(5)
    assert exits == [1]
    assert said == ['ServiceUnavailable: no answer from the daemon on host h '
                    'within 20 s (is the message broker up and the daemon '
                    'running?)']


def test_deadline_not_reached_does_nothing():
    said, exits = [], []
    with broker.Deadline(0.2, 'x', said.append, exit=exits.append):
        pass
    time.sleep(0.3)
    assert said == [] and exits == []


# --- progress bar ------------------------------------------------------
class Tty(io.StringIO):
    def isatty(self):
        return True


def test_bar_has_rate_eta_and_a_clean_last_frame():
    out = io.StringIO()
    bar = progress.Bar('compress', enabled=True, stream=out, delay=0)
    total = 8 * 1024 * 1024
    for done in range(0, total + 1, total // 8):
        bar.update({'done': done, 'total': total})
        time.sleep(0.12)
    bar.close()
    frames = out.getvalue().split('\r')
    last = frames[-1]
    assert last.endswith('\n') and last.count('\n') == 1
    assert re.match(r'^compress: 100%\|[^|]+\| 8\.00M/8\.00M '
                    r'\[\d\d:\d\d<00:00, +[\d.]+[kMG]?B/s\]\n$', last), last
    middle = [f for f in frames if ' 50%|' in f]
    assert middle, frames
    # Rate and remaining time while it runs.
    assert re.search(r'<00:0\d, +[\d.]+[kMG]?B/s\]', middle[0]), middle[0]
    # Every frame has the same width: none pads over a longer one.
    assert len({len(f.rstrip('\n')) for f in frames if f}) == 1


def test_bar_of_a_short_task_is_not_shown():
    out = io.StringIO()
    bar = progress.Bar('copy', enabled=True, stream=out)
    bar.update({'done': 10, 'total': 10})
    bar.close()
    assert out.getvalue() == ''


def test_bar_appears_after_half_a_second():
    out = io.StringIO()
    bar = progress.Bar('copy', enabled=True, stream=out)
    bar.update({'done': 1, 'total': 10})
    time.sleep(0.6)
    bar.update({'done': 5, 'total': 10})
    bar.close()
    assert ' 50%|' in out.getvalue() and '100%|' in out.getvalue()


def test_bar_of_a_failed_task_is_erased():
    out = io.StringIO()
    bar = progress.Bar('copy', enabled=True, stream=out, delay=0)
    bar.update({'done': 3, 'total': 10})
    bar.close(ok=False)
    assert '100%' not in out.getvalue()
    assert out.getvalue().endswith('\r')
    assert '\n' not in out.getvalue()


def test_bar_follows_the_terminal_unless_forced():
    assert progress.Bar('x', stream=Tty()).enabled
    assert not progress.Bar('x', stream=io.StringIO()).enabled
    assert progress.Bar('x', enabled=True, stream=io.StringIO()).enabled
    assert not progress.Bar('x', enabled=False, stream=Tty()).enabled


# --- values ----------------------------------------------------------------
def test_iso_times():
    assert base.iso(0) == '1970-01-01T00:00:00Z'
    assert base.iso(1796149693.58) == '2026-12-01T18:28:13Z'
    assert base.iso(None) is None
    col = base.TimeColumn(1796149693.58)
    assert col.human_readable() == col.machine_readable() == \
        '2026-12-01T18:28:13Z'
    assert base.TimeColumn(None).human_readable() == ''


def test_progress_and_error_columns():
    prog = base.ProgressColumn({'done': 512, 'total': 2048})
    assert prog.human_readable() == '25% (512 B of 2.0 KiB)'
    assert prog.machine_readable() == {'done': 512, 'total': 2048}
    assert base.ShortProgressColumn({'done': 0, 'total': 0}) \
        .human_readable() == ''
    err = base.ErrorColumn({'type': 'CorruptInput', 'message': 'bad'})
    assert err.human_readable() == 'CorruptInput: bad'
    assert base.MappingColumn({'b': 1, 'a': {'x': 2}}).human_readable() == \
        'a={"x": 2}\nb=1'
