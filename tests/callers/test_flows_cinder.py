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
import json
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


class Counting(Base):
    """Counts cinder's temporary files (in image_conversion_dir)."""

    def setUp(self):
        super().setUp()
        made = []
        original = image_utils.create_temporary_file

        def counted(*args, **kwargs):
            made.append(args)
            return original(*args, **kwargs)
        image_utils.create_temporary_file = counted
        self.addCleanup(setattr, image_utils, 'create_temporary_file',
                        original)
        self.temporary_files = made


class UploadVolume(Counting):
    """image_utils.upload_volume, streamed by the daemon (stream_out)
    into the image service: no temporary file in cinder's conversion
    directory at any moment."""

    def upload(self, disk_format, container='compressed'):
        volume = self.volume('volume-up-%s-%s' % (disk_format, container))
        service = ImageService()
        meta = {'id': 'image-up-%s' % disk_format,
                'disk_format': disk_format,
                'container_format': container}
        image_utils.upload_volume(CTX, service, meta, volume,
                                  volume_format='raw', run_as_root=True)
        self.assertEqual([meta['id']], list(service.uploads))
        data = service.uploads[meta['id']]
        work = tempfile.mkdtemp(dir=ROOT)
        self.addCleanup(shutil.rmtree, work)
        out = os.path.join(work, 'upload')
        if container == 'compressed':
            self.assertEqual(cinderflows.GZIP_MAGIC, data[:2])
            # The gzip tool reads it; what it gives is the volume, in
            # disk_format.
            uploaded = write(os.path.join(work, 'upload.gz'), data)
            with open(out, 'wb') as f:
                subprocess.run(['gzip', '-d', '-c', uploaded], stdout=f,
                               check=True)
        else:
            write(out, data)
        info = realdaemon.qemu_img('info', '--output=json', '-f',
                                   disk_format, out)
        self.assertEqual(0, info.returncode, info.stderr)
        same, text = realdaemon.same_image(out, disk_format, volume, 'raw')
        self.assertTrue(same, text)
        # One task of the daemon's, which read the volume and sent the
        # image; cinder made no temporary file.
        self.assertEqual([('stream_out', 'succeeded')], self.tasks(),
                         integration._fallbacks_logged)
        self.assertEqual([], self.temporary_files)
        return out

    def compressed_clusters(self, path):
        """How many data extents of a qcow2 are compressed (qemu-img map
        gives them no host offset)."""
        extents = json.loads(realdaemon.qemu_img(
            'map', '--output=json', '-f', 'qcow2', path).stdout)
        data = [e for e in extents if e['data']]
        self.assertTrue(data)
        return sum(1 for e in data if 'offset' not in e)

    def test_raw(self):
        out = self.upload('raw')
        self.assertEqual(SIZE, os.path.getsize(out))

    def test_qcow2_is_deflated_once(self):
        # cinder's own path writes compressed clusters (compress=True),
        # then gzips them; streamed, the clusters inside the gzip
        # container are plain.
        out = self.upload('qcow2')
        self.assertEqual(0, self.compressed_clusters(out))

    def test_qcow2_in_a_bare_container_keeps_compressed_clusters(self):
        out = self.upload('qcow2', container='bare')
        self.assertGreater(self.compressed_clusters(out), 0)

    def test_raw_to_a_bare_raw_image_stays_with_cinder(self):
        # Nothing to convert or compress: cinder sends the volume itself.
        volume = self.volume('volume-bare-raw')
        service = ImageService()
        meta = {'id': 'image-bare-raw', 'disk_format': 'raw',
                'container_format': 'bare'}
        image_utils.upload_volume(CTX, service, meta, volume,
                                  volume_format='raw')
        self.assertEqual(read(volume), service.uploads['image-bare-raw'])
        self.assertEqual([], self.tasks())
        self.assertIn('an upload with nothing to convert or compress '
                      '(cinder sends the volume as it is)',
                      integration._fallbacks_logged)

    def test_stream_images_off_keeps_the_daemon_on_cinders_files(self):
        conf = cinderflows.CONF
        integration.register_opts(conf)
        conf.set_override('stream_images', False, 'accel_daemon_cinder')
        self.addCleanup(conf.clear_override, 'stream_images',
                        'accel_daemon_cinder')
        volume = self.volume('volume-up-files')
        service = ImageService()
        meta = {'id': 'image-up-files', 'disk_format': 'qcow2',
                'container_format': 'compressed'}
        image_utils.upload_volume(CTX, service, meta, volume,
                                  volume_format='raw')
        self.assertEqual(cinderflows.GZIP_MAGIC,
                         service.uploads['image-up-files'][:2])
        # Converted into cinder's temporary file, then compressed in
        # place, both by the daemon.
        self.assertEqual([('convert', 'succeeded'),
                          ('compress', 'succeeded')], self.tasks())
        self.assertEqual(1, len(self.temporary_files))
        self.assertIn('[accel_daemon_cinder] stream_images = False',
                      integration._fallbacks_logged)

    def test_a_failing_image_service_fails_the_task(self):
        volume = self.volume('volume-up-fail')

        class Failing(ImageService):
            def update(self, context, image_id, image_meta, data=None,
                       store_id=None, base_image_ref=None):
                data.read(64 * 1024)
                raise IOError('the image store is full')
        meta = {'id': 'image-up-fail', 'disk_format': 'raw',
                'container_format': 'compressed'}
        with self.assertRaises(IOError):
            image_utils.upload_volume(CTX, Failing(), meta, volume,
                                      volume_format='raw')
        self.assertEqual([('stream_out', 'failed')], self.tasks())

    def test_a_refused_volume_is_unacceptable_and_nothing_is_sent(self):
        # A qcow2 volume (an NFS backend's) with a backing file: refused
        # by the daemon's inspection before the first byte goes.
        base = self.volume('volume-base')
        volume = os.path.join(VOLUMES, 'volume-backed')
        realdaemon.run('qemu-img', 'create', '-f', 'qcow2', '-F', 'raw',
                       '-b', base, volume)
        self.addCleanup(os.unlink, volume)
        service = ImageService()
        meta = {'id': 'image-backed', 'disk_format': 'raw',
                'container_format': 'compressed'}
        with self.assertRaises(cinder_exception.ImageUnacceptable) as c:
            image_utils.upload_volume(CTX, service, meta, volume,
                                      volume_format='qcow2')
        self.assertIsInstance(c.exception.accel_error,
                              exception.UnsafeImage)
        self.assertEqual({}, service.uploads)
        self.assertEqual([('stream_out', 'failed')], self.tasks())


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
        # The stream refused it before sending a byte (not the raw that
        # cinder says), and cinder's own path, which inspects it itself,
        # decided: no convert sent to the daemon.
        self.assertIn('a volume that is not its volume_format (luks)',
                      integration._fallbacks_logged)
        self.assertIn('an encrypted source (LUKS) without a named format',
                      integration._fallbacks_logged)
        self.assertEqual({}, service.uploads)
        self.assertEqual([('stream_out', 'failed')], self.tasks())
        self.assertEqual(before, read(volume))


