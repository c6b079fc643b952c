# SPDX-License-Identifier: Apache-2.0
"""nova 34's own unit tests of ``nova.virt.images``, ``nova.privsep.qemu``
and the libvirt image helpers, with accel-daemon's integration installed
as ``accel-nova-compute`` installs it, and a daemon answering (suite
``nova-installed``; see installed.py).
"""

import installed

TARGETS = ('nova.tests.unit.virt.test_images',
           'nova.tests.unit.privsep.test_qemu',
           'nova.tests.unit.virt.libvirt.test_utils')

# test id -> (why it cannot pass with the integration installed, a text
# its error must contain).  None: every test passes.
EXPECTED_FAILURES: dict = {}

SERVICE = installed.Service(
    'nova-installed', 'nova.tests.unit', 'accel_daemon.integrations.nova',
    'accel_daemon.cmd.nova_compute', ('nova.virt.images', 'convert_image'))


def load_tests(loader, tests, pattern):
    return SERVICE.suite(TARGETS, EXPECTED_FAILURES)
