# SPDX-License-Identifier: Apache-2.0
"""accel_daemon.integrations.cinder.DaemonAccel under cinder 29.0.0's real
ImageAccel, against an in-process daemon.

Runs in the cinder caller venv (tools/run-caller-tests.sh).  The daemon is
the real RPC endpoint, TaskManager, LocalBackend and Engine (isal) on
oslo.messaging's fake:// transport; its allowed directory is a temporary
one.  cinder calls its accelerator IN PLACE (src == dest).
"""

import gzip
import os
import subprocess
import unittest
from unittest import mock
import uuid

from oslo_config import cfg


from cinder import exception as cinder_exception
from cinder.image import accelerator

from accel_daemon.client import AccelClient
from accel_daemon import exception
from accel_daemon.integrations import cinder as integration
import inprocess

DATA = b''.join(b'block %08d of a volume image\n' % i for i in range(40000))

# Set by setUpModule: the clients the engine classes below are built on.
CLIENTS = {}


def setUpModule():
    global DAEMON, ROOT, IMAGES, OUTSIDE
    DAEMON = inprocess.Daemon('cinder-accel').start()
    ROOT, IMAGES = DAEMON.root, DAEMON.images
    OUTSIDE = os.path.join(ROOT, 'outside')
    os.makedirs(OUTSIDE)
    CLIENTS['live'] = DAEMON.client()
    # Nobody listens as this host: every call times out.
    CLIENTS['absent'] = DAEMON.client(host=DAEMON.host + '-absent',
                                      timeout=1)


def tearDownModule():
    DAEMON.stop()


class LiveAccel(integration.DaemonAccel):
    """DaemonAccel as cinder builds it (no arguments), on the live daemon."""

    def __init__(self):
        super().__init__(client=CLIENTS['live'], exist_ttl=0)


class AbsentAccel(integration.DaemonAccel):
    def __init__(self):
        super().__init__(client=CLIENTS['absent'], exist_ttl=0,
                         probe_timeout=0.5)


def engines(*classes):
    """cinder's engine list, patched the way its own tests name engines."""
    return mock.patch.object(
        accelerator, '_ACCEL_PATH_PREFERENCE_ORDER_LIST',
        ['%s.%s' % (__name__, cls.__name__) for cls in classes])


def snapshot(directory):
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), 'rb') as f:
            out[name] = f.read()
    return out


class Base(unittest.TestCase):

    def make(self, directory, data=DATA):
        path = os.path.join(directory, 'tmp%s' % uuid.uuid4().hex[:8])
        with open(path, 'wb') as f:
            f.write(data)
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        return path


class RoundTrip(Base):

    def test_image_accel_compresses_then_decompresses_in_place(self):
        tmp = self.make(IMAGES)
        with engines(LiveAccel):
            accel = accelerator.ImageAccel(tmp, tmp)
        self.assertIs(LiveAccel, type(accel.engine))

        accel.compress_img(run_as_root=True)
        with open(tmp, 'rb') as f:
            compressed = f.read()
        self.assertTrue(accelerator.is_gzip_compressed(tmp))
        self.assertLess(len(compressed), len(DATA))
        self.assertEqual(DATA, gzip.decompress(compressed))
        # The gzip tool reads it too.
        proc = subprocess.run(['gzip', '-dc', tmp], capture_output=True,
                              check=True)
        self.assertEqual(DATA, proc.stdout)

        accel.decompress_img(run_as_root=True)
        with open(tmp, 'rb') as f:
            self.assertEqual(DATA, f.read())
        # In place: nothing else left beside it.
        self.assertEqual([os.path.basename(tmp)], os.listdir(IMAGES))

    def test_is_accel_exist_on_a_live_daemon(self):
        self.assertTrue(LiveAccel().is_accel_exist())


