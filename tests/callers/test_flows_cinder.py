# SPDX-License-Identifier: Apache-2.0
"""cinder 29.0.0's own image flows on the real accel-daemon.

Runs in the cinder caller venv (tools/run-caller-tests.sh).  The daemon is
the venv's installed ``accel-daemon`` with its privsep helper, on the real
RabbitMQ (``realdaemon``); cinder's functions are its real ones, switched
over by ``accel_daemon.integrations.cinder.install()``, on a cinder.conf
(``cinderflows``).  Only the image service is a stand-in.

Each test checks, besides cinder's result, that the daemon did the work
(its task list) and that nothing is left in cinder's conversion
directory.
"""

import gzip
import os
import shutil
import subprocess
import tempfile
import time
import unittest
import zlib

from oslo_concurrency import processutils

from cinder import context as cinder_context
from cinder import exception as cinder_exception
from cinder.image import accelerator
from cinder.image import image_utils

from accel_daemon.engine import paths
from accel_daemon import exception
from accel_daemon.integrations import cinder as integration
from accel_daemon.integrations import common
import cinderflows
import realdaemon

MIB = realdaemon.MIB
GIB = 1024 * MIB
SIZE = 24 * MIB
ImageService = cinderflows.ImageService
read, write = cinderflows.read, cinderflows.write


def setUpModule():
    global ROOT, LOOP, OTHER_LOOP, DAEMON, CONVERSION, VOLUMES, CTX
    ROOT = os.path.realpath(tempfile.mkdtemp(prefix='flows-cinder-'))
    try:
        LOOP = realdaemon.LoopDevice(os.path.join(ROOT, 'loop.img'),
                                     32 * MIB)
        # Not in the daemon's allowed_block_devices.
        OTHER_LOOP = realdaemon.LoopDevice(
            os.path.join(ROOT, 'other-loop.img'), 32 * MIB)
        DAEMON = realdaemon.Daemon('flows-cinder', root=ROOT,
                                   block_devices=[LOOP.path]).start()
    except BaseException:
        tearDownModule()
        raise
    CONVERSION = cinderflows.configure(DAEMON)
    VOLUMES = os.path.join(DAEMON.images, 'volumes')
    os.makedirs(VOLUMES)
    integration.install()
    CTX = cinder_context.get_admin_context()


def tearDownModule():
    integration.uninstall()
    integration.reset()
    if globals().get('DAEMON') is not None:
        DAEMON.stop()
    for name in ('LOOP', 'OTHER_LOOP'):
        if globals().get(name) is not None:
            globals()[name].detach()
    if globals().get('DAEMON') is not None:
        DAEMON.cleanup()
    shutil.rmtree(ROOT, ignore_errors=True)


class Base(unittest.TestCase):

    def setUp(self):
        self.before = cinderflows.task_ids(DAEMON)

    def tearDown(self):
        # cinder removes its temporary files, the daemon leaves none.
        self.assertEqual([], os.listdir(CONVERSION))
        self.assertEqual([], paths.stray_temp_files(VOLUMES))

    def tasks(self):
        """(kind, state) of the daemon's tasks since setUp."""
        return [(t['kind'], t['state'])
                for t in cinderflows.new_tasks(DAEMON, self.before)]

    def volume(self, name, seed=1):
        path = realdaemon.make_volume(os.path.join(VOLUMES, name), SIZE,
                                      seed=seed)
        self.addCleanup(os.unlink, path)
        return path

    def old_volume(self, name):
        """A volume that exists already, full of old bytes."""
        path = write(os.path.join(VOLUMES, name), b'\x5a' * SIZE)
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        return path

    def gzipped_image(self, source, fmt):
        """A ``compressed`` container holding ``source`` as ``fmt``."""
        work = tempfile.mkdtemp(dir=ROOT)
        self.addCleanup(shutil.rmtree, work)
        image = source
        if fmt == 'qcow2':
            image = realdaemon.qcow2_from(source,
                                          os.path.join(work, 'image.qcow2'))
        elif fmt == 'vmdk':
            image = os.path.join(work, 'image.vmdk')
            realdaemon.run('qemu-img', 'convert', '-f', 'raw', '-O', 'vmdk',
                           source, image)
        return gzip.compress(read(image), compresslevel=1)


