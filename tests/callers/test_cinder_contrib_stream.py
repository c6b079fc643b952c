# SPDX-License-Identifier: Apache-2.0
"""contrib/cinder-stream-create-from-image.patch against the cinder 29.0.0
of this venv.

Runs in the cinder caller venv (tools/run-caller-tests.sh, suite
``cinder-switch``).  The patch must apply to the installed cinder with
``patch -p1 --dry-run``, without offset or fuzz.  Then, applied to a copy
of the installed ``cinder`` package, a child interpreter that imports the
copy runs cinder's real create-volume-from-image step
(``CreateVolumeFromSpecTask._create_from_image_cache_or_download``, with
a driver whose ``copy_image_to_volume`` calls ``fetch_to_volume_format``
as the file and LVM drivers do) against a real accel-daemon
(``realdaemon``): with the integration installed, the gzip'd raw image is
streamed onto the volume and no file is ever made in
``image_conversion_dir``; without it, cinder's own hook keeps the first
download, and the volume is the same.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import cinder

import cinderflows
import realdaemon

HERE = os.path.dirname(os.path.abspath(__file__))
PATCH = os.path.join(HERE, os.pardir, os.pardir, 'contrib',
                     'cinder-stream-create-from-image.patch')
SITE = os.path.dirname(os.path.dirname(os.path.abspath(cinder.__file__)))
MIB = realdaemon.MIB

# The child: cinder from the patched copy, configured from a file.
CHILD = r'''
import gzip, json, os, sys
from unittest import mock
from oslo_config import cfg
import cinder
from cinder.common import config  # noqa: F401  (cinder's options)
from cinder import context as cinder_context
from cinder.image import image_utils
from cinder import objects
objects.register_all()   # as cinder-volume does before its flows load
from cinder.volume.flows.manager import create_volume  # noqa: E402
from accel_daemon.integrations import cinder as integration
import cinderflows

conf_file, source, volume_path, install = sys.argv[1:5]
cfg.CONF(['--config-file', conf_file], project='cinder',
         default_config_files=[])
if install == 'install':
    integration.install()
made = []
original = image_utils.create_temporary_file


def counted(*args, **kwargs):
    made.append(args)
    return original(*args, **kwargs)


image_utils.create_temporary_file = counted
service = cinderflows.ImageService()
with open(source, 'rb') as f:
    image_id = service.add(gzip.compress(f.read(), 1), 'raw', 'compressed')


class Driver:
    """What a file or LVM driver does: fetch_to_volume_format onto the
    volume's path."""

    def create_volume(self, volume):
        return {}

    def copy_image_to_volume(self, context, volume, image_service,
                             image_id, disable_sparse=False):
        image_utils.fetch_to_volume_format(
            context, image_service, image_id, volume_path, 'raw', '1M',
            size=volume.size, disable_sparse=disable_sparse)


volume = mock.MagicMock(id='volume-1', size=1, encryption_key_id=None,
                        service_topic_queue='host@backend#pool')
task = create_volume.CreateVolumeFromSpecTask(
    mock.Mock(), mock.Mock(), Driver(), image_volume_cache=None)
task._create_from_image_cache_or_download(
    cinder_context.get_admin_context(), volume, None, image_id,
    service.show(None, image_id), service)
print(json.dumps({
    'cinder': cinder.__file__, 'temporary_files': len(made),
    'hook': image_utils.download_before_volume.__module__,
    'fallbacks': sorted(integration._fallbacks_logged)}))
'''


class StreamCreatePatchTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.root = os.path.realpath(tempfile.mkdtemp(prefix='contrib-st-'))
        cls.daemon = realdaemon.Daemon('contrib-stream', root=cls.root)
        try:
            cls.daemon.start()
        except BaseException:
            cls.daemon.cleanup()
            shutil.rmtree(cls.root, ignore_errors=True)
            raise
        cls.conversion = cinderflows.configure(cls.daemon)
        cls.conf = os.path.join(cls.daemon.root, 'cinder.conf')

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        cls.daemon.cleanup()
        shutil.rmtree(cls.root, ignore_errors=True)

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='contrib-st-')
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def patch(self, directory, *args):
        with open(PATCH) as f:
            return subprocess.run(['patch', '-p1', '-d', directory] +
                                  list(args), stdin=f, capture_output=True,
                                  text=True, check=False)

    def test_applies_cleanly_to_installed_cinder(self):
        proc = self.patch(SITE, '--dry-run')
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        for word in ('offset', 'fuzz', 'FAILED', 'reject'):
            self.assertNotIn(word, proc.stdout + proc.stderr)
        for name in ('cinder/image/image_utils.py',
                     'cinder/volume/flows/manager/create_volume.py'):
            self.assertIn('checking file %s' % name, proc.stdout)

    def create(self, install):
        root = os.path.join(self.tmp, 'site')
        shutil.copytree(os.path.join(SITE, 'cinder'),
                        os.path.join(root, 'cinder'),
                        ignore=shutil.ignore_patterns('__pycache__'))
        proc = self.patch(root)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        volumes = os.path.join(self.daemon.images, 'volumes')
        os.makedirs(volumes, exist_ok=True)
        source = realdaemon.make_volume(
            os.path.join(self.tmp, 'source.raw'), 24 * MIB, seed=3)
        volume = os.path.join(volumes, 'volume-%s' % install)
        with open(volume, 'wb') as f:
            f.truncate(24 * MIB)
        self.addCleanup(os.unlink, volume)
        before = cinderflows.task_ids(self.daemon)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, HERE]))
        proc = subprocess.run(
            [sys.executable, '-c', CHILD, self.conf, source, volume,
             install], env=env, capture_output=True, text=True,
            timeout=300, check=False)
        self.assertEqual(proc.returncode, 0, proc.stderr[-4000:])
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        self.assertTrue(out['cinder'].startswith(root + os.sep), out)
        self.assertTrue(realdaemon.same_bytes(source, volume))
        self.assertEqual([], os.listdir(self.conversion))
        tasks = [(t['kind'], t['state'])
                 for t in cinderflows.new_tasks(self.daemon, before)]
        return out, tasks

    def test_with_the_integration_the_image_is_streamed_onto_the_volume(
            self):
        out, tasks = self.create('install')
        self.assertEqual('accel_daemon.integrations.cinder', out['hook'])
        self.assertEqual(0, out['temporary_files'], out)
        self.assertEqual([('stream_in', 'succeeded')], tasks)

    def test_without_it_cinder_downloads_first_as_before(self):
        out, tasks = self.create('no')
        self.assertEqual('cinder.image.image_utils', out['hook'])
        # The image, and fetch_to_volume_format's own (empty) temporary
        # file, which it gives up for the image found there.
        self.assertEqual(2, out['temporary_files'], out)
        # cinder's own path, with no daemon: the gzip engine and qemu-img.
        self.assertEqual([], tasks)


if __name__ == '__main__':
    unittest.main()
