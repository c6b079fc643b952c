"""accel_daemon.integrations.cinder.DaemonAccel under cinder 29.0.0's real
ImageAccel, against an in-process daemon.

Runs in the cinder caller venv (tools/run-caller-tests.sh).  The daemon is
the real RPC endpoint, TaskManager, LocalBackend and Engine (isal) on
oslo.messaging's fake:// transport; its allowed directory is a temporary
one.  cinder calls its accelerator IN PLACE (src == dest).
"""

import gzip
import os
import shutil
import subprocess
import tempfile
import unittest
import uuid
from unittest import mock

from oslo_config import cfg
from oslo_messaging import conffixture

from cinder import exception as cinder_exception
from cinder.image import accelerator

from accel_daemon import exception
from accel_daemon.client import AccelClient
from accel_daemon.engine.settings import Settings
from accel_daemon.integrations import cinder as integration
from accel_daemon.manager.backends import LocalBackend
from accel_daemon.manager.journal import Journal
from accel_daemon.manager.tasks import TaskManager
from accel_daemon.rpc import endpoint as rpc_endpoint
from accel_daemon.rpc import rpcapi
from accel_daemon.rpc import server as rpc_server

HOST = 'cinder-accel-%s' % uuid.uuid4().hex[:8]
ABSENT = HOST + '-absent'
# The shipped filters name this directory; rewritten to the test's.
DEFAULT_DIR = '/var/lib/accel-daemon/images'
FILTERS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       os.pardir, os.pardir, 'filters')
DATA = b''.join(b'block %08d of a volume image\n' % i for i in range(40000))

# Set by setUpModule: the clients the engine classes below are built on.
CLIENTS = {}


def setUpModule():
    global ROOT, IMAGES, OUTSIDE, FIXTURE, CONF, MANAGER, SERVER, TRANSPORT
    ROOT = os.path.realpath(tempfile.mkdtemp(prefix='cinder-accel-'))
    IMAGES = os.path.join(ROOT, 'images')
    OUTSIDE = os.path.join(ROOT, 'outside')
    filters = os.path.join(ROOT, 'filters')
    for d in (IMAGES, OUTSIDE, filters):
        os.makedirs(d)
    for name in os.listdir(FILTERS):
        with open(os.path.join(FILTERS, name)) as f:
            text = f.read()
        with open(os.path.join(filters, name), 'w') as f:
            f.write(text.replace(DEFAULT_DIR, IMAGES))
    CONF = cfg.ConfigOpts()
    FIXTURE = conffixture.ConfFixture(CONF, transport_url='fake:/')
    FIXTURE.setUp()
    CONF([], default_config_files=[])
    CONF.set_override('control_exchange', 'test-%s' % HOST)
    settings = Settings(allowed_dirs=(IMAGES,), filters_path=(filters,),
                        drivers=('isal',))
    backend = LocalBackend(settings)
    MANAGER = TaskManager(backend, Journal(os.path.join(ROOT, 'tasks.db')),
                          workers=2)
    MANAGER.start()
    TRANSPORT = rpcapi.get_transport(CONF)
    assert type(TRANSPORT._driver).__name__ == 'FakeDriver'
    endpoint = rpc_endpoint.AccelEndpoint(MANAGER, backend, settings,
                                          max_wait=0.5)
    SERVER = rpc_server.build(TRANSPORT, 'accel_daemon', HOST, [endpoint])
    SERVER.start()
    live = AccelClient(CONF, host=HOST)
    live.wait_interval = 0.2
    CLIENTS['live'] = live
    # Nobody listens as ABSENT: every call times out.
    CONF.set_override('timeout', 1, group='accel_daemon_client')
    CLIENTS['absent'] = AccelClient(CONF, host=ABSENT)
    CONF.clear_override('timeout', group='accel_daemon_client')


def tearDownModule():
    for client in CLIENTS.values():
        client.close()
    SERVER.stop()
    MANAGER.stop(1.0)
    SERVER.wait()
    TRANSPORT.cleanup()
    FIXTURE.cleanUp()
    shutil.rmtree(ROOT, ignore_errors=True)


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
