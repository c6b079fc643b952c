# SPDX-License-Identifier: Apache-2.0
"""nova 34.0.0's own image functions on the real accel-daemon.

Runs in the nova caller venv (tools/run-caller-tests.sh).  The daemon is
the venv's installed ``accel-daemon`` with its privsep helper, on the real
RabbitMQ (``realdaemon``).  nova's functions are its real ones
(``nova.virt.images.fetch_to_raw`` and ``convert_image``,
``nova.virt.libvirt.utils.extract_snapshot``), switched over by
``accel_daemon.integrations.nova.install()``, on nova's global
configuration parsed from a nova.conf written here (the instances path
inside the daemon's allowed directory, ``[libvirt] snapshot_compression``).
Only the image API (``nova.virt.images.IMAGE_API``, glance) is a stand-in.

The last two classes end their own daemon: killed in the middle of a
snapshot's compression, and stopped after it answered.  nova then gets its
``ImageUnacceptable`` and nothing is written.
"""

import os
import shutil
import tempfile
import unittest
from unittest import mock
import uuid

from oslo_config import cfg

from nova import context as nova_context
from nova import exception as nova_exception
from nova.image import glance
from nova.virt import images
from nova.virt.libvirt import utils as libvirt_utils

from accel_daemon.engine import paths
from accel_daemon import exception
from accel_daemon.integrations import nova as integration
import realdaemon

CONF = cfg.CONF
MIB = realdaemon.MIB
SIZE = 24 * MIB


class ImageAPI:
    """The calls nova.virt.images makes of nova.image.glance.API.

    ``download`` writes through nova's own
    ``GlanceImageServiceV2._verify_and_write`` (its signature check, its
    truncate on a bad signature, its fsync of a dest_path), fed 64 KiB
    chunks as glanceclient's iterator gives them; ``fail_at_end`` makes
    that iterator raise once every chunk went, as glanceclient does when
    the sha512 of what it read is not glance's, and ``bad_signature``
    makes the verifier refuse.  ``calls`` records whether nova passed a
    file object (``data``) or a path."""

    CHUNK = 64 * 1024

    def __init__(self):
        self.images = {}
        self.calls = []
        self.fail_at_end = None
        self.bad_signature = False

    def add(self, path, disk_format, container_format='bare'):
        image_id = str(uuid.uuid4())
        with open(path, 'rb') as f:
            data = f.read()
        self.images[image_id] = ({'id': image_id, 'status': 'active',
                                  'disk_format': disk_format,
                                  'container_format': container_format,
                                  'size': len(data)}, data)
        return image_id

    def get(self, context, image_id, include_locations=False,
            show_deleted=True):
        return dict(self.images[image_id][0])

    def _chunks(self, data):
        for off in range(0, len(data), self.CHUNK):
            yield data[off:off + self.CHUNK]
        if self.fail_at_end is not None:
            raise self.fail_at_end

    def download(self, context, image_id, data=None, dest_path=None,
                 trusted_certs=None):
        self.calls.append('data' if data is not None else 'dest_path')
        verifier = None
        if self.bad_signature:
            from cryptography.exceptions import InvalidSignature
            verifier = mock.Mock()
            verifier.verify.side_effect = InvalidSignature()
        service = glance.GlanceImageServiceV2.__new__(
            glance.GlanceImageServiceV2)
        return service._verify_and_write(
            context, image_id, verifier,
            self._chunks(self.images[image_id][1]), data, dest_path)


def configure(daemon, timeout=5, **nova_accel):
    """Parse nova's CONF from a nova.conf for ``daemon``; the integration's
    next call uses it.  Returns the instances path."""
    instances = os.path.join(daemon.images, 'instances')
    os.makedirs(instances, exist_ok=True)
    path = os.path.join(daemon.root, 'nova.conf')
    # The first capabilities call starts the daemon's privsep helper: on a
    # loaded host it can take longer than the default 3 s, and a daemon
    # that does not answer in time is "not there".
    nova_accel.setdefault('probe_timeout', 15)
    daemon.service_conf(path, {
        'instances_path': instances,
        'state_path': os.path.join(daemon.root, 'nova-state'),
    }, {
        'libvirt': {'snapshot_compression': True},
        'oslo_concurrency': {'lock_path': os.path.join(daemon.root,
                                                       'locks')},
        'accel_daemon_nova': nova_accel,
    }, timeout=timeout)
    CONF(['--config-file', path], project='nova', default_config_files=[])
    integration.reset()
    return instances


