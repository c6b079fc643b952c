# SPDX-License-Identifier: Apache-2.0
"""accel_daemon.integrations.nova.convert_image, nova 34's
nova.virt.images.convert_image on accel-daemon, against an in-process
daemon (see convertcase.py for the daemon).
"""

import inspect
import os
import shutil
import tempfile
import unittest
from unittest import mock
import uuid

from oslo_concurrency import processutils

from nova import exception as nova_exception
import nova.privsep.qemu
from nova.virt import images

from accel_daemon import exception
from accel_daemon.integrations import nova as integration
import convertcase
from convertcase import no_strings
from convertcase import qemu_img

setUpModule, tearDownModule = convertcase.module_fixture('nova-convert')


class Base(convertcase.ConvertCase):

    integration = integration
    FILL = b'instance disk block\n'

    def dest(self, exists=False):
        path = os.path.join(self.images, 'out-%s' % uuid.uuid4().hex[:8])
        if exists:
            open(path, 'wb').close()
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        return path


class Convert(Base):

    def test_raw_to_compressed_qcow2_and_back(self):
        raw = self.raw_image()
        qcow2 = self.dest()
        # nova's snapshot extraction: compress=True to qcow2.
        integration.convert_image(raw, qcow2, 'raw', 'qcow2', compress=True)
        self.assertIn('file format: qcow2',
                      qemu_img('info', '-f', 'qcow2', qcow2).stdout)
        self.assertSameImage(raw, 'raw', qcow2, 'qcow2')

        back = self.dest(exists=True)       # replaced
        integration.convert_image(qcow2, back, 'qcow2', 'raw',
                                  run_as_root=True)
        self.assertSameImage(raw, 'raw', back, 'raw')
        self.recorder.assert_not_called()

    def test_the_size_nova_sees_is_sent_and_a_larger_source_refused(self):
        raw = self.raw_image()
        qcow2 = self.dest()
        integration.convert_image(raw, qcow2, 'raw', 'qcow2')
        with mock.patch.object(integration.AccelClient, 'convert',
                               autospec=True,
                               side_effect=integration.AccelClient.convert
                               ) as sent:
            integration.convert_image(qcow2, self.dest(), 'qcow2', 'raw')
        self.assertEqual(os.path.getsize(raw),
                         sent.call_args.kwargs['max_bytes'])
        # The source grows between nova's look at it and the daemon's:
        # refused, typed, before anything is written.
        real = images.qemu_img_info

        def seen_before_it_grew(path, format=None):
            data = real(path, format=format)
            qemu_img('resize', '-f', 'qcow2', path, '64M')
            return data
        out = self.dest(exists=True)
        with mock.patch.object(images, 'qemu_img_info',
                               seen_before_it_grew), \
                self.assertRaises(nova_exception.ImageUnacceptable) as c:
            integration.convert_image(qcow2, out, 'qcow2', 'raw')
        self.assertIsInstance(c.exception.accel_error,
                              exception.SizeLimitExceeded)
        self.assertEqual(0, os.path.getsize(out))
        self.recorder.assert_not_called()

    def test_privsep_twin(self):
        raw = self.raw_image()
        qcow2 = self.dest()
        with mock.patch.object(integration._privsep_convert_image,
                               'func') as orig:
            integration.privsep_convert_image(raw, qcow2, 'raw', 'qcow2',
                                              self.root, True)
        orig.assert_not_called()
        self.assertSameImage(raw, 'raw', qcow2, 'qcow2')


class Fallback(convertcase.FallbackCase, Base):

    caller = images
    group = 'accel_daemon_nova'

    def test_encryption_goes_to_nova(self):
        raw, out = self.raw_image(), self.dest()
        enc = {'secret': 'pw', 'format': 'luks'}
        self.assertFallsBack(raw, out, 'raw', 'luks', dest_encryption=enc)
        self.assertFallsBack(raw, out, 'luks', 'raw', False, False, enc)

    def test_outside_paths_go_to_nova(self):
        raw = self.raw_image()
        outside = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, outside)
        self.assertFallsBack(raw, os.path.join(outside, 'x'), 'raw',
                             'qcow2', compress=True)
        self.assertFallsBack(raw, '/dev/sdz', 'raw', 'raw', True)
        self.assertFallsBack(raw, 'rbd:vms/disk', 'raw', 'raw')
        self.assertFallsBack(raw, self.dest(), None, 'raw')

    def test_a_live_snapshot_delta_goes_to_nova(self):
        # nova flattens a qcow2 delta onto its backing file; the daemon
        # never follows one, so the call stays on nova's own path.
        delta = self.backed_qcow2()
        self.assertFallsBack(delta, self.dest(), 'qcow2', 'qcow2',
                             compress=True)
        self.assertLoggedOnce('backing file', delta, self.dest(), 'qcow2',
                              'raw')

    def test_a_source_nova_cannot_inspect_goes_to_nova(self):
        raw, out = self.raw_image(), self.dest()
        with mock.patch.object(images, 'qemu_img_info',
                               side_effect=processutils.ProcessExecutionError(
                                   'qemu-img: Could not open')):
            self.assertFallsBack(raw, out, 'qcow2', 'raw')
        self.assertIn("no expected size (nova's qemu_img_info cannot tell "
                      "it)", integration._fallbacks_logged)

    def test_absent_daemon_goes_to_nova(self):
        raw, out = self.raw_image(), self.dest()
        self.assertAbsentDaemonFallsBack(raw, out, 'raw', 'qcow2')

    def test_each_reason_logged_once(self):
        raw, out = self.raw_image(), self.dest()
        enc = {'secret': 'pw', 'format': 'luks'}
        self.assertLoggedOnce('encryption', raw, out, 'raw', 'luks',
                              dest_encryption=enc)


class Plumbing(unittest.TestCase):

    def test_signature_is_novas(self):
        self.assertEqual(
            no_strings(inspect.signature(images.convert_image)),
            no_strings(inspect.signature(integration.convert_image)))

    def test_privsep_signature_is_novas(self):
        self.assertEqual(
            no_strings(inspect.signature(
                nova.privsep.qemu.convert_image.args[0])),
            no_strings(inspect.signature(
                integration.privsep_convert_image)))

    def test_install_keeps_the_original(self):
        convertcase.install_kept(self, integration, images)

    def test_install_refuses_another_signature_and_uninstall_restores(self):
        original = images.convert_image

        def other(source, dest, in_format, out_format, run_as_root=False):
            pass
        convertcase.install_refused(self, integration, images, other)
        with mock.patch.object(integration._convert_image, 'func', None), \
                mock.patch.object(images, 'convert_image', original):
            integration.install()
            integration.uninstall()
            self.assertIs(original, images.convert_image)

    def test_errors_as_nova_wraps_qemu_img(self):
        args = {'src': '/a', 'dst': '/b', 'src_format': 'raw',
                'dst_format': 'qcow2'}
        err = exception.NoSpace(path='/b')
        mapped = integration._convert_error(err, args, wrap=True)
        self.assertIsInstance(mapped, nova_exception.ImageUnacceptable)
        self.assertIn('Unable to convert image to qcow2', str(mapped))
        self.assertIs(err, mapped.accel_error)
        mapped = integration._convert_error(err, args, wrap=False)
        self.assertIsInstance(mapped, processutils.ProcessExecutionError)
        self.assertIn(str(err), mapped.stderr)
        refusal = exception.UnsafeImage(reason='backing file')
        for wrap in (True, False):
            mapped = integration._convert_error(refusal, args, wrap=wrap)
            self.assertIsInstance(mapped, nova_exception.ImageUnacceptable)
            self.assertIn('/a', str(mapped))
