# SPDX-License-Identifier: Apache-2.0
"""nova 34's own unit tests of ``nova.virt.images``, ``nova.privsep.qemu``
and the libvirt image helpers, with accel-daemon's integration installed
as ``accel-nova-compute`` installs it, and a daemon answering (suite
``nova-installed``; see installed.py).
"""

import unittest

import installed

TARGETS = ('nova.tests.unit.virt.test_images',
           'nova.tests.unit.privsep.test_qemu',
           'nova.tests.unit.virt.libvirt.test_utils')

# test id -> (why it cannot pass with the integration installed, a text
# its error must contain).  None: every test passes.
EXPECTED_FAILURES: dict = {}

DAEMON = None


def setup():
    global DAEMON
    from accel_daemon.cmd import nova_compute
    from accel_daemon.integrations import nova as integration

    DAEMON = installed.start_daemon('nova-installed')
    # The daemon is on oslo.messaging's fake transport: only a client
    # built on it reaches it.
    integration._shared.client = DAEMON.client()
    nova_compute.install()


class IntegrationIsLive(unittest.TestCase):
    """The integration is in place and its daemon answers."""

    def test_installed_and_answering(self):
        from nova.virt import images

        from accel_daemon.integrations import nova as integration

        self.assertIs(images.convert_image, integration.convert_image)
        caps = integration.shared_client().capabilities()
        self.assertEqual(caps['allowed_dirs'], [DAEMON.images])


class IntegrationWasUsed(IntegrationIsLive):
    """Last: still live, and nova's tests went through it."""

    def test_used_and_never_without_an_answer(self):
        from accel_daemon.integrations import nova as integration

        installed.assert_used(self, integration._fallbacks_logged)


def load_tests(loader, tests, pattern):
    return installed.suite('nova.tests.unit', TARGETS, EXPECTED_FAILURES,
                           IntegrationIsLive, IntegrationWasUsed, setup)