def setUpModule():
    global ROOT, LOOP, DAEMON, INSTANCES, CTX
    ROOT = os.path.realpath(tempfile.mkdtemp(prefix='flows-nova-'))
    try:
        LOOP = realdaemon.LoopDevice(os.path.join(ROOT, 'loop.img'),
                                     32 * MIB)
        DAEMON = realdaemon.Daemon('flows-nova', root=ROOT,
                                   block_devices=[LOOP.path]).start()
    except BaseException:
        tearDownModule()
        raise
    INSTANCES = configure(DAEMON)
    integration.install()
    CTX = nova_context.get_admin_context()


def tearDownModule():
    integration.uninstall()
    integration.reset()
    if globals().get('DAEMON') is not None:
        DAEMON.stop()
    if globals().get('LOOP') is not None:
        LOOP.detach()
    if globals().get('DAEMON') is not None:
        DAEMON.cleanup()
    shutil.rmtree(ROOT, ignore_errors=True)


class Base(unittest.TestCase):
    daemon = None      # the module's

    def setUp(self):
        self.work = tempfile.mkdtemp(dir=self.root())
        self.addCleanup(shutil.rmtree, self.work)
        self.api = ImageAPI()
        patcher = mock.patch.object(images, 'IMAGE_API', self.api)
        patcher.start()
        self.addCleanup(patcher.stop)
        self.before = self.task_ids()

    def root(self):
        return (self.daemon or DAEMON).root

    def instances(self):
        return os.path.join((self.daemon or DAEMON).images, 'instances')

    def task_ids(self):
        d = self.daemon or DAEMON
        return {t['id'] for t in d.task_states()} if d.running else set()

    def tasks(self):
        """(kind, state) of the daemon's tasks since setUp."""
        d = self.daemon or DAEMON
        new = [t for t in d.task_states() if t['id'] not in self.before]
        return [(t['kind'], t['state'])
                for t in sorted(new, key=lambda t: t['created_at'])]

    def assertOnly(self, *names):
        """The instances directory holds ``names``, nothing else."""
        self.assertEqual(sorted(names), sorted(os.listdir(self.instances())))
        self.assertEqual([], paths.stray_temp_files(self.instances()))

    def raw(self, name, seed=1):
        path = os.path.join(self.work, name)
        return realdaemon.make_volume(path, SIZE, seed=seed)

    def in_instances(self, name):
        path = os.path.join(self.instances(), name)
        self.addCleanup(lambda: os.path.lexists(path) and os.unlink(path))
        return path


