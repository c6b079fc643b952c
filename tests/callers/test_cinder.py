# SPDX-License-Identifier: Apache-2.0
"""What accel_daemon.integrations.cinder will rely on in cinder 29.0.0.

Runs in the cinder caller venv (tools/run-caller-tests.sh).  Each test
pins one fact of cinder's real code; when a cinder release changes it, the
test fails and names what moved, before an integration silently breaks.
"""

import inspect
import unittest
from unittest import mock

from oslo_concurrency import processutils

from cinder.common import config
from cinder import exception
from cinder.image import accelerator
from cinder.image.accelerators import gzip as accel_gzip
from cinder.image import image_utils
import facts
from facts import params
from facts import REQUIRED

# cinder-volume's start-up, up to its RPC transport (cinder/cmd/volume.py
# main(), cinder/service.py), without config files or a broker.
CINDER_VOLUME_STARTUP = '''
import cinder.cmd.volume
from cinder import rpc, version
from oslo_config import cfg
CONF = cfg.CONF
CONF([], project='cinder', version=version.version_string(),
     default_config_files=[])
rpc.init(CONF)
'''


class ImageUtilsFacts(unittest.TestCase):
    """The functions a drop-in convert_image replaces or wraps."""

    def test_convert_image_signature(self):
        # The signature accel_daemon.integrations.cinder.convert_image
        # copies, so that cinder's callers need no change.
        self.assertEqual(
            [('source', REQUIRED), ('dest', REQUIRED),
             ('out_format', REQUIRED), ('out_subformat', None),
             ('src_format', None), ('run_as_root', True), ('throttle', None),
             ('cipher_spec', None), ('passphrase_file', None),
             ('compress', False), ('src_passphrase_file', None),
             ('image_id', None), ('data', None), ('disable_sparse', False)]
            # cinder 29 added skip_create (integrations.cinder installs
            # convert_image_27 on 27 and 28).
            + ([('skip_create', False)] if facts.major('cinder') >= 29
               else []),
            params(image_utils.convert_image))

    def test_upload_volume_signature(self):
        self.assertEqual(
            [('context', REQUIRED), ('image_service', REQUIRED),
             ('image_meta', REQUIRED), ('volume_path', REQUIRED),
             ('volume_fd', None), ('volume_format', 'raw'),
             ('run_as_root', True), ('compress', True), ('store_id', None),
             ('base_image_ref', None)],
            params(image_utils.upload_volume))

    def test_fetch_to_volume_format_signature(self):
        self.assertEqual(
            [('context', REQUIRED), ('image_service', REQUIRED),
             ('image_id', REQUIRED), ('dest', REQUIRED),
             ('volume_format', REQUIRED), ('blocksize', REQUIRED),
             ('volume_subformat', None), ('user_id', None),
             ('project_id', None), ('size', None), ('run_as_root', True),
             ('disable_sparse', False)],
            params(image_utils.fetch_to_volume_format))

    def test_accelerator_is_called_in_place(self):
        # The upload's temporary file is compressed, and the download's
        # decompressed, into itself: an accelerator must take src == dest.
        self.assertIs(accelerator, image_utils.accelerator)
        for func in (image_utils.upload_volume,
                     image_utils.fetch_to_volume_format):
            with self.subTest(func.__name__):
                self.assertIn('accelerator.ImageAccel(tmp, tmp)',
                              inspect.getsource(func))


class Engine(accelerator.AccelBase):
    """A test engine; ``exists`` is what is_accel_exist() answers."""

    exists = True

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.init_args = (args, kwargs)
        self.calls = []

    def is_accel_exist(self):
        return self.exists

    def compress_img(self, src, dest, run_as_root):
        self.calls.append(('compress', src, dest, run_as_root))

    def decompress_img(self, src, dest, run_as_root):
        self.calls.append(('decompress', src, dest, run_as_root))


class Absent(Engine):
    exists = False


class Present(Engine):
    pass


class AlsoPresent(Engine):
    pass


def engines(*classes):
    """Patch cinder's engine list with these classes (by dotted path, the
    way cinder names its own)."""
    return mock.patch.object(
        accelerator, '_ACCEL_PATH_PREFERENCE_ORDER_LIST',
        ['%s.%s' % (__name__, cls.__name__) for cls in classes])


