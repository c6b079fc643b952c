# SPDX-License-Identifier: Apache-2.0
"""What accel_daemon.integrations.nova will rely on in nova 34.0.0.

Runs in the nova caller venv (tools/run-caller-tests.sh).  Each test pins
one fact of nova's real code; when a nova release changes it, the test
fails and names what moved, before an integration silently breaks.
"""

import unittest

import facts
from facts import params
from facts import REQUIRED
from nova import exception
import nova.privsep
import nova.privsep.qemu
from nova.virt import images

# nova-compute's start-up (nova/cmd/compute.py main() ->
# nova.config.parse_args), without config files, database or broker.
NOVA_COMPUTE_STARTUP = '''
import nova.cmd.compute
from nova import config
config.parse_args(['nova-compute'], default_config_files=[],
                  configure_db=False)
CONF = config.CONF
'''


class ConvertImageFacts(unittest.TestCase):

    def test_virt_images_convert_image_signature(self):
        # The signature accel_daemon.integrations.nova.convert_image
        # copies, so that nova's callers need no change.
        self.assertEqual(
            [('source', REQUIRED), ('dest', REQUIRED),
             ('in_format', REQUIRED), ('out_format', REQUIRED),
             ('run_as_root', False), ('compress', False),
             ('src_encryption', None), ('dest_encryption', None)],
            params(images.convert_image))

    def test_convert_image_refuses_no_input_format(self):
        # Before any I/O: nova never lets qemu-img guess the format.
        with self.assertRaisesRegex(RuntimeError, 'security risk'):
            images.convert_image('/nonexistent/src', '/nonexistent/dst',
                                 None, 'raw')

    def test_privsep_convert_image_is_a_sys_admin_entrypoint(self):
        # An oslo.privsep entrypoint: partial(context._wrap, function).
        entry = nova.privsep.qemu.convert_image
        self.assertIs(nova.privsep.sys_admin_pctxt, entry.func.__self__)
        self.assertEqual(
            [('source', REQUIRED), ('dest', REQUIRED),
             ('in_format', REQUIRED), ('out_format', REQUIRED),
             ('instances_path', REQUIRED), ('compress', REQUIRED),
             ('src_encryption', None), ('dest_encryption', None)],
            params(entry.args[0]))

    def test_unprivileged_twin_has_the_same_parameters(self):
        self.assertEqual(
            params(nova.privsep.qemu.convert_image.args[0]),
            params(nova.privsep.qemu.unprivileged_convert_image))

    def test_fetch_to_raw_signature(self):
        self.assertEqual(
            [('context', REQUIRED), ('image_href', REQUIRED),
             ('path', REQUIRED), ('trusted_certs', None)],
            params(images.fetch_to_raw))


class ExceptionFacts(unittest.TestCase):

    def test_image_unacceptable(self):
        self.assertTrue(issubclass(exception.ImageUnacceptable,
                                   exception.Invalid))
        err = exception.ImageUnacceptable(image_id='IMG', reason='WHY')
        self.assertEqual('Image IMG is unacceptable: WHY', str(err))


class RpcFacts(unittest.TestCase):

    def test_nova_compute_sets_exchange_nova(self):
        # nova.config.set_lib_defaults: rpc.set_defaults('nova'). An
        # AccelClient built on nova's configuration does not inherit it: it
        # pins accel-daemon's own exchange.
        found = facts.exchanges(NOVA_COMPUTE_STARTUP)
        self.assertEqual({'control_exchange': 'nova',
                          'client': 'accel_daemon'}, found)

    def test_client_reaches_default_daemon(self):
        # Was a known gap: the client sent to 'nova'
        # while the daemon listened on 'openstack'. Both now use
        # 'accel_daemon'.
        self.assertEqual(
            facts.daemon_exchange(),
            facts.exchanges(NOVA_COMPUTE_STARTUP)['client'])
