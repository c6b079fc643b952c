# SPDX-License-Identifier: Apache-2.0
"""Runs accel-cinder-volume / accel-nova-compute for the tests of
test_switch_cinder.py and test_switch_nova.py (standard library only).

The console script is the real one the venv's pip installed from
setup.cfg, run as a child process with its own arguments, and the
service's ``main()`` is the real one.  What the tests learn about the
process comes from an observer loaded at its start-up
(``switchprobe/sitecustomize.py``) that records, without changing
anything, what the process looks like when the integration module is
first imported and when the service's ``main()`` is entered, plus the
configuration files the service parsed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE = os.path.join(HERE, 'switchprobe')
STOP_STATUS = 97


class Run:
    """One run of a console script: ``status``, ``stderr``, ``report``."""

    def __init__(self, proc: subprocess.CompletedProcess,
                 report: dict | None) -> None:
        self.status = proc.returncode
        self.stderr = proc.stderr
        # oslo.log writes to stdout without a log file and use_stderr.
        self.output = proc.stdout + proc.stderr
        self.report = report or {}

    def event(self, name: str) -> dict | None:
        for event in self.report.get('events', []):
            if event['event'] == name:
                return event
        return None

    def __repr__(self) -> str:
        return '<Run status=%s report=%s output=...%s>' % (
            self.status, json.dumps(self.report)[:2000], self.output[-3000:])


class SwitchTestCase(unittest.TestCase):
    """Per test: a temporary HOME and working directory, so oslo.config's
    default files are the test's (``~/.SERVICE/SERVICE.conf``), never the
    host's."""

    SERVICE = ''          # cinder or nova
    SCRIPT = ''           # accel-cinder-volume or accel-nova-compute
    STOP = None           # ACCEL_PROBE_STOP for the observer
    BASE = ''             # settings every configuration file starts with
    COMMAND = ''          # the service's command module (cinder.cmd.volume)

    def assertReached(self, run: Run) -> None:
        """The service's main() ran to its known stopping point."""
        raise NotImplementedError

    def setUp(self) -> None:
        self.tmp = os.path.realpath(tempfile.mkdtemp(prefix='switch-'))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.home = os.path.join(self.tmp, 'home')
        os.makedirs(self.home)
        self.script = os.path.join(os.path.dirname(sys.executable),
                                   self.SCRIPT)

    def conf(self, name: str, enabled: str | None,
             extra: str = '') -> str:
        path = os.path.join(self.tmp, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        text = self.BASE % {'tmp': self.tmp} + extra
        if enabled is not None:
            text += '\n[accel_daemon_client]\nenabled = %s\n' % enabled
        with open(path, 'w') as f:
            f.write(text)
        return path

    def run_script(self, *args: str, env: dict | None = None) -> Run:
        report = os.path.join(self.tmp, 'report.json')
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith('OS_')}
        environ.update(HOME=self.home, PYTHONPATH=PROBE,
                       ACCEL_PROBE_SERVICE=self.SERVICE,
                       ACCEL_PROBE_REPORT=report)
        if self.STOP:
            environ['ACCEL_PROBE_STOP'] = self.STOP
        environ.update(env or {})
        proc = subprocess.run([self.script] + list(args), env=environ,
                              cwd=self.tmp, capture_output=True, text=True,
                              timeout=180, check=False)
        data = None
        if os.path.exists(report):
            with open(report) as f:
                data = json.load(f)
        return Run(proc, data)

    # -- what every run of the real main() shows -------------------------

    def assertServiceMainRan(self, run: Run, argv: list[str]) -> dict:
        main = run.event('main')
        self.assertIsNotNone(main, run)
        # The arguments the service saw are the command's own, untouched.
        self.assertEqual(main['argv'], [self.script] + argv)
        self.assertEqual(run.report['final']['argv'], [self.script] + argv)
        return main

    def assertInstalled(self, run: Run) -> None:
        main = run.event('main')
        self.assertEqual(main['convert_image'],
                         'accel_daemon.integrations.%s' % self.SERVICE, run)
        integration = run.event('integration')
        self.assertIsNotNone(integration, run)
        # The service's command module was imported (it chose its
        # concurrency model) before anything of the integration (cinder 29
        # and nova 33 on do it in a monkey_patch module of their own).
        self.assertIn(self.COMMAND, integration['modules'])
        if importlib.util.find_spec('%s.monkey_patch' % self.SERVICE):
            self.assertIn('%s.monkey_patch' % self.SERVICE,
                          integration['modules'])
        self.assertNotIn('accel_daemon.client', integration['modules'])

    def assertNotReplaced(self, run: Run) -> None:
        """The integration ran but replaced nothing."""
        main = run.event('main')
        self.assertIsNotNone(main, run)
        self.assertIsNotNone(run.event('integration'), run)
        self.assertNotEqual(main['convert_image'],
                            'accel_daemon.integrations.%s' % self.SERVICE,
                            run)

    # -- the runs both services check alike -------------------------------

    def run_other_release(self, alter: str, says: str) -> Run:
        """Switched on, in a service that looks like another release
        (switchprobe's ACCEL_PROBE_ALTER): nothing is replaced, one ERROR
        line says why, and the service's own main() runs as it is."""
        conf = self.conf('%s.conf' % self.SERVICE, 'true')
        argv = ['--config-file', conf]
        run = self.run_script(*argv, env={'ACCEL_PROBE_ALTER': alter})
        self.assertReached(run)
        self.assertServiceMainRan(run, argv)
        self.assertNotReplaced(run)
        lines = [ln for ln in run.output.splitlines()
                 if 'runs without accel-daemon' in ln]
        self.assertEqual(len(lines), 1, run.output[-3000:])
        self.assertIn('accel-daemon: %s runs without accel-daemon'
                      % self.SERVICE, lines[0])
        self.assertIn(says, lines[0])
        return run

    def run_config_dir(self) -> Run:
        """A later --config-dir overrides an earlier --config-file, as in
        the service's own parsing."""
        conf = self.conf('%s.conf' % self.SERVICE, 'false')
        self.conf('%s.conf.d/accel.conf' % self.SERVICE, 'true')
        confd = os.path.join(self.tmp, '%s.conf.d' % self.SERVICE)
        argv = ['--config-file', conf, '--config-dir', confd]
        run = self.run_script(*argv)
        self.assertReached(run)
        self.assertServiceMainRan(run, argv)
        self.assertInstalled(run)
        return run

    def run_default_files(self) -> Run:
        """No --config-file: oslo.config's default files for the service's
        project (here ~/.SERVICE/SERVICE.conf), found for the switch as the
        service finds them."""
        conf = self.conf('home/.{0}/{0}.conf'.format(self.SERVICE), 'true')
        run = self.run_script()
        self.assertReached(run)
        self.assertInstalled(run)
        self.assertIn(conf, run.report['conf']['config_file'])
        return run

    def assertRefusedBeforeService(self, value: str) -> str:
        """An invalid ``enabled`` stops the script, with one line, before
        the service's command module is imported; that line."""
        run = self.run_script('--config-file', self.conf(
            '%s.conf' % self.SERVICE, value))
        self.assertEqual(run.status, 1, run)
        lines = run.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, run.stderr)
        self.assertTrue(lines[0].startswith(
            '%s: [accel_daemon_client] enabled: ' % self.SCRIPT), lines)
        self.assertIsNone(run.event('main'), run)
        self.assertNotIn(self.COMMAND, run.report['final']['modules'])
        return lines[0]

    def assertNotInstalled(self, run: Run) -> None:
        main = run.event('main')
        self.assertNotEqual(main['convert_image'],
                            'accel_daemon.integrations.%s' % self.SERVICE)
        self.assertIsNone(run.event('integration'), run)
        self.assertNotIn('accel_daemon.integrations.%s' % self.SERVICE,
                         run.report['final']['modules'])
        self.assertIn(run.report['final']['convert_image'],
                      ('cinder.image.image_utils', 'nova.virt.images', None))


