# SPDX-License-Identifier: Apache-2.0
"""What test_cinder_convert and test_nova_convert share: an in-process
daemon for the module (``module_fixture``), and ``ConvertCase``, whose
calls reach that daemon through the integration's shared client and whose
fallbacks land in a recorder, never in the caller's qemu-img.

They run in their caller's venv (tools/run-caller-tests.sh).  The daemon
is the real RPC endpoint, TaskManager, LocalBackend and Engine on
oslo.messaging's fake:// transport, with the shipped filters (qemu-img
included) rewritten to its temporary allowed directory.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from typing import Any, Callable
import unittest
from unittest import mock

from accel_daemon.client import AccelClient
import inprocess

MIB = inprocess.MIB
qemu_img = inprocess.qemu_img
no_strings = inprocess.no_strings

# The module's daemon and a client of it, while one runs.
STATE: dict[str, Any] = {}


def module_fixture(prefix: str) -> tuple[Callable[[], None],
                                         Callable[[], None]]:
    """``setUpModule`` and ``tearDownModule`` for a test module: they start
    and stop an in-process daemon, which ``ConvertCase`` then uses."""

    def set_up() -> None:
        daemon = inprocess.Daemon(prefix).start()
        STATE.update(daemon=daemon, live=daemon.client())

    def tear_down() -> None:
        STATE.pop('live', None)
        STATE.pop('daemon').stop()

    return set_up, tear_down


class ConvertCase(unittest.TestCase):
    """The integration under test is ``integration``; ``FILL`` the data
    its caller's images hold."""

    integration: Any = None
    FILL = b'image data block\n'

    def setUp(self) -> None:
        self.patch(self.integration._shared, 'client', STATE['live'])
        # Every call that falls back lands here, never in qemu-img.
        self.recorder = mock.Mock(return_value=None)
        self.patch(self.integration._convert_image, 'func', self.recorder)

    def patch(self, target: Any, name: str, value: Any) -> None:
        patcher = mock.patch.object(target, name, value)
        patcher.start()
        self.addCleanup(patcher.stop)

    # The module's daemon: its allowed directory, its root, its host name
    # and its configuration (oslo.messaging's fake transport).
    images = property(lambda self: STATE['daemon'].images)
    root = property(lambda self: STATE['daemon'].root)
    host = property(lambda self: STATE['daemon'].host)
    conf = property(lambda self: STATE['daemon'].conf)

    def raw_image(self) -> str:
        """A raw image with data and a hole, as the caller would have it."""
        fd, path = tempfile.mkstemp(dir=self.images)
        self.addCleanup(os.unlink, path)
        with os.fdopen(fd, 'wb') as f:
            f.write(self.FILL * 30000)
            f.seek(3 * MIB)
            f.write(b'tail')
            f.truncate(4 * MIB)
        return path

    def backed_qcow2(self) -> str:
        """A qcow2 whose backing file is a raw image of the caller's."""
        raw = self.raw_image()
        fd, qcow2 = tempfile.mkstemp(dir=self.images, prefix='backed-')
        os.close(fd)
        self.addCleanup(os.unlink, qcow2)
        proc = qemu_img('create', '-f', 'qcow2', '-b', raw, '-F', 'raw',
                        qcow2)
        self.assertEqual(0, proc.returncode, proc.stderr)
        return qcow2

    def assertSameImage(self, a: str, fa: str, b: str, fb: str) -> None:
        proc = qemu_img('compare', '-f', fa, '-F', fb, a, b)
        self.assertEqual(0, proc.returncode, proc.stdout + proc.stderr)


class FallbackCase(ConvertCase):
    """Calls that go to the caller's own function (``caller``: the module
    that holds it), with the same arguments."""

    caller: Any = None
    group = ''      # the integration's option group

    def assertFallsBack(self, *args: Any, **kwargs: Any) -> None:
        self.integration.convert_image(*args, **kwargs)
        self.recorder.assert_called_once()
        call = self.recorder.call_args
        sig = inspect.signature(self.caller.convert_image)
        # The same arguments in effect (a parameter left at its default
        # may be passed or not: skip_create only exists from cinder 29).
        got = sig.bind(*call.args, **call.kwargs)
        got.apply_defaults()
        want = sig.bind(*args, **kwargs)
        want.apply_defaults()
        self.assertEqual(dict(want.arguments), dict(got.arguments))
        self.recorder.reset_mock()

    def assertAbsentDaemonFallsBack(self, *args: Any, **kwargs: Any) -> None:
        """A daemon that does not answer: the call falls back, and so does
        the next one, without asking again (the answer is cached)."""
        self.conf.set_override('timeout', 1, group='accel_daemon_client')
        absent = AccelClient(self.conf, host=self.host + '-absent')
        self.conf.clear_override('timeout', group='accel_daemon_client')
        self.addCleanup(absent.close)
        self.integration.register_opts(self.conf)
        self.conf.set_override('probe_timeout', 0.5, group=self.group)
        self.addCleanup(self.conf.clear_override, 'probe_timeout',
                        group=self.group)
        with mock.patch.object(self.integration._shared, 'client', absent):
            self.assertFallsBack(*args, **kwargs)
            with mock.patch.object(absent, 'capabilities') as caps:
                self.assertFallsBack(*args, **kwargs)
            caps.assert_not_called()

    def assertLoggedOnce(self, reason: str, *args: Any,
                         **kwargs: Any) -> None:
        """Three calls that fall back for ``reason`` log it once."""
        logged = self.integration._fallbacks_logged
        for known in [r for r in logged if reason in r]:
            logged.discard(known)
        with self.assertLogs(self.integration.LOG, 'INFO') as logs:
            for _ in range(3):
                self.integration.convert_image(*args, **kwargs)
        self.assertEqual(1, len(logs.records))
        self.assertIn(reason, logs.output[0])


def install_kept(case: unittest.TestCase, integration: Any,
                 caller: Any) -> None:
    """install() keeps the caller's own function and puts the
    integration's in its place."""
    original = caller.convert_image
    case.assertIsNot(original, integration.convert_image)
    with mock.patch.object(integration._convert_image, 'func', None), \
            mock.patch.object(caller, 'convert_image', original):
        integration.install()
        # The replacement, or its variant for this release of the caller.
        installed = integration._convert_image.installed
        case.assertIn(installed, (integration.convert_image,)
                      + integration._convert_image.variants)
        case.assertIs(installed, caller.convert_image)
        case.assertIs(original, integration.original_convert_image())


def install_refused(case: unittest.TestCase, integration: Any, caller: Any,
                    other: Any) -> None:
    """install() refuses a caller whose function has other parameters,
    and replaces nothing."""
    with mock.patch.object(integration._convert_image, 'func', None), \
            mock.patch.object(caller, 'convert_image', other):
        with case.assertRaisesRegex(RuntimeError, 'signature'):
            integration.install()
        case.assertIs(other, caller.convert_image)
