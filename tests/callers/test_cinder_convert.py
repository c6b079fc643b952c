# SPDX-License-Identifier: Apache-2.0
"""accel_daemon.integrations.cinder.convert_image, cinder 29's
image_utils.convert_image on accel-daemon, against an in-process daemon
(see convertcase.py for the daemon).
"""

import inspect
import os
import shutil
import tempfile
import unittest
from unittest import mock


from cinder import exception as cinder_exception
from cinder.image import image_utils

from accel_daemon import exception
from accel_daemon.integrations import cinder as integration
from accel_daemon.integrations import common
import convertcase
from convertcase import MIB
from convertcase import no_strings
from convertcase import qemu_img
import facts

# cinder 29 added convert_image's skip_create.
SKIP_CREATE = facts.major('cinder') >= 29

setUpModule, tearDownModule = convertcase.module_fixture('cinder-convert')


def info(path, fmt):
    """cinder's ``data`` for ``path``: what its qemu_img_info returns."""
    from oslo_utils import imageutils
    return imageutils.QemuImgInfo(
        qemu_img('info', '--output=json', '-f', fmt, path).stdout,
        format='json')


class Base(convertcase.ConvertCase):

    integration = integration
    FILL = b'volume data block\n'

    def dest(self):
        """A pre-created destination (cinder's create_temporary_file)."""
        fd, path = tempfile.mkstemp(dir=self.images)
        os.close(fd)
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        return path


class Convert(Base):

    def test_raw_to_qcow2_and_back(self):
        raw = self.raw_image()
        qcow2 = self.dest()
        integration.convert_image(raw, qcow2, 'qcow2', src_format='raw')
        self.assertIn('file format: qcow2',
                      qemu_img('info', '-f', 'qcow2', qcow2).stdout)
        self.assertSameImage(raw, 'raw', qcow2, 'qcow2')

        back = self.dest()
        integration.convert_image(qcow2, back, 'raw', src_format='qcow2',
                                  compress=True, data=info(qcow2, 'qcow2'))
        self.assertSameImage(raw, 'raw', back, 'raw')
        self.recorder.assert_not_called()

    def test_compressed_qcow2(self):
        raw = self.raw_image()
        qcow2 = self.dest()
        integration.convert_image(raw, qcow2, 'qcow2', src_format='raw',
                                  compress=True)
        self.assertSameImage(raw, 'raw', qcow2, 'qcow2')
        self.recorder.assert_not_called()

    def test_disable_sparse_allocates_everything(self):
        raw = self.raw_image()
        sparse, full = self.dest(), self.dest()
        integration.convert_image(raw, sparse, 'raw', src_format='raw')
        integration.convert_image(raw, full, 'raw', src_format='raw',
                                  disable_sparse=True)
        self.assertSameImage(raw, 'raw', full, 'raw')
        size = os.path.getsize(raw)
        self.assertEqual(size, os.path.getsize(full))
        self.assertGreaterEqual(os.stat(full).st_blocks * 512, size)
        self.assertLess(os.stat(sparse).st_blocks * 512, size)
        self.recorder.assert_not_called()

    def test_backing_file_is_unacceptable_and_writes_nothing(self):
        qcow2 = self.backed_qcow2()
        out = self.dest()
        with self.assertRaises(cinder_exception.ImageUnacceptable) as c:
            integration.convert_image(qcow2, out, 'raw', src_format='qcow2',
                                      image_id='img-1',
                                      data=info(qcow2, 'qcow2'))
        self.assertIn('img-1', str(c.exception))
        self.assertEqual(0, os.path.getsize(out))
        self.recorder.assert_not_called()

    def test_format_mismatch_is_unacceptable(self):
        raw = self.raw_image()
        out = self.dest()
        with self.assertRaises(cinder_exception.ImageUnacceptable):
            integration.convert_image(raw, out, 'raw', src_format='qcow2',
                                      data=info(raw, 'raw'))
        self.assertEqual(0, os.path.getsize(out))

    def test_a_source_larger_than_cinder_accepted_is_refused(self):
        # cinder's inspection saw 4 MiB; the qcow2 the daemon opens is
        # 64 MiB (it changed since): refused before anything is written.
        raw = self.raw_image()
        qcow2 = self.dest()
        integration.convert_image(raw, qcow2, 'qcow2', src_format='raw')
        seen = info(qcow2, 'qcow2')
        qemu_img('resize', '-f', 'qcow2', qcow2, '64M')
        out = self.dest()
        with self.assertRaises(cinder_exception.ImageUnacceptable) as c:
            integration.convert_image(qcow2, out, 'raw', src_format='qcow2',
                                      data=seen, image_id='img-3')
        self.assertIsInstance(c.exception.accel_error,
                              exception.SizeLimitExceeded)
        self.assertEqual(0, os.path.getsize(out))
        self.recorder.assert_not_called()

    def test_the_expected_size_is_sent(self):
        raw = self.raw_image()
        qcow2 = self.dest()
        with mock.patch.object(integration.AccelClient, 'convert',
                               autospec=True,
                               side_effect=integration.AccelClient.convert
                               ) as sent:
            integration.convert_image(raw, qcow2, 'qcow2', src_format='raw')
            integration.convert_image(qcow2, self.dest(), 'raw',
                                      src_format='qcow2',
                                      data=info(qcow2, 'qcow2'))
        # A raw source's size; the virtual size in cinder's data.
        self.assertEqual([4 * MIB, 4 * MIB],
                         [c.kwargs['max_bytes'] for c in sent.call_args_list])