class UploadVolume(Base):
    """image_utils.upload_volume with container_format 'compressed'."""

    def upload(self, disk_format):
        volume = self.volume('volume-up-%s' % disk_format)
        service = ImageService()
        meta = {'id': 'image-up-%s' % disk_format,
                'disk_format': disk_format,
                'container_format': 'compressed'}
        image_utils.upload_volume(CTX, service, meta, volume,
                                  volume_format='raw', run_as_root=True)
        self.assertEqual([meta['id']], list(service.uploads))
        data = service.uploads[meta['id']]
        self.assertEqual(cinderflows.GZIP_MAGIC, data[:2])
        # The gzip tool reads it; what it gives is the volume, in
        # disk_format.
        work = tempfile.mkdtemp(dir=ROOT)
        self.addCleanup(shutil.rmtree, work)
        uploaded = write(os.path.join(work, 'upload.gz'), data)
        with open(os.path.join(work, 'upload'), 'wb') as out:
            subprocess.run(['gzip', '-d', '-c', uploaded], stdout=out,
                           check=True)
        info = realdaemon.qemu_img('info', '--output=json', '-f',
                                   disk_format, out.name)
        self.assertEqual(0, info.returncode, info.stderr)
        same, text = realdaemon.same_image(out.name, disk_format, volume,
                                           'raw')
        self.assertTrue(same, text)
        # Converted, then compressed in place, both by the daemon.
        self.assertEqual([('convert', 'succeeded'),
                          ('compress', 'succeeded')], self.tasks())
        return out.name

    def test_raw(self):
        out = self.upload('raw')
        self.assertEqual(SIZE, os.path.getsize(out))

    def test_qcow2(self):
        out = self.upload('qcow2')
        # upload_volume asks qemu-img to compress (compress=True).
        check = realdaemon.qemu_img('check', '--output=json', '-f', 'qcow2',
                                    out)
        self.assertIn('"compressed-clusters"', check.stdout)
        self.assertNotIn('"compressed-clusters": 0', check.stdout)


class UploadEncryptedVolume(Base):

    def test_luks_volume_stays_with_cinders_code(self):
        # cinder reports a LUKS volume as raw; without a key nothing can
        # convert it.  The daemon is not asked to convert the ciphertext:
        # cinder's own qemu-img fails as it would without accel-daemon.
        volume = os.path.join(VOLUMES, 'volume-luks')
        # A short key derivation: the key protects nothing.  qemu-img
        # times PBKDF2 with the thread's CPU clock and gives up when a
        # round measured 0 ms ("Unable to get accurate CPU usage"), which
        # a coarse clock on a VM does now and then, several times in a row
        # on a loaded host: try again, a moment apart.
        for attempt in range(20):
            if attempt:
                time.sleep(0.2)
            made = realdaemon.run(
                'qemu-img', 'create', '--object',
                'secret,id=sec0,data=not-a-real-key', '-f', 'luks',
                '-o', 'key-secret=sec0,iter-time=50', volume, '8M',
                check=False)
            if b'accurate CPU usage' not in made.stderr:
                break
        self.assertEqual(0, made.returncode, made.stderr)
        self.addCleanup(os.unlink, volume)
        before = read(volume)
        service = ImageService()
        meta = {'id': 'image-luks', 'disk_format': 'qcow2',
                'container_format': 'bare'}
        with self.assertRaises(processutils.ProcessExecutionError) as c:
            image_utils.upload_volume(CTX, service, meta, volume,
                                      volume_format='raw')
        self.assertFalse(hasattr(c.exception, 'accel_error'))
        self.assertIn('an encrypted source (LUKS) without a named format',
                      integration._fallbacks_logged)
        self.assertEqual({}, service.uploads)
        self.assertEqual([], self.tasks())
        self.assertEqual(before, read(volume))


