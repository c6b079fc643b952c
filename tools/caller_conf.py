# SPDX-License-Identifier: Apache-2.0
"""Add or update one caller in accel-daemon.conf (tools/install.sh --caller).

    caller_conf.py CONF NAME TRANSPORT_URL DIRS [DEVICES] [--operator]

DIRS and DEVICES are comma-separated.  Sets ``[caller:NAME]``, adds NAME
to ``[accel_daemon_rpc] callers``, and widens the host's envelope
(``[accel_daemon] allowed_dirs`` and ``allowed_block_devices``) just enough
to hold the caller's directories and patterns, as the daemon requires.
Standard library only (install.sh runs it with the system's python3).
"""

from __future__ import annotations

import fnmatch
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import inifile  # noqa: E402


def _list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or '').split(',') if v.strip()]


def _inside(path: str, roots: list[str]) -> bool:
    path = os.path.normpath(path)
    return any(path == os.path.normpath(r) or path.startswith(
        os.path.normpath(r).rstrip('/') + '/') for r in roots)


def add_caller(conf: str, name: str, url: str, dirs: list[str],
               devices: list[str], operator: bool = False) -> None:
    callers = _list(inifile.iniget(conf, 'accel_daemon_rpc', 'callers'))
    if name not in callers:
        callers.append(name)
    inifile.iniset(conf, 'accel_daemon_rpc', 'callers', ','.join(callers))
    section = 'caller:%s' % name
    inifile.iniset(conf, section, 'transport_url', url)
    inifile.iniset(conf, section, 'allowed_dirs', ','.join(dirs))
    inifile.iniset(conf, section, 'allowed_block_devices', ','.join(devices))
    inifile.iniset(conf, section, 'operator', str(operator).lower())
    envelope = _list(inifile.iniget(conf, 'accel_daemon', 'allowed_dirs'))
    wider = envelope + [d for d in dirs if not _inside(d, envelope)]
    if wider != envelope:
        inifile.iniset(conf, 'accel_daemon', 'allowed_dirs', ','.join(wider))
    patterns = _list(inifile.iniget(conf, 'accel_daemon',
                                    'allowed_block_devices'))
    more = patterns + [p for p in devices
                       if not any(fnmatch.fnmatchcase(p, g)
                                  for g in patterns)]
    if more != patterns:
        inifile.iniset(conf, 'accel_daemon', 'allowed_block_devices',
                       ','.join(more))


def main(argv: list[str]) -> int:
    operator = '--operator' in argv
    args = [a for a in argv if a != '--operator']
    if len(args) not in (4, 5):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    conf, name, url, dirs = args[:4]
    devices = args[4] if len(args) == 5 else ''
    add_caller(conf, name, url, _list(dirs), _list(devices), operator)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
