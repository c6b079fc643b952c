# SPDX-License-Identifier: Apache-2.0
"""A command imports only what it needs, in a fresh interpreter each.

Operators script ``accel-image``; ``--version``, ``help`` and a bad command
line need neither the engine nor the broker's libraries, and nothing of
accel-daemon's own processes needs eventlet's green DNS (dnspython and
cryptography, and whatever those print at import).  Measured times are in
the release note, not asserted here: this checks what is imported.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

# Modules a quick command must not load: oslo.service's backends (futurist,
# eventlet), the broker's library, the engine and the operation table.
BROKER_SIDE = ('oslo_service', 'futurist', 'eventlet', 'dns',
               'oslo_messaging')
HEAVY = BROKER_SIDE + ('cryptography', 'accel_daemon.engine',
                       'accel_daemon.operations', 'accel_daemon.cmd.cli.base')
# Never in accel-daemon's own processes: eventlet's green DNS and the
# dnspython it imports (cryptography itself is the engine's, through
# oslo.utils' image inspection).
GREEN_DNS = ('dns', 'eventlet.support.greendns')

_RUN = '''
import io, json, sys
from accel_daemon.cmd.cli import app
out, err = io.StringIO(), io.StringIO()
rc = app.main(%r, stdout=out, stderr=err)
sys.__stdout__.write("\\n" + MARK + json.dumps(
    {"rc": rc, "out": out.getvalue(), "err": err.getvalue(),
     "modules": sorted(sys.modules)}))
'''
MARK = '@@accel-result@@'


def run_cli(argv: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, '-c', 'MARK = %r\n' % MARK + _RUN % (argv,)],
        capture_output=True, text=True, check=True,
        env={'PATH': '/usr/bin:/bin'})
    printed, _, result_json = proc.stdout.partition(MARK)
    result = json.loads(result_json)
    result['printed'] = printed.strip()
    result['stderr'] = proc.stderr
    return result


def loaded(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return [m for m in modules
            if any(m == n or m.startswith(n + '.') for n in names)]


@pytest.mark.parametrize('argv, rc', [
    (['--version'], 0),
    (['frobnicate'], 2),
])
def test_quick_commands_load_nothing_heavy(argv, rc):
    r = run_cli(argv)
    assert r['rc'] == rc
    assert r['stderr'] == ''
    assert loaded(r['modules'], HEAVY) == []


@pytest.mark.parametrize('argv', [['help'], ['--help']])
def test_help_loads_no_broker_library(argv):
    # help describes every command: it loads the command modules (and the
    # operation table their flags come from), never the broker's library.
    r = run_cli(argv)
    assert r['rc'] == 0
    assert r['stderr'] == ''
    assert 'accel_daemon.cmd.cli.tasks' in r['modules']
    assert loaded(r['modules'], BROKER_SIDE) == []


def test_version_prints_one_line():
    r = run_cli(['--version'])
    # argparse's version action prints to sys.stdout, not the app's.
    assert re.fullmatch(r'accel-image \d\S*', r['printed'])
    assert r['err'] == ''


def test_a_command_that_talks_to_the_daemon_loads_no_green_dns(tmp_path):
    # A broker that is not there: the command fails fast, after importing
    # oslo.messaging and oslo.service's threading backend.
    conf = tmp_path / 'accel.conf'
    conf.write_text('[DEFAULT]\n'
                    'transport_url = rabbit://guest:guest@127.0.0.1:9/\n')
    r = run_cli(['--timeout', '1.5', '--config-file', str(conf),
                 'tasks', 'list'])
    assert r['rc'] == 1
    assert r['err'].startswith('accel-image: ServiceUnavailable: ')
    assert 'oslo_messaging' in r['modules']
    assert loaded(r['modules'], GREEN_DNS) == []
    assert r['stderr'] == ''


def test_the_daemon_and_the_helper_load_no_green_dns():
    code = ('import sys\n'
            'import accel_daemon.cmd.daemon\n'
            'from oslo_privsep import daemon\n'
            'print("\\n".join(sorted(sys.modules)))\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, check=True, env={'PATH': '/usr/bin:/bin'})
    modules = proc.stdout.split()
    assert 'eventlet' in modules        # oslo.privsep still imports it
    assert loaded(modules, GREEN_DNS) == []
    assert proc.stderr == ''


def test_green_dns_stays_for_the_callers():
    # cinder-volume and nova-compute import the client library and may run
    # green threads: importing it must not switch eventlet's DNS off.
    code = ('import os\n'
            'import accel_daemon.client\n'
            'print(os.environ.get("EVENTLET_NO_GREENDNS", "unset"))\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, check=True, env={'PATH': '/usr/bin:/bin'})
    assert proc.stdout.strip() == 'unset'