# The daemon's own groups: none belongs in a cinder or nova sample.
DAEMON_GROUPS = ('[accel_daemon]', '[accel_daemon_rpc]', '[compression]',
                 '[qemu_img]', '[tasks]', '[privsep_accel]')


def generate_sample(*namespaces: str) -> str:
    """oslo-config-generator of this venv, as a deployment of the caller
    runs it, with these namespaces."""
    args = [os.path.join(os.path.dirname(sys.executable),
                         'oslo-config-generator')]
    for namespace in namespaces:
        args += ['--namespace', namespace]
    proc = subprocess.run(args, capture_output=True, text=True,
                          timeout=300, check=False)
    if proc.returncode:
        raise AssertionError('oslo-config-generator failed:\n%s'
                             % proc.stderr[-3000:])
    return proc.stdout


def sample_groups(sample: str) -> list[str]:
    return [line for line in sample.splitlines() if line.startswith('[')]


def assert_sample(case: unittest.TestCase, sample: str, service: str,
                  other: str) -> None:
    """The sample holds the switch and ``service``'s integration options,
    nothing of ``other``'s integration, nothing of the daemon."""
    groups = sample_groups(sample)
    case.assertIn('[accel_daemon_client]', groups)
    case.assertIn('[accel_daemon_%s]' % service, groups)
    case.assertNotIn('[accel_daemon_%s]' % other, groups)
    for group in DAEMON_GROUPS:
        case.assertNotIn(group, groups)
    case.assertIn('#enabled = false', sample)