class FetchToRaw(Base):
    """fetch_to_raw streams: nova's own download writes into a stream_in
    task; nothing is named before the image is whole and checked."""

    def assertStreamed(self, state='succeeded'):
        self.assertEqual(['data'], self.api.calls,
                         integration._fallbacks_logged)
        self.assertEqual([('stream_in', state)], self.tasks())

    def test_qcow2_image_converted_by_the_daemon(self):
        source = self.raw('source.raw')
        image = realdaemon.qcow2_from(source,
                                      os.path.join(self.work, 'src.qcow2'))
        image_id = self.api.add(image, 'qcow2')
        path = self.in_instances('disk-1')
        images.fetch_to_raw(CTX, image_id, path)
        self.assertTrue(realdaemon.same_bytes(source, path))
        self.assertEqual(SIZE, os.path.getsize(path))
        self.assertStreamed()
        # No .part, no .converted: nothing but the disk.
        self.assertOnly('disk-1')

    def test_raw_image_written_straight_with_holes(self):
        source = self.raw('source.raw', seed=11)
        image_id = self.api.add(source, 'raw')
        path = self.in_instances('disk-raw')
        images.fetch_to_raw(CTX, image_id, path)
        self.assertTrue(realdaemon.same_bytes(source, path))
        self.assertLess(os.stat(path).st_blocks * 512,
                        os.stat(source).st_blocks * 512 + MIB)
        self.assertStreamed()
        self.assertOnly('disk-raw')

    def test_qcow2_kept_as_qcow2_without_force_raw_images(self):
        CONF.set_override('force_raw_images', False)
        self.addCleanup(CONF.clear_override, 'force_raw_images')
        source = self.raw('source.raw', seed=12)
        image = realdaemon.qcow2_from(source,
                                      os.path.join(self.work, 'src.qcow2'))
        image_id = self.api.add(image, 'qcow2')
        path = self.in_instances('disk-qcow2')
        images.fetch_to_raw(CTX, image_id, path)
        same, text = realdaemon.same_image(path, 'qcow2', source, 'raw')
        self.assertTrue(same, text)
        self.assertStreamed()
        self.assertOnly('disk-qcow2')

    def test_backing_file_refused_before_anything_is_written(self):
        secret = os.path.join(self.work, 'host-secret')
        with open(secret, 'wb') as f:
            f.write(b'secret\n' * 1000)
        image = realdaemon.qcow2_with_backing(
            os.path.join(self.work, 'backed.qcow2'), secret)
        image_id = self.api.add(image, 'qcow2')
        path = self.in_instances('disk-2')
        with self.assertRaises(nova_exception.ImageUnacceptable) as caught:
            images.fetch_to_raw(CTX, image_id, path)
        self.assertIsInstance(caught.exception.accel_error,
                              exception.UnsafeImage)
        self.assertStreamed('failed')
        self.assertOnly()

    def test_qcow2_claimed_as_raw_is_refused(self):
        image = realdaemon.qcow2_from(
            self.raw('source.raw', seed=13),
            os.path.join(self.work, 'src.qcow2'))
        image_id = self.api.add(image, 'raw')
        path = self.in_instances('disk-claimed')
        with self.assertRaises(nova_exception.ImageUnacceptable) as caught:
            images.fetch_to_raw(CTX, image_id, path)
        self.assertIsInstance(caught.exception.accel_error,
                              exception.FormatMismatch)
        self.assertOnly()

    def test_a_hash_mismatch_at_the_end_publishes_nothing(self):
        # glanceclient raises once it read everything and the sha512 is
        # not glance's: every byte was written, nothing is published.
        source = self.raw('source.raw', seed=14)
        image_id = self.api.add(source, 'raw')
        self.api.fail_at_end = IOError('Corrupt image download. Hash was '
                                       'x expected y')
        path = self.in_instances('disk-hash')
        with self.assertRaises(IOError) as caught:
            images.fetch_to_raw(CTX, image_id, path)
        self.assertIn('Corrupt image download', str(caught.exception))
        self.assertStreamed('failed')
        self.assertOnly()

    def test_a_bad_signature_publishes_nothing(self):
        from cryptography.exceptions import InvalidSignature
        source = self.raw('source.raw', seed=15)
        image_id = self.api.add(source, 'raw')
        self.api.bad_signature = True
        path = self.in_instances('disk-signed')
        with self.assertRaises(InvalidSignature):
            images.fetch_to_raw(CTX, image_id, path)
        self.assertStreamed('failed')
        self.assertOnly()

    def test_stream_images_off_keeps_novas_download(self):
        integration.register_opts(CONF)
        CONF.set_override('stream_images', False, 'accel_daemon_nova')
        self.addCleanup(CONF.clear_override, 'stream_images',
                        'accel_daemon_nova')
        source = self.raw('source.raw', seed=16)
        image = realdaemon.qcow2_from(source,
                                      os.path.join(self.work, 'src.qcow2'))
        image_id = self.api.add(image, 'qcow2')
        path = self.in_instances('disk-files')
        images.fetch_to_raw(CTX, image_id, path)
        self.assertTrue(realdaemon.same_bytes(source, path))
        self.assertEqual(['dest_path'], self.api.calls)
        self.assertEqual([('convert', 'succeeded')], self.tasks())
        self.assertIn('[accel_daemon_nova] stream_images = False',
                      integration._fallbacks_logged)
        self.assertOnly('disk-files')

    def test_rbd_download_keeps_novas_path(self):
        CONF.set_override('enable_rbd_download', True, 'glance')
        self.addCleanup(CONF.clear_override, 'enable_rbd_download',
                        'glance')
        source = self.raw('source.raw', seed=17)
        image_id = self.api.add(source, 'raw')
        path = self.in_instances('disk-rbd')
        images.fetch_to_raw(CTX, image_id, path)
        self.assertEqual(['dest_path'], self.api.calls)
        self.assertEqual([], self.tasks())
        self.assertTrue(realdaemon.same_bytes(source, path))
        self.assertIn('[glance] enable_rbd_download (nova reads the image '
                      'from RBD itself)', integration._fallbacks_logged)


