# SPDX-License-Identifier: Apache-2.0
"""A tool that escapes its process group is killed all the same.

``process.run`` kills a tool's whole process group on cancel and timeout,
but a process the tool forked can leave the group (``setsid``) and would
survive both, holding the tool's pipes.  The privileged helper is a child
subreaper (``process.adopt_orphans``): such a process becomes its child
once the tool has exited, and ``process.sweep_orphans`` kills it.

Each case runs in a process of its own that adopts orphans, as the helper
does (the test runner must not become a subreaper: its other children are
not tools).  The tool is a shell that starts ``setsid sleep`` in the
background: the sleep runs in a session of its own and keeps the tool's
stdout and stderr open.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# A sleep no other test starts, to find survivors by.
MARK = '317.25'
FILTERS = textwrap.dedent('''\
    [Filters]
    leave: RegExpFilter, sh, root, sh, -c, setsid sleep %(mark)s & exit 0
    leave_and_wait: RegExpFilter, sh, root, sh, -c, \
setsid sleep %(mark)s & sleep %(mark)s
    ''') % {'mark': MARK.replace('.', r'\.')}

SCRIPT = textwrap.dedent('''
    import json, sys, threading, time
    from accel_daemon.engine import process
    from accel_daemon.engine.filters import CommandPolicy
    from accel_daemon.engine.progress import Progress
    from accel_daemon import exception

    filters, adopt, case, mark = sys.argv[1:5]
    if adopt == 'adopt':
        process.adopt_orphans()
    policy = CommandPolicy([filters], ['/usr/bin', '/bin'], timeout=6)
    progress = Progress()
    if case == 'cancel':
        threading.Timer(0.5, progress.cancel).start()
        argv = ['sh', '-c', 'setsid sleep %s & sleep %s' % (mark, mark)]
    else:
        argv = ['sh', '-c', 'setsid sleep %s & exit 0' % mark]
    started = time.monotonic()
    try:
        process.run(argv, policy, progress=progress)
        outcome = 'done'
    except exception.AccelError as e:
        outcome = type(e).__name__
    print(json.dumps({'outcome': outcome,
                      'seconds': time.monotonic() - started}))
''')


def survivors() -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                argv = f.read().split(b'\0')
        except OSError:
            continue
        if argv[:2] == [b'sleep', MARK.encode()]:
            found.append(int(pid))
    return found


@pytest.fixture
def filters(tmp_path):
    d = tmp_path / 'filters'
    d.mkdir()
    (d / 'orphans.filters').write_text(FILTERS)
    yield str(d)
    for pid in survivors():
        os.kill(pid, signal.SIGKILL)


def run_case(filters: str, adopt: bool, case: str) -> dict:
    out = subprocess.run(
        [sys.executable, '-c', SCRIPT, filters,
         'adopt' if adopt else 'no', case, MARK],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_without_adoption_the_escape_survives(filters):
    """What is at stake: the tool exits at once, but its escaped child
    holds the pipes until the timeout, and outlives it."""
    result = run_case(filters, False, 'exit')
    assert result['outcome'] == 'CommandTimeout'
    assert result['seconds'] >= 6
    time.sleep(0.2)
    assert survivors() != []


@pytest.mark.parametrize('case,outcome', [('exit', 'done'),
                                          ('cancel', 'Cancelled')])
def test_an_adopted_escape_is_killed(filters, case, outcome):
    result = run_case(filters, True, case)
    assert result['outcome'] == outcome
    # Not held until the timeout by the pipes the escape kept.
    assert result['seconds'] < 4
    assert survivors() == []
