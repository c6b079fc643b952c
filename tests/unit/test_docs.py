# SPDX-License-Identifier: Apache-2.0
"""The documentation builds without a single warning, as `tox -e docs`
builds it, and what it states about the code still holds.

* sphinx-build -W (warnings are errors, --keep-going to list them all)
  into a temporary directory: broken references, bad markup, a page that
  is in no toctree, an included file or Python object that is gone, an
  option help that is not valid reStructuredText all fail it; so does any
  other warning printed on stderr;
* every option of every oslo.config namespace in setup.cfg has its entry
  in the generated configuration reference;
* every dotted ``accel_daemon...`` name on the architecture, driver and
  contributing-operations pages resolves to a module or an attribute;
* no file of the repository points at design or style documents that are
  not in it.
"""

from __future__ import annotations

import configparser
import importlib
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SOURCE = os.path.join(ROOT, 'doc', 'source')
NAME = re.compile(r'``(accel_daemon(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(?:\(\))?``')
# Pages whose dotted names are checked against the code.
CHECKED_PAGES = ('architecture.rst', 'drivers.rst',
                 'contributing-operations.rst')


def _setup_cfg():
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(os.path.join(ROOT, 'setup.cfg'))
    return cfg


def _entry_points(cfg, group):
    lines = cfg['entry_points'].get(group, '').splitlines()
    return dict((part.strip() for part in line.split('=', 1))
                for line in lines if line.strip())


@pytest.fixture(scope='module')
def html(tmp_path_factory):
    pytest.importorskip('sphinx')
    pytest.importorskip('oslo_config.sphinxext')
    out = tmp_path_factory.mktemp('html')
    proc = subprocess.run(
        [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q',
         '-b', 'html', '-d', str(out / '.doctrees'), SOURCE, str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    noise = [line for line in proc.stderr.splitlines()
             if re.search(r'warn|error|deprecat', line, re.IGNORECASE)]
    assert noise == [], proc.stderr
    return out


def test_docs_build_with_warnings_as_errors(html):
    for page in ('index', 'architecture', 'operator-guide', 'configuration',
                 'drivers', 'install', 'api', 'security', 'operations',
                 'contributing-operations'):
        assert (html / ('%s.html' % page)).is_file(), page


def test_configuration_reference_lists_every_option(html):
    text = (html / 'configuration.html').read_text()
    namespaces = _entry_points(_setup_cfg(), 'oslo.config.opts')
    assert namespaces, 'no oslo.config.opts namespace in setup.cfg'
    missing = []
    for namespace, target in namespaces.items():
        module, func = target.split(':')
        list_opts = getattr(importlib.import_module(module), func)
        for group, opts in list_opts():
            group_name = getattr(group, 'name', group) or 'DEFAULT'
            for opt in opts:
                anchor = 'id="%s.%s"' % (group_name, opt.dest)
                if anchor not in text:
                    missing.append((namespace, group_name, opt.dest))
    assert missing == []


def _resolve(dotted):
    parts = dotted.split('.')
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module('.'.join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


@pytest.mark.parametrize('page', CHECKED_PAGES)
def test_names_on_the_page_exist_in_the_code(page):
    with open(os.path.join(SOURCE, page)) as f:
        names = set(NAME.findall(f.read()))
    # Entry point namespaces are names, not modules.
    namespaces = set(_setup_cfg()['entry_points'])
    names -= namespaces
    assert names, 'no accel_daemon name found on %s' % page
    unresolved = []
    for name in sorted(names):
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            unresolved.append(name)
    assert unresolved == []


def test_no_reference_to_documents_outside_the_repository():
    files = subprocess.run(
        ['git', 'ls-files', '-z', '--cached', '--others',
         '--exclude-standard'], cwd=ROOT, capture_output=True, text=True,
        check=True).stdout.split('\0')
    # Built here so that this file does not match itself.
    banned = re.compile('|'.join(re.escape(s) for s in (
        'DESIGN' + '.md', 'DESIGN' + ' section', 'STYLE' + '.md',
        '/work' + '/shared')))
    found = []
    for name in filter(None, files):
        path = os.path.join(ROOT, name)
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        with open(path, 'rb') as f:
            text = f.read().decode('utf-8', 'replace')
        found += ['%s:%d' % (name, text.count('\n', 0, m.start()) + 1)
                  for m in banned.finditer(text)]
    assert found == []