class Refusal(Base):

    def test_path_outside_allowed_dir_raises_and_writes_nothing(self):
        tmp = self.make(OUTSIDE)
        with engines(LiveAccel):
            accel = accelerator.ImageAccel(tmp, tmp)
        before = snapshot(OUTSIDE)
        for method in ('compress_img', 'decompress_img'):
            with self.subTest(method):
                with self.assertRaises(
                        cinder_exception.CinderAcceleratorError) as caught:
                    getattr(accel, method)(run_as_root=True)
                reason = caught.exception.accel_error
                self.assertIsInstance(reason, exception.PathNotAllowed)
                self.assertIs(reason, caught.exception.__cause__)
                self.assertEqual(str(reason),
                                 caught.exception.kwargs['reason'])
                self.assertIn(str(reason), str(caught.exception))
                self.assertEqual(before, snapshot(OUTSIDE))
                self.assertEqual([], os.listdir(IMAGES))

    def test_corrupt_input_raises(self):
        tmp = self.make(IMAGES, b'not gzip at all')
        with engines(LiveAccel):
            accel = accelerator.ImageAccel(tmp, tmp)
        with self.assertRaises(cinder_exception.CinderAcceleratorError) as c:
            accel.decompress_img(run_as_root=True)
        self.assertIsInstance(c.exception.accel_error,
                              exception.CorruptInput)
        with open(tmp, 'rb') as f:
            self.assertEqual(b'not gzip at all', f.read())
        self.assertEqual([os.path.basename(tmp)], os.listdir(IMAGES))


class NoAnswer(Base):

    def test_is_accel_exist_is_false_not_an_error(self):
        self.assertIs(False, AbsentAccel().is_accel_exist())

    def test_image_accel_finds_no_engine(self):
        with engines(AbsentAccel), self.assertRaises(
                cinder_exception.CinderException) as caught:
            accelerator.ImageAccel('/t', '/t')
        self.assertIn('No valid accelerator', str(caught.exception))

    def test_calls_raise_and_write_nothing(self):
        tmp = self.make(IMAGES)
        accel = AbsentAccel()
        for method in ('compress_img', 'decompress_img'):
            with self.subTest(method):
                with self.assertRaises(
                        cinder_exception.CinderAcceleratorError) as caught:
                    getattr(accel, method)(tmp, tmp, True)
                self.assertIsInstance(caught.exception.accel_error,
                                      exception.ServiceUnavailable)
                self.assertEqual({os.path.basename(tmp): DATA},
                                 snapshot(IMAGES))

    def test_once_there_stays_there(self):
        # cinder asks again before each call and skips the work silently on
        # False: an instance that said True keeps saying it, and the call
        # raises instead.
        accel = AbsentAccel()
        accel._exists = True
        self.assertTrue(accel.is_accel_exist())
        tmp = self.make(IMAGES)
        image_accel = accelerator.ImageAccel.__new__(accelerator.ImageAccel)
        image_accel.src = image_accel.dest = tmp
        image_accel.engine = accel
        with self.assertRaises(cinder_exception.CinderAcceleratorError):
            image_accel.compress_img(run_as_root=True)


class Plumbing(unittest.TestCase):

    def test_subclasses_cinders_base(self):
        self.assertTrue(issubclass(integration.DaemonAccel,
                                   accelerator.AccelBase))
        self.assertEqual('accel_daemon.integrations.cinder.DaemonAccel',
                         integration.PATH)

    def test_exist_answer_is_cached_for_the_ttl(self):
        client = mock.Mock(spec=AccelClient)
        client.conf = cfg.ConfigOpts()
        client.host = 'h1'
        client.capabilities.side_effect = exception.ServiceUnavailable(
            reason='down')
        first = integration.DaemonAccel(client=client, exist_ttl=60)
        self.assertFalse(first.is_accel_exist())
        self.assertFalse(integration.DaemonAccel(
            client=client, exist_ttl=60).is_accel_exist())
        self.assertEqual(1, client.capabilities.call_count)
        client.capabilities.side_effect = None
        client.capabilities.return_value = {'default_driver': 'isal'}
        self.assertTrue(integration.DaemonAccel(
            client=client, exist_ttl=0).is_accel_exist())
        self.assertEqual(2, client.capabilities.call_count)
