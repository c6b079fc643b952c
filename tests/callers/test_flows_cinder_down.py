# SPDX-License-Identifier: Apache-2.0
"""cinder 29.0.0's own image flows when the real accel-daemon goes away.

Runs in the cinder caller venv (tools/run-caller-tests.sh); see
test_flows_cinder for the set-up.  Each class has a daemon of its own
(``realdaemon``), since each ends it:

* killed (SIGKILL of the daemon, its privsep helper and tools) in the
  middle of a large conversion of ``upload_volume``;
* stopped after it answered: cinder's next flow still routes to it (the
  answer is cached, ``[accel_daemon_cinder] exist_cache_ttl``) and must
  fail, typed;
* never there: nothing routes to it and cinder's own code does the work
  (QAT/gzip engines, qemu-img), each fallback logged.

In every failing case cinder gets an exception and nothing is written: no
upload, no partial volume, no file left in the conversion directory or
beside the volume.  Never a silent skip.
"""

import gzip
import os
import unittest

from oslo_concurrency import processutils

from cinder import context as cinder_context
from cinder import exception as cinder_exception
from cinder.image import accelerator
from cinder.image import image_utils

from accel_daemon.engine import paths
from accel_daemon import exception
from accel_daemon.integrations import cinder as integration
import cinderflows
import realdaemon

MIB = realdaemon.MIB
SIZE = 16 * MIB
ImageService = cinderflows.ImageService
read, write = cinderflows.read, cinderflows.write


def setUpModule():
    global CTX
    integration.install()
    CTX = cinder_context.get_admin_context()


def tearDownModule():
    integration.uninstall()
    integration.reset()


class Base(unittest.TestCase):
    start = True
    # cinder.conf [accel_daemon_cinder] of the class.
    ttl = 5.0

    @classmethod
    def setUpClass(cls):
        cls.daemon = realdaemon.Daemon('flows-down')
        if cls.start:
            try:
                cls.daemon.start()
            except BaseException:
                cls.daemon.cleanup()
                raise
        # Short RPC timeouts: a dead daemon is noticed in 2 s.
        cls.conversion = cinderflows.configure(
            cls.daemon, timeout=2,
            accel_cinder={'exist_cache_ttl': cls.ttl, 'probe_timeout': 1})
        cls.volumes = os.path.join(cls.daemon.images, 'volumes')
        os.makedirs(cls.volumes)

    @classmethod
    def tearDownClass(cls):
        integration.reset()
        cls.daemon.cleanup()

    def assertNothingLeft(self, *volumes):
        self.assertEqual([], os.listdir(self.conversion))
        self.assertEqual(sorted(os.path.basename(v) for v in volumes),
                         sorted(os.listdir(self.volumes)))
        self.assertEqual([], paths.stray_temp_files(self.volumes))

    def volume(self, name, seed=1, size=SIZE):
        path = os.path.join(self.volumes, name)
        realdaemon.make_volume(path, size, seed=seed)
        self.addCleanup(os.unlink, path)
        return path

    def old_volume(self, name):
        path = write(os.path.join(self.volumes, name), b'\x5a' * SIZE)
        self.addCleanup(os.unlink, path)
        return path

    def gzipped_raw(self, source):
        service = ImageService()
        return service, service.add(gzip.compress(read(source), 1), 'raw',
                                    'compressed')


class KilledMidFlow(Base):

    def test_upload_volume_killed_while_streaming(self):
        volume = os.path.join(self.volumes, 'volume-big')
        realdaemon.big_volume(volume, 192)
        self.addCleanup(os.unlink, volume)
        digest = realdaemon.sha256(volume)
        service = ImageService()
        meta = {'id': 'image-killed', 'disk_format': 'qcow2',
                'container_format': 'compressed'}
        with realdaemon.KillWhenRunning(self.daemon,
                                        'stream_out') as killer:
            with self.assertRaises(
                    processutils.ProcessExecutionError) as caught:
                image_utils.upload_volume(CTX, service, meta, volume,
                                          volume_format='raw')
        self.assertTrue(killer.killed, 'the conversion ended before the '
                        'daemon could be killed')
        self.assertIsInstance(caught.exception.accel_error,
                              exception.ServiceUnavailable)
        self.assertEqual({}, service.uploads)
        self.assertEqual(digest, realdaemon.sha256(volume))
        self.assertNothingLeft(volume)