class FetchToVolumeFormat(Counting):
    """image_utils.fetch_to_volume_format from a 'compressed' container:
    streamed into the daemon when cinder did not download the image
    before; the daemon's one download task when it did (cinder's create
    flow, TemporaryImages)."""

    def fetch(self, fmt, dest, seed, downloaded_before=False):
        source = self.volume('source-%s-%d' % (fmt, seed), seed=seed)
        service = ImageService()
        image_id = service.add(self.gzipped_image(source, fmt), fmt,
                               'compressed')
        if downloaded_before:
            # As cinder's create flow: the image in image_conversion_dir,
            # then fetch_to_volume_format (which finds it there).
            with image_utils.TemporaryImages.fetch(service, CTX, image_id):
                image_utils.fetch_to_volume_format(
                    CTX, service, image_id, dest, 'raw', '1M', size=1,
                    run_as_root=True)
        else:
            image_utils.fetch_to_volume_format(
                CTX, service, image_id, dest, 'raw', '1M', size=1,
                run_as_root=True)
        done = cinderflows.new_tasks(DAEMON, self.before)
        kind = 'download' if downloaded_before else 'stream_in'
        self.assertEqual([(kind, 'succeeded')],
                         [(t['kind'], t['state']) for t in done],
                         integration._fallbacks_logged)
        # What cinder expects travels with the call: gzip, and the 1 GiB
        # volume caps the image (a downloaded file with room for an image
        # format's metadata: it caps the inflated bytes too).
        params = done[0]['params']
        self.assertEqual('gzip', params['container'])
        self.assertEqual(integration.decompressed_cap(GIB)
                         if downloaded_before else GIB,
                         params['max_bytes'])
        self.assertEqual(1 if downloaded_before else 0,
                         len(self.temporary_files))
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
        with self.assertRaises(cinder_exception.ImageUnacceptable) as c:
            image_utils.fetch_to_volume_format(
                CTX, service, image_id, dest, 'raw', '1M', size=1)
        self.assertIsInstance(c.exception.accel_error,
                              exception.SizeLimitExceeded)
        self.assertEqual([('stream_in', 'failed')], self.tasks())
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

    def test_downloaded_gzipped_raw_onto_a_file_volume(self):
        dest = self.old_volume('volume-f4')
        source = self.fetch('raw', dest, seed=6, downloaded_before=True)
        self.assertTrue(realdaemon.same_bytes(source, dest))

    def test_downloaded_gzipped_qcow2_onto_a_file_volume(self):
        dest = self.old_volume('volume-f5')
        source = self.fetch('qcow2', dest, seed=7, downloaded_before=True)
        self.assertTrue(realdaemon.same_bytes(source, dest))

    def onto_loop(self, fmt, seed, downloaded_before=False):
        LOOP.fill(b'\x5a')
        source = self.fetch(fmt, LOOP.path, seed=seed,
                            downloaded_before=downloaded_before)
        self.assertTrue(realdaemon.same_bytes(source, LOOP.path, SIZE))
        # Nothing past the image was touched.
        with open(LOOP.path, 'rb') as f:
            f.seek(SIZE)
            self.assertEqual(b'\x5a' * (LOOP.size() - SIZE), f.read())

    def test_gzipped_qcow2_onto_a_loop_device(self):
        self.onto_loop('qcow2', seed=4)

    def test_gzipped_raw_onto_a_loop_device(self):
        self.onto_loop('raw', seed=5)

    def test_downloaded_gzipped_raw_onto_a_loop_device(self):
        self.onto_loop('raw', seed=8, downloaded_before=True)

    def test_a_bare_raw_image_is_streamed_too(self):
        source = self.volume('source-bare', seed=9)
        service = ImageService()
        image_id = service.add(read(source), 'raw', 'bare')
        dest = self.old_volume('volume-bare')
        image_utils.fetch_to_volume_format(CTX, service, image_id, dest,
                                           'raw', '1M', size=1)
        self.assertEqual([('stream_in', 'succeeded')], self.tasks())
        self.assertTrue(realdaemon.same_bytes(source, dest))
        self.assertEqual([], self.temporary_files)

    def test_a_signed_image_keeps_cinders_path(self):
        source = self.volume('source-signed', seed=10)
        service = ImageService()
        image_id = service.add(read(source), 'raw', 'bare')
        service.images[image_id][0]['properties'] = {
            'img_signature': 'c2lnbmF0dXJl',
            'img_signature_hash_method': 'SHA-256'}
        dest = self.old_volume('volume-signed')
        image_utils.fetch_to_volume_format(CTX, service, image_id, dest,
                                           'raw', '1M', size=1)
        self.assertTrue(realdaemon.same_bytes(source, dest))
        self.assertNotIn(('stream_in', 'succeeded'), self.tasks())
        self.assertIn('a signed image (cinder verifies the stored bytes)',
                      integration._fallbacks_logged)

    def test_a_failed_download_publishes_nothing(self):
        source = self.volume('source-broken', seed=11)

        class Broken(ImageService):
            def download(self, context, image_id, data=None):
                data.write(read(source)[:4 * MIB])
                raise IOError('Corrupt image download')
        service = Broken()
        image_id = service.add(read(source), 'raw', 'bare')
        dest = self.old_volume('volume-broken')
        with self.assertRaises(IOError):
            image_utils.fetch_to_volume_format(CTX, service, image_id, dest,
                                               'raw', '1M', size=1)
        self.assertEqual([('stream_in', 'failed')], self.tasks())
        self.assertEqual(b'\x5a' * SIZE, read(dest))


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