class Fallback(convertcase.FallbackCase, Base):

    caller = image_utils
    group = 'accel_daemon_cinder'

    def test_encryption_goes_to_cinder(self):
        raw, out = self.raw_image(), self.dest()
        spec = {'cipher': 'aes-xts-plain64', 'key_size': 256}
        self.assertFallsBack(raw, out, 'luks', src_format='raw',
                             cipher_spec=spec, passphrase_file='/tmp/pw')
        self.assertFallsBack(raw, out, 'raw', src_format='luks',
                             src_passphrase_file='/tmp/pw', image_id='i')

    def test_rbd_dest_goes_to_cinder(self):
        raw = self.raw_image()
        args = (raw, 'rbd:volumes/volume-1:id=cinder', 'raw', None, 'raw',
                True, None, None, None, False, None, 'img', None, True)
        self.assertFallsBack(*args + ((True,) if SKIP_CREATE else ()))

    def test_other_cases_go_to_cinder(self):
        raw, out = self.raw_image(), self.dest()
        self.assertFallsBack(raw, out, 'raw')                 # no src_format
        self.assertFallsBack(raw, out, 'vmdk', src_format='raw',
                             out_subformat='streamOptimized')
        self.assertFallsBack(raw, '/dev/sdz', 'raw', src_format='raw')
        if SKIP_CREATE:
            self.assertFallsBack(raw, out, 'raw', src_format='raw',
                                 skip_create=True)
        # A format with metadata and no data of cinder's: nothing tells
        # the size cinder expects.
        self.assertFallsBack(raw, out, 'raw', src_format='qcow2')
        outside = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, outside)
        self.assertFallsBack(raw, os.path.join(outside, 'x'), 'raw',
                             src_format='raw')

    def test_absent_daemon_goes_to_cinder(self):
        raw, out = self.raw_image(), self.dest()
        self.assertAbsentDaemonFallsBack(raw, out, 'qcow2', src_format='raw')

    def test_each_reason_logged_once(self):
        raw, out = self.raw_image(), self.dest()
        self.assertLoggedOnce('out_subformat', raw, out, 'vmdk',
                              src_format='raw',
                              out_subformat='streamOptimized')


