#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""accel-daemon's pins: check a venv against them, or regenerate them.

Every Python package that any venv of this project installs (.venv, the
service venv of tools/install.sh, cinder's and nova's caller venvs, tox's
envs) is pinned to one version by two files at the top of the checkout,
which every installer passes to pip (``-c``, and ``PIP_CONSTRAINT`` so that
the isolated build of accel-daemon itself is pinned too):

``upper-constraints.txt``
    OpenStack's upper constraints (openstack/requirements), restricted to
    the packages we install; a line may be *raised* above upstream, with
    its reason, when a caller we test needs a newer release.
``local-constraints.txt``
    Pins of our own for packages that upper constraints does not list
    (isal, tqdm, the linters, the build tools), each with its reason.

Usage::

    tools/constraints.py check VENV [VENV ...]
        every distribution installed in each venv is pinned, at exactly
        the installed version; one line per problem, exit status 1.
    tools/constraints.py update --upper-constraints FILE --source TEXT \\
            VENV [VENV ...]
        rewrite upper-constraints.txt from FILE (a copy of
        openstack/requirements' upper-constraints.txt at the release we
        test against, named by TEXT) for the packages the venvs hold,
        keeping raised lines that are still above upstream.

Uses nothing but the standard library: it runs before any venv exists.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPPER = os.path.join(ROOT, 'upper-constraints.txt')
LOCAL = os.path.join(ROOT, 'local-constraints.txt')

# A venv made by /usr/bin/python3 -m venv gets pip from Debian's
# python3-venv (ensurepip's bundled wheel): the Debian package, not a pin,
# decides its version.  The project itself is not pinned.
UNPINNED = {'pip': "Debian's python3-venv seeds it",
            # openstack/requirements leaves it unpinned on purpose (its
            # commit a420f293): a CA bundle must stay current.
            'certifi': 'a CA bundle must stay current',
            'accel-daemon': 'this project'}

_LINE = re.compile(r'^([A-Za-z0-9][A-Za-z0-9._-]*)\s*===?\s*([^\s;#]+)'
                   r'\s*(;[^#]*)?(#.*)?$')


def norm(name: str) -> str:
    """PEP 503's normal form of a distribution name."""
    return re.sub(r'[-_.]+', '-', name).lower()


def read_pins(path: str) -> dict[str, tuple[str, str]]:
    """{normal name: (version, comment)} of a constraints file."""
    pins: dict[str, tuple[str, str]] = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            m = _LINE.match(line)
            if not m:
                raise SystemExit('%s:%d: not a pin: %s' % (path, number,
                                                           line))
            pins[norm(m.group(1))] = (m.group(2), (m.group(4) or '').lstrip(
                '# ').strip())
    return pins


def installed(venv: str) -> dict[str, tuple[str, str]]:
    """{normal name: (name, version)} of what a venv holds."""
    out = subprocess.run(
        [os.path.join(venv, 'bin', 'python'), '-m', 'pip', 'list',
         '--format=freeze', '--disable-pip-version-check'],
        check=True, capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        name, _, version = line.partition('==')
        if version:
            found[norm(name)] = (name, version)
    return found


def problems(venv: str, held: dict[str, tuple[str, str]],
             pins: dict[str, tuple[str, str]]) -> list[str]:
    """What is wrong with a venv holding ``held`` (see ``installed``)."""
    found = []
    for key, (name, version) in sorted(held.items()):
        if key in UNPINNED:
            continue
        if key not in pins:
            found.append('%s: %s %s is not pinned (add it to '
                         'local-constraints.txt, or regenerate '
                         'upper-constraints.txt)' % (venv, name, version))
        elif pins[key][0] != version:
            found.append('%s: %s is %s, pinned at %s'
                         % (venv, name, version, pins[key][0]))
    return found


def check(venvs: list[str], local_path: str = LOCAL) -> int:
    upper, local = read_pins(UPPER), read_pins(local_path)
    both = sorted(set(upper) & set(local))
    if both:
        print('constraints: pinned in both files: %s' % ', '.join(both),
              file=sys.stderr)
        return 1
    pins = {**upper, **local}
    found = [p for venv in venvs
             for p in problems(venv, installed(venv), pins)]
    for line in found:
        print('constraints: %s' % line, file=sys.stderr)
    if not found:
        print('constraints: %s: every package pinned' % ', '.join(venvs),
              file=sys.stderr)
    return 1 if found else 0


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1
                 for p in re.split(r'[.+-]', version))


def update(upstream_path: str, source: str, venvs: list[str]) -> int:
    upstream = read_pins(upstream_path)
    names = {k: v[0] for venv in venvs for k, v in installed(venv).items()}
    local = read_pins(LOCAL)
    current = read_pins(UPPER) if os.path.exists(UPPER) else {}
    lines, missing = [], []
    for key in sorted(names):
        if key in UNPINNED or key in local:
            continue
        if key not in upstream:
            missing.append(names[key])
            continue
        version = upstream[key][0]
        old, comment = current.get(key, ('', ''))
        if comment.startswith('raised') and (
                _version_key(old) > _version_key(version)):
            lines.append('%s===%s  # %s' % (names[key], old, comment))
        else:
            lines.append('%s===%s' % (names[key], version))
    if missing:
        print('constraints: not in upper constraints, pin them in '
              'local-constraints.txt first: %s' % ', '.join(missing),
              file=sys.stderr)
        return 1
    with open(UPPER, 'w') as f:
        f.write(HEADER + ''.join(
            '# %s\n' % line for line in textwrap.wrap(source + '.', 74)))
        f.write('\n'.join(lines) + '\n')
    print('constraints: wrote %d pins to %s' % (len(lines), UPPER),
          file=sys.stderr)
    return 0


HEADER = """\
# OpenStack's upper constraints, for the packages accel-daemon's venvs
# install (.venv, tools/install.sh's venv, cinder's and nova's caller venvs,
# tox's envs). Pinned here so that a fresh venv gives the same run;
# updated on purpose, with a release note. A line marked "raised" is above
# upstream, for the reason it gives. Packages upper constraints does not
# list are pinned in local-constraints.txt. Generated by
# tools/constraints.py update from openstack/requirements
# upper-constraints.txt,
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='constraints.py',
                                     description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('check', help='every installed package is pinned')
    p.add_argument('--local', default=LOCAL, metavar='FILE',
                   help='our own pins (default: local-constraints.txt; a '
                        'caller venv of an older release has its copy)')
    p.add_argument('venvs', nargs='+')
    p = sub.add_parser('update', help='regenerate upper-constraints.txt')
    p.add_argument('--upper-constraints', required=True, metavar='FILE')
    p.add_argument('--source', required=True,
                   help='the release and commit FILE comes from')
    p.add_argument('venvs', nargs='+')
    args = parser.parse_args(argv)
    if args.command == 'check':
        return check(args.venvs, args.local)
    return update(args.upper_constraints, args.source, args.venvs)


if __name__ == '__main__':
    sys.exit(main())
