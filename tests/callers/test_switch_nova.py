# SPDX-License-Identifier: Apache-2.0
"""accel-nova-compute: the real console script, nova 34's real
``nova.cmd.compute.main()``.

Runs in the nova caller venv (tools/run-caller-tests.sh, suite
``nova-switch``).  nova-compute's main() parses the configuration, sets
up logging, privsep, os-brick and os-vif, then builds its service, whose
constructor waits for nova-conductor without end (nothing answers).
switchtest's observer ends the process with status 97 when that
constructor (``nova.service.Service.__init__``) is entered: a known point
of the real start-up, after everything main() does with the
configuration.  Nothing of nova is patched.
"""

import unittest

import facts
import switchtest


class AccelNovaComputeTest(switchtest.SwitchTestCase):

    SERVICE = 'nova'
    SCRIPT = 'accel-nova-compute'
    COMMAND = 'nova.cmd.compute'
    STOP = 'nova/service.py:__init__'
    BASE = ('[DEFAULT]\ntransport_url = fake:/\nstate_path = %(tmp)s\n'
            '[oslo_concurrency]\nlock_path = %(tmp)s\n')

    def assertReached(self, run):
        self.assertEqual(run.status, switchtest.STOP_STATUS, run)
        self.assertIsNotNone(run.event('stop'), run)

    def test_enabled_installs_before_nova_main(self):
        conf = self.conf('nova.conf', 'true')
        argv = ['--config-file', conf]
        run = self.run_script(*argv)
        self.assertReached(run)
        self.assertServiceMainRan(run, argv)
        self.assertInstalled(run)
        # nova chose its concurrency model before the integration (and so
        # oslo.messaging through accel-daemon's client) was imported:
        # native threads from nova 34 on, eventlet in 32 and 33.
        integration = run.event('integration')
        threads = facts.major('nova') >= 34
        self.assertEqual(integration['eventlet_patched'], not threads)
        self.assertEqual(integration['backend'], 'BackendType.THREADING'
                         if threads else 'BackendType.EVENTLET')
        self.assertEqual(run.report['conf']['config_file'], [conf])
        self.assertEqual(run.event('stop')['convert_image'],
                         'accel_daemon.integrations.nova')

    def test_another_signature_is_refused_and_nova_runs_as_it_is(self):
        run = self.run_other_release('signature', 'signature')
        self.assertIn('new_parameter', run.output)

    def test_another_release_is_refused_and_nova_runs_as_it_is(self):
        self.run_other_release('release', 'nova 1.0.0 is not a release')

    def test_disabled_runs_nova_unchanged(self):
        conf = self.conf('nova.conf', 'false')
        argv = ['--config-file', conf, '--debug']
        run = self.run_script(*argv)
        self.assertReached(run)
        self.assertServiceMainRan(run, argv)
        self.assertNotInstalled(run)

    def test_eventlet_mode_installs_after_patching(self):
        """With nova's eventlet mode, the integration is imported after
        nova monkey-patched."""
        conf = self.conf('nova.conf', 'true')
        run = self.run_script(
            '--config-file', conf,
            env={'OS_NOVA_DISABLE_EVENTLET_PATCHING': 'false'})
        self.assertReached(run)
        self.assertInstalled(run)
        self.assertTrue(run.event('integration')['eventlet_patched'])

    def test_config_dir_read_like_nova(self):
        self.run_config_dir()

    def test_default_files_read_like_nova(self):
        self.run_default_files()

    def test_invalid_value_is_refused_before_nova(self):
        self.assertRefusedBeforeService('yes please')


class SampleConfigTest(unittest.TestCase):
    """The sample a nova deployment generates with its own namespace
    and accel-daemon's client and nova namespaces: the switch and the
    integration's options, nothing of the daemon, nothing of the other
    service."""

    def test_namespaces_beside_novas(self):
        sample = switchtest.generate_sample(
            'nova.conf', 'accel_daemon.client', 'accel_daemon.nova')
        switchtest.assert_sample(self, sample, 'nova', 'cinder')
        # nova's own options are there too.
        self.assertIn('#compute_driver', sample)