class StoppedAfterAnswering(Base):
    # Long enough for the whole class: cinder keeps routing to the daemon.
    ttl = 300.0

    def setUp(self):
        if not self.daemon.running:
            return
        # A flow that works, so that cinder has seen the daemon...
        source = write(os.path.join(self.volumes, 'source-ok'),
                       b'ok' * MIB)
        dest = write(os.path.join(self.volumes, 'volume-ok'), b'\0' * MIB)
        service, image_id = self.gzipped_raw(source)
        image_utils.fetch_to_volume_format(CTX, service, image_id, dest,
                                           'raw', '1M')
        self.assertEqual(b'ok' * MIB, read(dest))
        os.unlink(source)
        os.unlink(dest)
        # ...then it stops, as a service manager stops it.
        self.assertEqual(0, self.daemon.stop())

    def test_fetch_to_volume_format_raises(self):
        source = self.volume('source-1', seed=2)
        dest = self.old_volume('volume-1')
        service, image_id = self.gzipped_raw(source)
        # cinder's ImageAccel keeps the engine that answered; its
        # decompress_img raises instead of skipping the work.
        with self.assertRaises(
                cinder_exception.CinderAcceleratorError) as caught:
            image_utils.fetch_to_volume_format(CTX, service, image_id, dest,
                                               'raw', '1M')
        self.assertIsInstance(caught.exception.accel_error,
                              exception.ServiceUnavailable)
        self.assertEqual(b'\x5a' * SIZE, read(dest))
        self.assertNothingLeft(source, dest)

    def test_upload_volume_raises(self):
        volume = self.volume('volume-2', seed=3)
        service = ImageService()
        meta = {'id': 'image-2', 'disk_format': 'qcow2',
                'container_format': 'compressed'}
        with self.assertRaises(
                processutils.ProcessExecutionError) as caught:
            image_utils.upload_volume(CTX, service, meta, volume,
                                      volume_format='raw')
        self.assertIsInstance(caught.exception.accel_error,
                              exception.ServiceUnavailable)
        self.assertEqual({}, service.uploads)
        self.assertNothingLeft(volume)

    def test_image_accel_raises_in_place(self):
        tmp = image_utils.create_temporary_file(prefix='inplace_')
        self.addCleanup(os.unlink, tmp)
        write(tmp, b'data of a volume\n' * 10000)
        accel = accelerator.ImageAccel(tmp, tmp)
        self.assertIsInstance(accel.engine, integration.DaemonAccel)
        for method in (accel.compress_img, accel.decompress_img):
            with self.subTest(method.__name__):
                with self.assertRaises(
                        cinder_exception.CinderAcceleratorError):
                    method(run_as_root=True)
                self.assertEqual(b'data of a volume\n' * 10000, read(tmp))


class NeverThere(Base):
    """Nothing answers: cinder's own code does the work, correctly."""
    start = False
    ttl = 0.0

    def test_fetch_to_volume_format_by_cinders_own_code(self):
        source = self.volume('source-3', seed=4)
        dest = self.old_volume('volume-3')
        service, image_id = self.gzipped_raw(source)
        accel = accelerator.ImageAccel('/nonexistent', '/nonexistent')
        # cinder's own gzip engine, not ours.
        self.assertNotIsInstance(accel.engine, integration.DaemonAccel)
        image_utils.fetch_to_volume_format(CTX, service, image_id, dest,
                                           'raw', '1M')
        self.assertTrue(realdaemon.same_bytes(source, dest))
        self.assertIn('a daemon that does not answer',
                      integration._fallbacks_logged)
        self.assertNothingLeft(source, dest)