class ConvertImage(Base):

    def test_qcow2_to_raw_and_back(self):
        source = self.raw('source.raw', seed=2)
        qcow2 = realdaemon.qcow2_from(source,
                                      os.path.join(self.work, 'src.qcow2'))
        shutil.copy(qcow2, self.in_instances('src.qcow2'))
        raw = self.in_instances('out.raw')
        images.convert_image(os.path.join(self.instances(), 'src.qcow2'),
                             raw, 'qcow2', 'raw')
        self.assertTrue(realdaemon.same_bytes(source, raw))
        back = self.in_instances('back.qcow2')
        images.convert_image(raw, back, 'raw', 'qcow2')
        same, text = realdaemon.same_image(back, 'qcow2', source, 'raw')
        self.assertTrue(same, text)
        self.assertEqual([('convert', 'succeeded')] * 2, self.tasks())
        self.assertOnly('src.qcow2', 'out.raw', 'back.qcow2')

    def test_compress_true(self):
        disk = self.in_instances('disk.raw')
        shutil.copy(self.raw('source.raw', seed=3), disk)
        out = self.in_instances('snap.qcow2')
        images.convert_image(disk, out, 'raw', 'qcow2', compress=True)
        self.assertCompressed(out, disk)

    def test_snapshot_extraction_compresses(self):
        # [libvirt] snapshot_compression: extract_snapshot passes
        # compress=True for qcow2.
        disk = self.in_instances('disk.raw')
        shutil.copy(self.raw('source.raw', seed=4), disk)
        out = self.in_instances('snap.qcow2')
        libvirt_utils.extract_snapshot(disk, 'raw', out, 'qcow2')
        self.assertCompressed(out, disk)

    def assertCompressed(self, qcow2, raw):
        same, text = realdaemon.same_image(qcow2, 'qcow2', raw, 'raw')
        self.assertTrue(same, text)
        check = realdaemon.qemu_img('check', '--output=json', '-f', 'qcow2',
                                    qcow2)
        self.assertIn('"compressed-clusters"', check.stdout)
        self.assertNotIn('"compressed-clusters": 0', check.stdout)
        self.assertEqual([('convert', 'succeeded')], self.tasks())

    def test_onto_an_allowed_block_device(self):
        source = self.raw('source.raw', seed=5)
        qcow2 = self.in_instances('src.qcow2')
        realdaemon.qcow2_from(source, qcow2)
        LOOP.fill(b'\x5a')
        images.convert_image(qcow2, LOOP.path, 'qcow2', 'raw')
        self.assertTrue(realdaemon.same_bytes(source, LOOP.path, SIZE))
        self.assertEqual([('convert', 'succeeded')], self.tasks())

    def test_a_backing_file_stays_on_novas_path(self):
        # A qcow2 that names a backing file (what nova's live snapshot of
        # a qcow2-backed instance converts) is nova's to flatten: the
        # daemon never follows a backing file, so it is never asked.
        secret = os.path.join(self.work, 'host-secret')
        with open(secret, 'wb') as f:
            f.write(b'secret\n' * 1000)
        image = realdaemon.qcow2_with_backing(self.in_instances('b.qcow2'),
                                              secret)
        out = self.in_instances('b.raw')
        with mock.patch.object(integration._convert_image, 'func') as own:
            images.convert_image(image, out, 'qcow2', 'raw')
        own.assert_called_once()
        self.assertEqual((image, out, 'qcow2', 'raw'), own.call_args.args)
        self.assertEqual([], self.tasks())
        self.assertOnly('b.qcow2')