class FetchToVolumeFormat(Base):
    """image_utils.fetch_to_volume_format from a 'compressed' container."""

    def fetch(self, fmt, dest, seed):
        source = self.volume('source-%s-%d' % (fmt, seed), seed=seed)
        service = ImageService()
        image_id = service.add(self.gzipped_image(source, fmt), fmt,
                               'compressed')
        image_utils.fetch_to_volume_format(
            CTX, service, image_id, dest, 'raw', '1M', size=1,
            run_as_root=True)
        done = cinderflows.new_tasks(DAEMON, self.before)
        self.assertEqual([('decompress', 'succeeded'),
                          ('convert', 'succeeded')],
                         [(t['kind'], t['state']) for t in done])
        # What cinder expects travels with each call: the 1 GiB volume
        # (with room for an image format's metadata) caps the inflated
        # image, which must be gzip; the virtual size cinder's inspection
        # accepted caps the conversion.
        unpack, convert = (t['params'] for t in done)
        self.assertEqual('gzip', unpack['container'])
        self.assertEqual(integration.decompressed_cap(GIB),
                         unpack['max_bytes'])
        self.assertEqual(SIZE, convert['max_bytes'])
        return source

    def test_an_image_larger_than_the_volume_is_refused_while_inflated(self):
        # 1.25 GiB of zeros, gzip'd (about 1 MB), for a 1 GiB volume: the
        # daemon stops inflating at the cap, before cinder's own check of
        # the virtual size (which only comes after the whole image is
        # written out).
        inflated = GIB + GIB // 4
        pack = zlib.compressobj(1, zlib.DEFLATED, 31)
        zeros = bytes(64 * MIB)
        bomb = b''.join(pack.compress(zeros)
                        for _ in range(inflated // len(zeros))) + \
            pack.flush()
        service = ImageService()
        image_id = service.add(bomb, 'raw', 'compressed')
        dest = self.old_volume('volume-f3')
        with self.assertRaises(cinder_exception.CinderAcceleratorError) as c:
            image_utils.fetch_to_volume_format(
                CTX, service, image_id, dest, 'raw', '1M', size=1)
        self.assertIsInstance(c.exception.accel_error,
                              exception.SizeLimitExceeded)
        self.assertEqual([('decompress', 'failed')], self.tasks())
        self.assertEqual(b'\x5a' * SIZE, read(dest))

    def test_gzipped_qcow2_onto_a_file_volume(self):
        dest = self.old_volume('volume-f1')
        source = self.fetch('qcow2', dest, seed=2)
        self.assertEqual(SIZE, os.path.getsize(dest))
        self.assertTrue(realdaemon.same_bytes(source, dest))

    def test_gzipped_raw_onto_a_file_volume(self):
        dest = self.old_volume('volume-f2')
        source = self.fetch('raw', dest, seed=3)
        self.assertEqual(SIZE, os.path.getsize(dest))
        self.assertTrue(realdaemon.same_bytes(source, dest))

    def onto_loop(self, fmt, seed):
        LOOP.fill(b'\x5a')
        source = self.fetch(fmt, LOOP.path, seed=seed)
        self.assertTrue(realdaemon.same_bytes(source, LOOP.path, SIZE))
        # Nothing past the image was touched.
        with open(LOOP.path, 'rb') as f:
            f.seek(SIZE)
            self.assertEqual(b'\x5a' * (LOOP.size() - SIZE), f.read())

    def test_gzipped_qcow2_onto_a_loop_device(self):
        self.onto_loop('qcow2', seed=4)

    def test_gzipped_raw_onto_a_loop_device(self):
        self.onto_loop('raw', seed=5)


class DeviceOutsideThePatterns(Base):
    """A device the daemon does not allow stays with cinder's own code."""

    def test_convert_image_falls_back_to_cinder(self):
        source = self.volume('source-other', seed=7)
        qcow2 = realdaemon.qcow2_from(source,
                                      os.path.join(VOLUMES, 'other.qcow2'))
        self.addCleanup(os.unlink, qcow2)
        OTHER_LOOP.fill(b'\x5a')
        image_utils.convert_image(qcow2, OTHER_LOOP.path, 'raw',
                                  src_format='qcow2')
        # cinder's qemu-img did it, correctly; the daemon saw nothing.
        self.assertTrue(realdaemon.same_bytes(source, OTHER_LOOP.path,
                                              SIZE))
        self.assertEqual([], self.tasks())
        self.assertIn("a block device outside the daemon's "
                      'allowed_block_devices, or not a block device',
                      integration._fallbacks_logged)


class ImageAccelInPlace(Base):
    """cinder's ImageAccel(tmp, tmp), as both flows use it."""

    def test_compress_then_decompress_in_place(self):
        data = b''.join(b'volume block %08d\n' % i for i in range(200000))
        tmp = image_utils.create_temporary_file(prefix='inplace_')
        self.addCleanup(lambda: os.path.exists(tmp) and os.unlink(tmp))
        write(tmp, data)
        accel = accelerator.ImageAccel(tmp, tmp)
        self.assertIsInstance(accel.engine, integration.DaemonAccel)

        accel.compress_img(run_as_root=True)
        self.assertTrue(accelerator.is_gzip_compressed(tmp))
        proc = subprocess.run(['gzip', '-d', '-c', tmp], capture_output=True,
                              check=True)
        self.assertEqual(data, proc.stdout)
        self.assertLess(os.path.getsize(tmp), len(data))

        accel.decompress_img(run_as_root=True)
        self.assertEqual(data, read(tmp))
        self.assertEqual([os.path.basename(tmp)], os.listdir(CONVERSION))
        self.assertEqual([('compress', 'succeeded'),
                          ('decompress', 'succeeded')], self.tasks())
        os.unlink(tmp)


class RefusedImages(Base):

    def test_qcow2_with_a_backing_file_inside_the_gzip(self):
        secret = write(os.path.join(ROOT, 'host-secret.raw'),
                       b'host secret\n' * 4096)
        work = tempfile.mkdtemp(dir=ROOT)
        self.addCleanup(shutil.rmtree, work)
        image = realdaemon.qcow2_with_backing(
            os.path.join(work, 'backed.qcow2'), secret)
        service = ImageService()
        image_id = service.add(gzip.compress(read(image)), 'qcow2',
                               'compressed')
        dest = self.old_volume('volume-r1')
        # cinder's own inspection (qemu_img_info's format_inspector) turns
        # it down after the daemon decompressed it: cinder's Invalid, the
        # base of its ImageUnacceptable.
        with self.assertRaises(cinder_exception.Invalid) as caught:
            image_utils.fetch_to_volume_format(
                CTX, service, image_id, dest, 'raw', '1M')
        self.assertIs(cinder_exception.Invalid, type(caught.exception))
        self.assertIn('failed safety check',
                      caught.exception.kwargs['reason'])
        self.assertEqual(b'\x5a' * SIZE, read(dest))
        self.assertEqual([('decompress', 'succeeded')], self.tasks())

    def test_backing_file_refused_by_the_daemon(self):
        # cinder inspected a plain qcow2 (its data); by the time the daemon
        # opens it, its header names a host file as its backing file: the
        # daemon refuses it.
        secret = write(os.path.join(ROOT, 'host-secret2.raw'),
                       b'host secret\n' * 4096)
        image = os.path.join(VOLUMES, 'backed.qcow2')
        realdaemon.run('qemu-img', 'create', '-f', 'qcow2', image,
                       str(len(b'host secret\n' * 4096)))
        self.addCleanup(os.unlink, image)
        data = image_utils.qemu_img_info(image)
        os.unlink(image)
        realdaemon.qcow2_with_backing(image, secret)
        dest = os.path.join(VOLUMES, 'volume-r2')
        with self.assertRaises(cinder_exception.ImageUnacceptable) as c:
            image_utils.convert_image(image, dest, 'raw', src_format='qcow2',
                                      image_id='backed', data=data)
        self.assertIsInstance(c.exception.accel_error, common.REFUSALS)
        self.assertFalse(os.path.lexists(dest))
        self.assertEqual([('convert', 'failed')], self.tasks())

    def test_disk_format_that_does_not_match_the_data(self):
        # A vmdk registered as qcow2: cinder 29's convert_image checks the
        # format first; switched over, the daemon's own check refuses it.
        source = self.volume('source-vmdk', seed=6)
        service = ImageService()
        image_id = service.add(self.gzipped_image(source, 'vmdk'), 'qcow2',
                               'compressed')
        dest = self.old_volume('volume-r3')
        with self.assertRaises(cinder_exception.ImageUnacceptable) as c:
            image_utils.fetch_to_volume_format(
                CTX, service, image_id, dest, 'raw', '1M')
        self.assertIsInstance(c.exception.accel_error, common.REFUSALS)
        self.assertEqual(image_id, c.exception.kwargs['image_id'])
        self.assertEqual(b'\x5a' * SIZE, read(dest))
        self.assertEqual([('decompress', 'succeeded'),
                          ('convert', 'failed')], self.tasks())