class AcceleratorFacts(unittest.TestCase):
    """cinder.image.accelerator: how an accelerator class is plugged in."""

    def test_base_class(self):
        self.assertEqual({'is_accel_exist', 'compress_img', 'decompress_img'},
                         accelerator.AccelBase.__abstractmethods__)
        self.assertEqual([('self', REQUIRED)],
                         params(accelerator.AccelBase.is_accel_exist))
        for name in ('compress_img', 'decompress_img'):
            with self.subTest(name):
                self.assertEqual(
                    [('self', REQUIRED), ('src', REQUIRED),
                     ('dest', REQUIRED), ('run_as_root', REQUIRED)],
                    params(getattr(accelerator.AccelBase, name)))

    def test_image_accel_signatures(self):
        self.assertEqual([('self', REQUIRED), ('src', REQUIRED),
                          ('dest', REQUIRED)],
                         params(accelerator.ImageAccel.__init__))
        for name in ('compress_img', 'decompress_img'):
            with self.subTest(name):
                self.assertEqual(
                    [('self', REQUIRED), ('run_as_root', REQUIRED)],
                    params(getattr(accelerator.ImageAccel, name)))

    def test_engine_list_is_hard_coded(self):
        # No option or entry point chooses engines: an integration has to
        # put its class into this module-level list.
        self.assertEqual(['cinder.image.accelerators.qat.AccelQAT',
                          'cinder.image.accelerators.gzip.AccelGZIP'],
                         accelerator._ACCEL_PATH_PREFERENCE_ORDER_LIST)

    def test_engine_list_is_used_for_gzip_only(self):
        opt = config.CONF._get_opt_info('compression_format')['opt']
        self.assertEqual('gzip', opt.default)
        self.assertEqual(['gzip'], list(opt.type.choices))

    def test_first_engine_that_exists_wins(self):
        with engines(Absent, Present, AlsoPresent):
            accel = accelerator.ImageAccel('/src', '/dst')
        self.assertIs(Present, type(accel.engine))
        # Built with no arguments, once per ImageAccel.
        self.assertEqual(((), {}), accel.engine.init_args)

    def test_no_engine_raises_cinder_exception(self):
        with engines(Absent), self.assertRaises(
                exception.CinderException) as caught:
            accelerator.ImageAccel('/src', '/dst')
        self.assertIs(exception.CinderException, type(caught.exception))
        self.assertIn('No valid accelerator', str(caught.exception))

    def test_calls_pass_src_dest_run_as_root(self):
        with engines(Present):
            accel = accelerator.ImageAccel('/t', '/t')
        accel.compress_img(run_as_root=False)
        accel.decompress_img(run_as_root=True)
        self.assertEqual([('compress', '/t', '/t', False),
                          ('decompress', '/t', '/t', True)],
                         accel.engine.calls)

    def test_silently_returns_when_engine_vanishes(self):
        # is_accel_exist() is asked again at call time; False then means
        # *nothing happens and no error*: the image goes up uncompressed
        # (or stays compressed on download). An integration whose daemon
        # is down must raise instead of answering False.
        with engines(Present):
            accel = accelerator.ImageAccel('/t', '/t')
        accel.engine.exists = False
        self.assertIsNone(accel.compress_img(run_as_root=True))
        self.assertIsNone(accel.decompress_img(run_as_root=True))
        self.assertEqual([], accel.engine.calls)

    def test_cinder_engines_subclass_the_base(self):
        for path in accelerator._ACCEL_PATH_PREFERENCE_ORDER_LIST:
            with self.subTest(path):
                module, _, name = path.rpartition('.')
                cls = getattr(__import__(module, fromlist=[name]), name)
                self.assertTrue(issubclass(cls, accelerator.AccelBase))


class ExceptionFacts(unittest.TestCase):

    def test_cinder_accelerator_error(self):
        self.assertTrue(issubclass(exception.CinderAcceleratorError,
                                   exception.CinderException))
        err = exception.CinderAcceleratorError(
            accelerator='ACCEL', cmd=['x'], description='DESC',
            reason='WHY')
        for part in ('ACCEL', "['x']", 'DESC', 'WHY'):
            self.assertIn(part, str(err))

    def test_image_unacceptable(self):
        self.assertTrue(issubclass(exception.ImageUnacceptable,
                                   exception.Invalid))
        err = exception.ImageUnacceptable(image_id='IMG', reason='WHY')
        self.assertEqual('Image IMG is unacceptable: WHY', str(err))

    def test_process_execution_error_is_oslo_concurrency(self):
        # cinder catches oslo.concurrency's class; it has none of its own.
        self.assertIs(processutils, image_utils.processutils)
        self.assertIs(processutils, accel_gzip.processutils)
        self.assertFalse(hasattr(exception, 'ProcessExecutionError'))


class RpcFacts(unittest.TestCase):

    def test_cinder_volume_uses_oslo_default_exchange(self):
        # cinder.rpc.set_defaults exists but cinder never calls it. The
        # AccelClient pins accel-daemon's own exchange all the same.
        found = facts.exchanges(CINDER_VOLUME_STARTUP)
        self.assertEqual({'control_exchange': 'openstack',
                          'client': 'accel_daemon'}, found)

    def test_client_reaches_default_daemon(self):
        self.assertEqual(
            facts.daemon_exchange(),
            facts.exchanges(CINDER_VOLUME_STARTUP)['client'])
