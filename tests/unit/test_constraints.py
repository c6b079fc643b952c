# SPDX-License-Identifier: Apache-2.0
"""The pins (upper-constraints.txt, local-constraints.txt) and the tool
that checks a venv against them (tools/constraints.py).

The real venvs are checked where they are built: tools/setup.sh, the
caller venvs and the clean install of .ci/run call ``constraints.py
check``.  Here: the files agree with the requirements, and the check
finds what it must.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        'constraints_tool', ROOT / 'tools' / 'constraints.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


constraints = _load_tool()


def _requirement_names(path: pathlib.Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split('#')[0].strip()
        if line and not line.startswith('-'):
            names.add(constraints.norm(re.split(r'[<>=!~\[; ]', line)[0]))
    return names


@pytest.fixture(scope='module')
def pins():
    return (constraints.read_pins(constraints.UPPER),
            constraints.read_pins(constraints.LOCAL))


def test_no_package_is_pinned_twice(pins):
    upper, local = pins
    assert not set(upper) & set(local)


@pytest.mark.parametrize('requirements', [
    'requirements.txt', 'test-requirements.txt', 'doc/requirements.txt'])
def test_every_requirement_is_pinned(pins, requirements):
    upper, local = pins
    names = _requirement_names(ROOT / requirements)
    assert names
    assert sorted(names - set(upper) - set(local)) == []


def test_the_build_and_the_callers_are_pinned(pins):
    _, local = pins
    # The isolated PEP 517 build (pyproject.toml) and the released callers
    # the caller tests install.
    assert {'setuptools', 'cinder', 'nova'} <= set(local)
    assert {'pbr'} <= set(pins[0])


def test_raised_pins_say_why(pins):
    upper, _ = pins
    raised = {k: c for k, (_, c) in upper.items() if c}
    assert raised, 'nova 34.0.0 needs two pins above upstream'
    for name, comment in raised.items():
        assert re.match(r'raised from \S+: \S', comment), (name, comment)


def test_upper_constraints_names_its_source():
    text = pathlib.Path(constraints.UPPER).read_text()
    assert re.search(r'openstack/requirements upper-constraints.txt, '
                     r'master at [0-9a-f]{40}', ' '.join(
                         line.lstrip('# ') for line in text.splitlines()))


def test_check_accepts_a_pinned_venv():
    pins = {'oslo-config': ('10.7.0', ''), 'isal': ('1.9.1', ''),
            'setuptools': ('66.1.1', '')}
    held = {'oslo-config': ('oslo.config', '10.7.0'),
            'isal': ('isal', '1.9.1'), 'setuptools': ('setuptools', '66.1.1'),
            # Seeded by Debian's python3-venv, the project, a CA bundle.
            'pip': ('pip', '23.0.1'),
            'accel-daemon': ('accel-daemon', '0.0.1'),
            'certifi': ('certifi', '2026.10.19')}
    assert constraints.problems('v', held, pins) == []


def test_check_finds_unpinned_and_moved_packages():
    pins = {'oslo-config': ('10.7.0', ''), 'dnspython': ('2.8.0', '')}
    held = {'oslo-config': ('oslo.config', '10.7.0'),
            'dnspython': ('dnspython', '2.9.2'),
            'cryptography': ('cryptography', '51.0.1')}
    found = constraints.problems('v', held, pins)
    assert found == [
        'v: cryptography 51.0.1 is not pinned (add it to '
        'local-constraints.txt, or regenerate upper-constraints.txt)',
        'v: dnspython is 2.9.2, pinned at 2.8.0']


def test_read_pins_takes_both_spellings_and_comments(tmp_path):
    f = tmp_path / 'c.txt'
    f.write_text('# a comment\n\nFoo_Bar===1.2.3\n'
                 'baz==4.5  # raised from 4.4: why\n'
                 'qux===2.0;python_version>="3.10"\n')
    assert constraints.read_pins(str(f)) == {
        'foo-bar': ('1.2.3', ''), 'baz': ('4.5', 'raised from 4.4: why'),
        'qux': ('2.0', '')}


def test_read_pins_refuses_a_range(tmp_path):
    f = tmp_path / 'c.txt'
    f.write_text('foo>=1.0\n')
    with pytest.raises(SystemExit, match='c.txt:1: not a pin: foo>=1.0'):
        constraints.read_pins(str(f))
