# SPDX-License-Identifier: Apache-2.0
"""contrib/cinder-configurable-image-accelerators.patch against the
cinder 29.0.0 of this venv.

Runs in the cinder caller venv (tools/run-caller-tests.sh, suite
``cinder-switch``).  The patch must apply to the installed cinder with
``patch -p1 --dry-run``, without offset or fuzz.  Then, applied to a copy
of the installed ``cinder`` package, a child interpreter that imports the
copy (and accel_daemon, the venv's) parses a configuration file the way
cinder does and builds cinder's real ``ImageAccel``: with
``image_compression_accelerators`` naming DaemonAccel first, the engine is
DaemonAccel and compresses then decompresses a file in place through an
in-process daemon; without the option, the engine is cinder's gzip one.
accel-cinder-volume's ``install()`` on the patched copy changes the
option's default only (cinder's engine list, which the patch keeps as that
default).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import cinder

HERE = os.path.dirname(os.path.abspath(__file__))
PATCH = os.path.join(HERE, os.pardir, os.pardir, 'contrib',
                     'cinder-configurable-image-accelerators.patch')
SITE = os.path.dirname(os.path.dirname(os.path.abspath(cinder.__file__)))
DAEMON_ACCEL = 'accel_daemon.integrations.cinder.DaemonAccel'
GZIP_ACCEL = 'cinder.image.accelerators.gzip.AccelGZIP'

# The child: cinder from the patched copy, configured from a file only.
CHILD = r'''
import gzip, json, os, sys
from oslo_config import cfg
import cinder
from cinder.common import config  # noqa: F401  (cinder's options)
from cinder.image import accelerator
from accel_daemon.integrations import cinder as integration
import inprocess

conf_file, data_dir, install = sys.argv[1], sys.argv[2], sys.argv[3]
CONF = cfg.CONF
if install == 'install':
    # As accel-cinder-volume does, before cinder parses its configuration.
    from accel_daemon.cmd import cinder_volume
    cinder_volume.install()
CONF(['--config-file', conf_file], project='cinder')
out = {'cinder': cinder.__file__,
       'option': CONF.image_compression_accelerators,
       'has_list': hasattr(accelerator, '_ACCEL_PATH_PREFERENCE_ORDER_LIST')}
daemon = inprocess.Daemon('contrib').start()
try:
    # The daemon runs on oslo.messaging's fake transport, which only the
    # client built on it reaches: the integration's shared client is that
    # one (cinder's configuration would name the real broker).
    integration._shared.client = daemon.client()
    image = os.path.join(daemon.images, 'volume.img')
    data = b''.join(b'line %06d of a volume\n' % i for i in range(20000))
    with open(image, 'wb') as f:
        f.write(data)
    accel = accelerator.ImageAccel(image, image)
    engine = type(accel.engine)
    out['engine'] = '%s.%s' % (engine.__module__, engine.__qualname__)
    if out['engine'] == integration.PATH:
        accel.compress_img(run_as_root=False)
        with open(image, 'rb') as f:
            packed = f.read()
        out['compressed'] = gzip.decompress(packed) == data
        accel.decompress_img(run_as_root=False)
        with open(image, 'rb') as f:
            out['round_trip'] = f.read() == data
finally:
    daemon.stop()
print(json.dumps(out))
'''


class ContribPatchTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='contrib-')
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def patch(self, directory, *args):
        with open(PATCH) as f:
            return subprocess.run(['patch', '-p1', '-d', directory] +
                                  list(args), stdin=f, capture_output=True,
                                  text=True, check=False)

    def test_applies_cleanly_to_installed_cinder(self):
        self.assertTrue(os.path.exists(
            os.path.join(SITE, 'cinder', 'image', 'accelerator.py')))
        proc = self.patch(SITE, '--dry-run')
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        for word in ('offset', 'fuzz', 'FAILED', 'reject'):
            self.assertNotIn(word, proc.stdout + proc.stderr)
        self.assertIn('checking file cinder/image/accelerator.py',
                      proc.stdout)

    def patched_copy(self):
        root = os.path.join(self.tmp, 'site')
        shutil.copytree(os.path.join(SITE, 'cinder'),
                        os.path.join(root, 'cinder'),
                        ignore=shutil.ignore_patterns('__pycache__'))
        proc = self.patch(root)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        return root

    def run_child(self, root, conf_text, install=False):
        conf = os.path.join(self.tmp, 'cinder.conf')
        with open(conf, 'w') as f:
            f.write(conf_text)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, HERE]))
        proc = subprocess.run(
            [sys.executable, '-c', CHILD, conf, self.tmp,
             'install' if install else 'no'], env=env,
            capture_output=True, text=True, timeout=300, check=False)
        self.assertEqual(proc.returncode, 0, proc.stderr[-4000:])
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        # The patched copy, not the venv's cinder.
        self.assertTrue(out['cinder'].startswith(root + os.sep), out)
        # Kept, as the option's default.
        self.assertTrue(out['has_list'])
        return out

    def test_patched_cinder_picks_daemon_accel_from_config(self):
        root = self.patched_copy()
        out = self.run_child(
            root, '[DEFAULT]\nimage_compression_accelerators = %s,%s\n'
            % (DAEMON_ACCEL, GZIP_ACCEL))
        self.assertEqual(out['option'], [DAEMON_ACCEL, GZIP_ACCEL])
        self.assertEqual(out['engine'], DAEMON_ACCEL)
        self.assertTrue(out['compressed'], out)
        self.assertTrue(out['round_trip'], out)

        # Without the option: cinder's own engines, gzip on this host
        # (no QAT).
        out = self.run_child(root, '[DEFAULT]\n')
        self.assertEqual(out['option'][-1], GZIP_ACCEL)
        self.assertNotIn(DAEMON_ACCEL, out['option'])
        self.assertEqual(out['engine'], GZIP_ACCEL)

    def test_console_script_install_sets_the_default_only(self):
        """accel-cinder-volume's install() on a patched cinder: DaemonAccel
        first in the option's default; an operator's list stays as set."""
        root = self.patched_copy()
        out = self.run_child(root, '[DEFAULT]\n', install=True)
        self.assertEqual(out['option'][0], DAEMON_ACCEL)
        self.assertEqual(out['option'][-1], GZIP_ACCEL)
        self.assertEqual(out['engine'], DAEMON_ACCEL)
        self.assertTrue(out['round_trip'], out)

        out = self.run_child(
            root, '[DEFAULT]\nimage_compression_accelerators = %s\n'
            % GZIP_ACCEL, install=True)
        self.assertEqual(out['option'], [GZIP_ACCEL])
        self.assertEqual(out['engine'], GZIP_ACCEL)

    def test_patched_cinders_own_tests_pass(self):
        """cinder's accelerator tests, the patch's two new ones included,
        in the patched copy."""
        root = self.patched_copy()
        env = dict(os.environ, PYTHONPATH=root)
        proc = subprocess.run(
            [sys.executable, '-m', 'unittest', '-v',
             'cinder.tests.unit.image.test_accelerator',
             'cinder.tests.unit.image.accelerators.test_qat_gzip'],
            env=env, cwd=self.tmp, capture_output=True, text=True,
            timeout=300, check=False)
        self.assertEqual(proc.returncode, 0, proc.stderr[-4000:])
        self.assertIn('test_engines_from_configuration', proc.stderr)
        self.assertIn('test_default_engines', proc.stderr)
        self.assertIn('Ran 14 tests', proc.stderr)
