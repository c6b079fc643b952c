# SPDX-License-Identifier: Apache-2.0
"""Build the sdist and the wheel with pbr's PEP 517 backend (pyproject.toml)
and check what they hold and what the build printed.

The build runs on a copy of the working tree (the files git tracks or would
track, committed into a throwaway repository, since pbr takes the version
and the file list from git), so it leaves nothing in the checkout and sees
uncommitted changes. It runs without build isolation: the venv's pbr,
setuptools and wheel (test-requirements.txt), no index needed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

pytestmark = pytest.mark.functional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# The two lines pbr's own manifest template (LocalManifestMaker in
# pbr/_compat/commands.py) makes setuptools print for every project that
# has no .gitreview and no byte code under git: its fixed "exclude
# .gitreview" and "global-exclude *.pyc" match nothing.  Only a fake
# .gitreview would silence the first; everything else must be silent.
PBR_TEMPLATE_NOISE = (
    "warning: no previously-included files found matching '.gitreview'",
    "warning: no previously-included files matching '*.pyc' found "
    "anywhere in distribution",
)
WARNING = re.compile(r'warn|deprecat', re.IGNORECASE)


def _git(cwd, *args):
    return subprocess.run(
        ['git', '-c', 'user.name=packaging test',
         '-c', 'user.email=packaging-test@invalid', *args],
        cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    if shutil.which('git') is None:
        pytest.skip('git is needed: pbr reads the file list from it')
    pytest.importorskip('build')
    src = tmp_path_factory.mktemp('pkg') / 'src'
    out = tmp_path_factory.mktemp('dist')
    names = _git(ROOT, 'ls-files', '-z', '--cached', '--others',
                 '--exclude-standard').split('\0')
    for name in filter(None, names):
        path = os.path.join(ROOT, name)
        if not os.path.lexists(path):
            continue  # deleted in the working tree
        dest = src / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if os.path.islink(path):
            os.symlink(os.readlink(path), dest)
        else:
            shutil.copy2(path, dest)
    _git(src, 'init', '-q')
    _git(src, 'add', '-A')
    _git(src, 'commit', '-q', '-m', 'packaging test')
    env = dict(os.environ)
    # Byte-compiling is part of building a wheel; with this set,
    # setuptools warns that it skips it.
    env.pop('PYTHONDONTWRITEBYTECODE', None)
    env.pop('PBR_VERSION', None)
    proc = subprocess.run(
        [sys.executable, '-m', 'build', '--no-isolation', '--outdir',
         str(out), str(src)],
        cwd=str(src), env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    sdists = sorted(out.glob('*.tar.gz'))
    wheels = sorted(out.glob('*.whl'))
    assert len(sdists) == 1 and len(wheels) == 1, os.listdir(out)
    return {'log': log, 'sdist': str(sdists[0]), 'wheel': str(wheels[0])}


def test_build_prints_no_warning(built):
    warnings = [line.strip() for line in built['log'].splitlines()
                if WARNING.search(line)
                and line.strip() not in PBR_TEMPLATE_NOISE]
    assert warnings == []


def test_wheel_holds_the_package_and_its_data(built):
    with zipfile.ZipFile(built['wheel']) as whl:
        names = whl.namelist()
        data = {n.split('.data/data/', 1)[1] for n in names
                if '.data/data/' in n}
        info = [n for n in names if '.dist-info/' in n]
        entry_points = whl.read(next(
            n for n in info if n.endswith('/entry_points.txt'))).decode()
        metadata = whl.read(next(
            n for n in info if n.endswith('/METADATA'))).decode()
    # The rootwrap filters and configuration the daemon needs at run time.
    for rel in ('etc/accel-daemon/rootwrap.conf',
                'etc/accel-daemon/accel-daemon.conf.sample',
                'etc/accel-daemon/sudoers.d/accel-daemon',
                'etc/accel-daemon/rootwrap.d/compression.filters',
                'etc/accel-daemon/rootwrap.d/qemu-img.filters'):
        assert rel in data, sorted(data)
    for name in os.listdir(os.path.join(ROOT, 'filters')):
        if name.endswith('.filters'):
            assert 'etc/accel-daemon/rootwrap.d/' + name in data
    assert 'accel_daemon/engine/driver.py' in names
    assert 'accel_daemon/drivers/cli.py' in names
    assert not any(n.startswith('tests/') for n in names)
    assert any(n.endswith('.dist-info/LICENSE') for n in info), info
    for section in ('[accel_daemon.compressors]', '[console_scripts]',
                    '[oslo.config.opts]'):
        assert section in entry_points
    assert 'gzip = accel_daemon.drivers.cli:GzipCompressor' in entry_points
    assert 'License: Apache-2.0' in metadata


def test_sdist_holds_the_sources(built):
    with tarfile.open(built['sdist']) as tar:
        names = {n.split('/', 1)[1] for n in tar.getnames() if '/' in n}
    for rel in ('LICENSE', 'pyproject.toml', 'setup.cfg', 'setup.py',
                'requirements.txt', 'filters/compression.filters',
                'doc/source/index.rst', 'doc/source/conf.py',
                'accel_daemon/engine/driver.py', 'ChangeLog'):
        assert rel in names, rel
    assert not any(n.endswith('.pyc') for n in names)
