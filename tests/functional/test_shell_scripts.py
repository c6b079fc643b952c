# SPDX-License-Identifier: Apache-2.0
"""Every shell script of the repository parses (``bash -n``) and passes
shellcheck.

A shell script is a tracked file named ``*.sh``, a tracked file whose
first line is a ``sh``/``bash`` shebang, or one of SOURCED (sourced by
bash without a shebang or suffix).  shellcheck runs from the top of the
checkout with ``-x``, so the ``# shellcheck source=`` paths resolve.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# Shell files without a shebang: devstack sources its plugin's settings.
SOURCED = ('devstack/settings',)
SHEBANG = re.compile(rb'^#!\s*(/usr)?/bin/(env\s+)?(ba)?sh\b')

pytestmark = pytest.mark.functional


def _tracked() -> list[str]:
    out = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, check=True,
                         capture_output=True).stdout
    return [p for p in out.decode().split('\0') if p]


def shell_scripts() -> list[str]:
    found = set(SOURCED)
    for rel in _tracked():
        path = os.path.join(ROOT, rel)
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        if rel.endswith('.sh'):
            found.add(rel)
            continue
        with open(path, 'rb') as f:
            if SHEBANG.match(f.readline()):
                found.add(rel)
    return sorted(found)


SCRIPTS = shell_scripts()


def test_the_scripts_are_found():
    # The list must not silently shrink to nothing (or miss the obvious).
    for rel in ('.ci/run', 'devstack/plugin.sh', 'devstack/settings',
                'tools/install.sh', 'tools/run-tests.sh',
                'tests/devstack/functions.sh'):
        assert rel in SCRIPTS


@pytest.mark.parametrize('rel', SCRIPTS)
def test_bash_parses(rel):
    r = subprocess.run(['bash', '-n', rel], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize('rel', SCRIPTS)
def test_shellcheck(rel):
    if shutil.which('shellcheck') is None:
        if os.environ.get('CI'):
            pytest.fail('shellcheck is missing (bindep.txt lists it)')
        pytest.skip('shellcheck is missing: bash tools/setup.sh installs it')
    argv = ['shellcheck', '-x', '--format=gcc']
    if rel in SOURCED:
        argv += ['--shell=bash']
    r = subprocess.run(argv + [rel], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
