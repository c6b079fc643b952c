# SPDX-License-Identifier: Apache-2.0
"""cinder 29's own unit tests of ``cinder.image`` and ``image_utils``, with
accel-daemon's integration installed as ``accel-cinder-volume`` installs
it, and a daemon answering (suite ``cinder-installed``; see installed.py).
"""

import installed

TARGETS = ('cinder.tests.unit.image', 'cinder.tests.unit.test_image_utils')

_QAT_GZIP = 'cinder.tests.unit.image.accelerators.test_qat_gzip.' \
    'TestAccelerators.'
# The command lines of cinder's own engines: these tests make cinder's QAT
# and gzip engines available (their is_accel_exist mocked), then assert
# the qzip or gzip command ImageAccel runs.  With the integration
# installed DaemonAccel is first in the list and the daemon answers, so
# ImageAccel picks it; it sends the tests' relative fake path to the
# daemon, which refuses it (PathNotAllowed, raised as
# CinderAcceleratorError).
_COMMAND_LINE = ('asserts the qzip/gzip command line of cinder\'s own '
                 'engines, but ImageAccel picks DaemonAccel (first, and '
                 'available)', 'PathNotAllowed')
# "No valid accelerator": these make both of cinder's engines unavailable
# and expect ImageAccel to find none; DaemonAccel is available.
_NO_ENGINE = ('expects no engine when cinder\'s QAT and gzip engines are '
              'unavailable, but DaemonAccel is', 'ImageAccel object')

# test id -> (why it cannot pass with the integration installed, a text
# its error must contain).
EXPECTED_FAILURES = {
    _QAT_GZIP + name: entry for name, entry in (
        ('test_compress_img_prefer_qat_when_available', _COMMAND_LINE),
        ('test_compress_img_qat_accel_not_exist_gzip_exist', _COMMAND_LINE),
        ('test_compress_img_prefer_qat_without_gzip', _COMMAND_LINE),
        ('test_decompress_img_prefer_qat_when_available', _COMMAND_LINE),
        ('test_decompress_img_qat_accel_not_exist_gzip_exist',
         _COMMAND_LINE),
        ('test_decompress_img_prefer_qat_without_gzip', _COMMAND_LINE),
        ('test_compress_img_no_accel_exist', _NO_ENGINE),
        ('test_decompress_img_no_accel_exist', _NO_ENGINE),
    )
}


def _accelerator_first(case, integration):
    """DaemonAccel is cinder's first engine, and available."""
    from cinder.image import accelerator
    case.assertEqual(accelerator._ACCEL_PATH_PREFERENCE_ORDER_LIST[0],
                     integration.PATH)
    case.assertTrue(integration.DaemonAccel().is_accel_exist())


SERVICE = installed.Service(
    'cinder-installed', 'cinder.tests.unit',
    'accel_daemon.integrations.cinder', 'accel_daemon.cmd.cinder_volume',
    ('cinder.image.image_utils', 'convert_image'), _accelerator_first)


def load_tests(loader, tests, pattern):
    return SERVICE.suite(TARGETS, EXPECTED_FAILURES)
