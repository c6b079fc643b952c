#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Render the systemd drop-in that switches a packaged cinder-volume or
nova-compute unit to accel-daemon's launcher.

    systemctl cat cinder-volume.service | \\
        python3 tools/systemd_switch.py cinder-volume > accel-daemon.conf

The unit's effective ``ExecStart=`` (the last one after the last empty
assignment, drop-ins included, as ``systemctl cat`` prints them) names the
service's program: a Python console script (Ubuntu's ``/usr/bin/
cinder-volume``, RDO's, a kolla or openstack-ansible venv's ``bin/
cinder-volume``).  Its interpreter (the ``#!`` line) is the service's own
Python environment, where accel-daemon must be installed (the launcher
imports the service); the launcher is ``accel-cinder-volume`` in that
environment's scripts directory.  The drop-in replaces the command by the
launcher with the same arguments and sets
``OS_ACCEL_DAEMON_CLIENT__ENABLED=true`` (the launcher reads the switch
from there as from the service's files), so that removing the drop-in
switches the service back.  Standard library only: it runs with the
host's python3 before anything else is installed.

Exit status 2, with the reason on stderr, when the unit cannot be switched
this way: no ExecStart, several, or a program that is not a Python script
(Debian's ``/etc/init.d/cinder-volume systemd-start``); see
doc/source/deployment.rst.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

SERVICES = {
    'cinder-volume': ('accel-cinder-volume',
                      'accel_daemon.cmd.cinder_volume'),
    'nova-compute': ('accel-nova-compute', 'accel_daemon.cmd.nova_compute'),
}
ENABLE = 'OS_ACCEL_DAEMON_CLIENT__ENABLED=true'
# ExecStart prefixes systemd allows before the path (systemd.service(5)).
_PREFIXES = '@-:+!'


class CannotSwitch(Exception):
    pass


def exec_start(unit_text: str) -> list[str]:
    """The effective ExecStart= command lines of a unit (``systemctl
    cat`` text: the unit, then its drop-ins, in order), in the [Service]
    sections; an empty assignment resets the list."""
    commands: list[str] = []
    section = None
    lines = iter(unit_text.splitlines())
    for raw in lines:
        line = raw.strip()
        while line.endswith('\\'):
            line = line[:-1] + ' ' + next(lines, '').strip()
        if not line or line[0] in '#;':
            continue
        if line.startswith('[') and line.endswith(']'):
            section = line[1:-1]
            continue
        key, sep, value = line.partition('=')
        if section != 'Service' or not sep or key.strip() != 'ExecStart':
            continue
        value = value.strip()
        if value:
            commands.append(value)
        else:
            commands = []
    return commands


def split_command(command: str) -> list[str]:
    """A systemd command line as its words (quoting as systemd's, for
    the plain cases a packaged unit uses), its prefixes removed."""
    argv = shlex.split(command)
    if not argv:
        raise CannotSwitch('an empty ExecStart')
    argv[0] = argv[0].lstrip(_PREFIXES)
    return argv


def interpreter(program: str) -> str:
    """The Python interpreter of the console script ``program``."""
    try:
        with open(program, 'rb') as f:
            first = f.readline(4096)
    except OSError as e:
        raise CannotSwitch('cannot read %s: %s' % (program, e.strerror))
    if not first.startswith(b'#!'):
        raise CannotSwitch('%s is not a script with a #! line' % program)
    words = first[2:].decode('utf-8', 'replace').split()
    if words and os.path.basename(words[0]) == 'env' and len(words) > 1:
        words = words[1:]
    if not words or 'python' not in os.path.basename(words[0]):
        raise CannotSwitch('%s is not a Python console script (%s): '
                           'switch it as doc/source/deployment.rst says'
                           % (program, first.decode('utf-8',
                                                    'replace').strip()))
    return words[0]


def launcher(python: str, service: str,
             run: object = subprocess.run) -> list[str]:
    """The launcher command in ``python``'s environment: its console
    script, or ``python -m`` the module; CannotSwitch when accel-daemon
    is not installed there."""
    script, module = SERVICES[service]
    probe = ('import sysconfig, importlib.util; '
             'print(sysconfig.get_path("scripts")); '
             'print(importlib.util.find_spec(%r) is not None)' % module)
    try:
        out = run([python, '-c', probe], capture_output=True, text=True,
                  timeout=60, check=True).stdout.split('\n')
    except (OSError, subprocess.SubprocessError) as e:
        raise CannotSwitch('cannot run %s: %s' % (python, e))
    scripts, found = out[0], out[1] if len(out) > 1 else ''
    if found != 'True':
        raise CannotSwitch('accel-daemon is not installed in the service\'s '
                           'Python environment (%s): install it there '
                           'first (pip install with the constraints)'
                           % python)
    path = os.path.join(scripts, script)
    if os.access(path, os.X_OK):
        return [path]
    return [python, '-m', module]


def _word(word: str) -> str:
    """``word`` quoted for a unit file; an environment variable systemd
    expands (``$OPTIONS``, ``${OPTIONS}``) stays as it is."""
    name = word[2:-1] if word.startswith('${') and word.endswith('}') \
        else word[1:] if word.startswith('$') else ''
    if name and name.replace('_', 'a').isalnum():
        return word
    return shlex.quote(word)


def render(service: str, unit_text: str,
           run: object = subprocess.run) -> str:
    """The drop-in for ``service``, whose unit is ``unit_text``."""
    if service not in SERVICES:
        raise CannotSwitch('%s is not a service accel-daemon switches (%s)'
                           % (service, ', '.join(sorted(SERVICES))))
    commands = exec_start(unit_text)
    if len(commands) != 1:
        raise CannotSwitch('the unit has %d ExecStart commands, not one'
                           % len(commands))
    argv = split_command(commands[0])
    if os.path.basename(argv[0]) == SERVICES[service][0]:
        raise CannotSwitch('the unit already runs %s' % argv[0])
    new = launcher(interpreter(argv[0]), service, run) + argv[1:]
    return ('# Written by accel-daemon (tools/install.sh --switch %s):\n'
            '# %s runs through accel-daemon\'s launcher, with its own\n'
            '# arguments. Remove this file and run "systemctl daemon-reload"\n'
            '# to switch it back.\n'
            '[Service]\n'
            'Environment=%s\n'
            'ExecStart=\n'
            'ExecStart=%s\n' % (service, service, ENABLE,
                                ' '.join(_word(w) for w in new)))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write('usage: systemctl cat UNIT | systemd_switch.py '
                         '%s\n' % '|'.join(sorted(SERVICES)))
        return 2
    try:
        sys.stdout.write(render(argv[0], sys.stdin.read()))
    except CannotSwitch as e:
        sys.stderr.write('systemd_switch: %s: %s\n' % (argv[0], e))
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