class Plumbing(unittest.TestCase):

    def test_signature_is_cinders(self):
        # The replacement for this release: convert_image from cinder 29
        # on, convert_image_27 (no skip_create) on 27 and 28.
        ours = integration._convert_image._match()
        self.assertIs(ours, integration.convert_image if SKIP_CREATE
                      else integration.convert_image_27)
        self.assertEqual(
            no_strings(inspect.signature(image_utils.convert_image)),
            no_strings(inspect.signature(ours)))

    def test_fetch_to_volume_format_signature_is_cinders(self):
        self.assertEqual(
            no_strings(inspect.signature(
                integration.original_fetch_to_volume_format())),
            no_strings(inspect.signature(
                integration.fetch_to_volume_format)))

    def test_install_refuses_another_fetch_and_changes_nothing(self):
        def other(context, image_service, image_id, dest, volume_format,
                  blocksize, size=None):
            pass
        convert = image_utils.convert_image
        with mock.patch.object(integration._fetch_to_volume_format, 'func',
                               None), \
                mock.patch.object(image_utils, 'fetch_to_volume_format',
                                  other):
            with self.assertRaisesRegex(RuntimeError, 'signature'):
                integration.install()
            self.assertIs(other, image_utils.fetch_to_volume_format)
            self.assertIs(convert, image_utils.convert_image)

    def test_the_volume_size_is_kept_for_the_thread_while_fetching(self):
        seen = []

        def fetch(*args, **kwargs):
            seen.append(integration._volume_bytes())
        with mock.patch.object(integration._fetch_to_volume_format, 'func',
                               fetch):
            integration.fetch_to_volume_format(
                None, None, 'img', '/dev/null', 'raw', '1M', size=3)
            integration.fetch_to_volume_format(
                None, None, 'img', '/dev/null', 'raw', '1M')
        self.assertEqual([3 * 1024 * MIB, None], seen)
        self.assertIsNone(integration._volume_bytes())
        self.assertEqual(3 * 1024 * MIB + 48 * MIB + 64 * MIB,
                         integration.decompressed_cap(3 * 1024 * MIB))

    def test_original_is_cinders_and_install_keeps_it(self):
        convertcase.install_kept(self, integration, image_utils)

    def test_install_refuses_another_signature_and_changes_nothing(self):
        from cinder.image import accelerator

        def other(source, dest, out_format, run_as_root=True):
            pass
        engines = list(accelerator._ACCEL_PATH_PREFERENCE_ORDER_LIST)
        convertcase.install_refused(self, integration, image_utils, other)
        self.assertEqual(engines,
                         accelerator._ACCEL_PATH_PREFERENCE_ORDER_LIST)

    def test_throttle_bps_limit(self):
        from cinder.volume import throttling
        blkio = throttling.BlkioCgroup.__new__(throttling.BlkioCgroup)
        blkio.bps_limit = 5 * MIB
        self.assertEqual(5 * MIB, integration._bps_limit(blkio))
        self.assertIsNone(integration._bps_limit(throttling.Throttle()))
        with mock.patch.object(throttling.Throttle, 'DEFAULT', blkio):
            self.assertEqual(5 * MIB, integration._bps_limit(None))
        with self.assertRaises(common.Fallback):
            integration._bps_limit(throttling.Throttle(prefix=['nice']))

    def test_other_errors_are_process_execution_errors(self):
        from oslo_concurrency import processutils

        args = {'src': '/a', 'dst': '/b', 'src_format': 'raw',
                'dst_format': 'qcow2'}
        err = exception.NoSpace(path='/b')
        mapped = integration._convert_error(err, args, None)
        self.assertIsInstance(mapped, processutils.ProcessExecutionError)
        self.assertIn(str(err), mapped.stderr)
        self.assertIs(err, mapped.accel_error)
        refusal = exception.UnsafeImage(reason='backing file')
        mapped = integration._convert_error(refusal, args, 'img-2')
        self.assertIsInstance(mapped, cinder_exception.ImageUnacceptable)
        self.assertIn('img-2', str(mapped))
