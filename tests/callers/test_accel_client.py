# SPDX-License-Identifier: Apache-2.0
"""accel_daemon.client in a caller's venv, on the caller's own libraries.

Runs in every caller venv (tools/run-caller-tests.sh builds them so that
installing accel-daemon cannot move a version the caller chose).
"""

import importlib.metadata
import os
import sys
import sysconfig
import unittest

from oslo_config import cfg
from oslo_messaging import conffixture
from packaging.requirements import Requirement

import accel_daemon
from accel_daemon import client as accel_client

# What the caller's own install chose, saved by tools/caller-venvs.sh.
CALLER_FREEZE = os.path.join(sys.prefix, 'caller-freeze.txt')


def frozen(path):
    with open(path) as f:
        for line in f:
            name, sep, version = line.strip().partition('==')
            if sep:
                yield name, version


class InstalledCopy(unittest.TestCase):

    def test_accel_daemon_is_the_venv_copy(self):
        # Not a checkout on sys.path: what a deployment would install.
        purelib = sysconfig.get_paths()['purelib']
        self.assertEqual(os.path.join(purelib, 'accel_daemon'),
                         os.path.dirname(accel_daemon.__file__))

    def test_requirements_met_by_installed_versions(self):
        for text in importlib.metadata.requires('accel-daemon'):
            req = Requirement(text)
            if req.marker and not req.marker.evaluate({'extra': ''}):
                continue
            with self.subTest(str(req)):
                version = importlib.metadata.version(req.name)
                self.assertTrue(req.specifier.contains(version, True),
                                '%s %s installed' % (req.name, version))

    def test_caller_versions_unchanged(self):
        moved = {}
        for name, version in frozen(CALLER_FREEZE):
            installed = importlib.metadata.version(name)
            if installed != version:
                moved[name] = (version, installed)
        self.assertEqual({}, moved, 'caller chose -> now installed')


class ClientOnCallerLibraries(unittest.TestCase):

    def test_client_builds_and_closes(self):
        conf = cfg.ConfigOpts()
        fixture = conffixture.ConfFixture(conf, transport_url='fake:/')
        fixture.setUp()
        self.addCleanup(fixture.cleanUp)
        conf([], default_config_files=[])
        client = accel_client.AccelClient(conf, host='h1')
        self.addCleanup(client.close)
        self.assertEqual('h1', client.host)
