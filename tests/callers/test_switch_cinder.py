# SPDX-License-Identifier: Apache-2.0
"""accel-cinder-volume: the real console script, cinder 29's real
``cinder.cmd.volume.main()``.

Runs in the cinder caller venv (tools/run-caller-tests.sh, suite
``cinder-switch``).  The configurations hold no ``enabled_backends``, so
cinder's own main() parses them, sets up logging, privsep and os-brick,
then stops at its first check with one logged error and exit status 1:
a known early failure point of the real start-up, reached without any
patch.  switchtest's observer reports what the process looked like when
main() was entered.
"""

import os
import unittest

import switchtest

NO_BACKENDS = 'does not specify "enabled_backends"'
DAEMON_ACCEL = 'accel_daemon.integrations.cinder.DaemonAccel'
CINDER_ENGINES = ['cinder.image.accelerators.qat.AccelQAT',
                  'cinder.image.accelerators.gzip.AccelGZIP']


class AccelCinderVolumeTest(switchtest.SwitchTestCase):

    SERVICE = 'cinder'
    SCRIPT = 'accel-cinder-volume'
    COMMAND = 'cinder.cmd.volume'
    BASE = ('[DEFAULT]\ntransport_url = fake:/\nstate_path = %(tmp)s\n'
            'lock_path = %(tmp)s\n')

    def assertReached(self, run):
        """cinder's main() ran to its enabled_backends check."""
        self.assertEqual(run.status, 1, run)
        self.assertIn(NO_BACKENDS, run.output)

    def test_enabled_installs_before_cinder_main(self):
        conf = self.conf('cinder.conf', 'true')
        argv = ['--config-file', conf]
        run = self.run_script(*argv)
        self.assertReached(run)
        main = self.assertServiceMainRan(run, argv)
        self.assertInstalled(run)
        # DaemonAccel is cinder's first engine, before main() runs.
        self.assertEqual(main['accelerators'], [DAEMON_ACCEL] + CINDER_ENGINES)
        # cinder.cmd.volume monkey-patched before the integration was
        # imported (cinder-volume's default model).
        self.assertTrue(run.event('integration')['eventlet_patched'])
        self.assertEqual(run.report['conf']['config_file'], [conf])

    def test_another_signature_is_refused_and_cinder_runs_as_it_is(self):
        run = self.run_other_release('signature', 'signature')
        self.assertIn('new_parameter', run.output)

    def test_another_release_is_refused_and_cinder_runs_as_it_is(self):
        self.run_other_release('release', 'cinder 1.0.0 is not a release')

    def test_disabled_runs_cinder_unchanged(self):
        conf = self.conf('cinder.conf', 'false')
        argv = ['--config-file', conf, '--debug']
        run = self.run_script(*argv)
        self.assertReached(run)
        main = self.assertServiceMainRan(run, argv)
        self.assertNotInstalled(run)
        self.assertEqual(main['accelerators'], CINDER_ENGINES)

    def test_unset_is_disabled(self):
        conf = self.conf('cinder.conf', None)
        run = self.run_script('--config-file', conf)
        self.assertReached(run)
        self.assertNotInstalled(run)

    def test_config_dir_read_like_cinder(self):
        self.run_config_dir()

    def test_later_file_wins(self):
        on = self.conf('on.conf', 'true')
        off = self.conf('off.conf', 'false')
        run = self.run_script('--config-file', on, '--config-file', off)
        self.assertReached(run)
        self.assertNotInstalled(run)

    def test_default_files_read_like_cinder(self):
        self.assertServiceMainRan(self.run_default_files(), [])

    def test_environment_variable(self):
        conf = self.conf('cinder.conf', None)
        run = self.run_script('--config-file', conf,
                              env={'OS_ACCEL_DAEMON_CLIENT__ENABLED': 'true'})
        self.assertReached(run)
        self.assertInstalled(run)

    def test_invalid_value_is_refused_before_cinder(self):
        line = self.assertRefusedBeforeService('maybe')
        self.assertIn("'maybe'", line)

    def test_missing_file_is_cinders_error(self):
        missing = os.path.join(self.tmp, 'missing.conf')
        run = self.run_script('--config-file', missing)
        self.assertNotEqual(run.status, 0)
        self.assertIsNotNone(run.event('main'), run)
        self.assertIn('ConfigFilesNotFoundError', run.output)
        self.assertIsNone(run.event('integration'), run)


class SampleConfigTest(unittest.TestCase):
    """The sample a cinder deployment generates with accel-daemon's client
    and cinder namespaces beside the library namespaces of cinder's own
    generator configuration: the switch and the integration's options,
    nothing of the daemon, nothing of nova.  (The ``cinder`` namespace
    itself needs the optional backup and volume drivers' libraries, which
    cinder's genconfig environment installs and this venv does not.)"""

    def test_namespaces_beside_cinders(self):
        sample = switchtest.generate_sample(
            'oslo.messaging', 'oslo.log', 'oslo.concurrency',
            'keystonemiddleware.auth_token', 'accel_daemon.client',
            'accel_daemon.cinder')
        switchtest.assert_sample(self, sample, 'cinder', 'nova')
        groups = switchtest.sample_groups(sample)
        # The other namespaces' options are there too.
        self.assertIn('#transport_url', sample)
        self.assertIn('[keystone_authtoken]', groups)