class OwnDaemon(Base):
    """A daemon of the class's own, ended by its tests."""

    @classmethod
    def setUpClass(cls):
        cls.daemon = realdaemon.Daemon('flows-nova-down')
        try:
            cls.daemon.start()
        except BaseException:
            cls.daemon.cleanup()
            raise
        # Short RPC timeouts: a dead daemon is noticed in 2 s; the
        # daemon's answer is kept for the whole class.
        configure(cls.daemon, timeout=2, caps_cache_ttl=300)

    @classmethod
    def tearDownClass(cls):
        cls.daemon.cleanup()
        # The module's daemon again, for classes that run later.
        configure(DAEMON)


class KilledMidFlow(OwnDaemon):

    def test_snapshot_extraction_killed_while_compressing(self):
        disk = self.in_instances('disk.raw')
        realdaemon.big_volume(disk, 192)
        out = self.in_instances('snap.qcow2')
        with realdaemon.KillWhenRunning(self.daemon, 'convert') as killer:
            with self.assertRaises(
                    nova_exception.ImageUnacceptable) as caught:
                libvirt_utils.extract_snapshot(disk, 'raw', out, 'qcow2')
        self.assertTrue(killer.killed, 'the conversion ended before the '
                        'daemon could be killed')
        self.assertIsInstance(caught.exception.accel_error,
                              exception.ServiceUnavailable)
        self.assertIn('Unable to convert image to qcow2',
                      str(caught.exception))
        self.assertFalse(os.path.lexists(out))
        self.assertOnly('disk.raw')


class StoppedAfterAnswering(OwnDaemon):

    def test_fetch_to_raw_raises_and_leaves_nothing(self):
        source = self.raw('source.raw', seed=6)
        image = realdaemon.qcow2_from(source,
                                      os.path.join(self.work, 'src.qcow2'))
        image_id = self.api.add(image, 'qcow2')
        first = self.in_instances('disk-ok')
        images.fetch_to_raw(CTX, image_id, first)
        self.assertTrue(realdaemon.same_bytes(source, first))
        self.assertEqual(0, self.daemon.stop())

        path = self.in_instances('disk-3')
        with self.assertRaises(nova_exception.ImageUnacceptable) as caught:
            images.fetch_to_raw(CTX, image_id, path)
        self.assertIsInstance(caught.exception.__context__,
                              nova_exception.ImageUnacceptable)
        self.assertIsInstance(caught.exception.__context__.accel_error,
                              exception.ServiceUnavailable)
        # No disk, no .part, no .converted.
        self.assertOnly('disk-ok')


class NeverThere(Base):
    """Nothing answers: nova's own qemu-img does the work, correctly."""

    @classmethod
    def setUpClass(cls):
        cls.daemon = realdaemon.Daemon('flows-nova-absent')    # not started
        configure(cls.daemon, timeout=2, caps_cache_ttl=0, probe_timeout=1)

    @classmethod
    def tearDownClass(cls):
        cls.daemon.cleanup()
        configure(DAEMON)

    def test_fetch_to_raw_by_novas_own_code(self):
        source = self.raw('source.raw', seed=7)
        image = realdaemon.qcow2_from(source,
                                      os.path.join(self.work, 'src.qcow2'))
        image_id = self.api.add(image, 'qcow2')
        path = self.in_instances('disk-4')
        images.fetch_to_raw(CTX, image_id, path)
        self.assertTrue(realdaemon.same_bytes(source, path))
        self.assertIn('a daemon that does not answer',
                      integration._fallbacks_logged)
        self.assertOnly('disk-4')
