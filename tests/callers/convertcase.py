# SPDX-License-Identifier: Apache-2.0
"""What test_cinder_convert and test_nova_convert share: an in-process
daemon for the module (``module_fixture``), and ``ConvertCase``, whose
calls reach that daemon through the integration's shared client and whose
fallbacks land in a recorder, never in the caller's qemu-img.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable
import unittest
from unittest import mock

import inprocess

MIB = inprocess.MIB
qemu_img = inprocess.qemu_img

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

    def assertSameImage(self, a: str, fa: str, b: str, fb: str) -> None:
        proc = qemu_img('compare', '-f', fa, '-F', fb, a, b)
        self.assertEqual(0, proc.returncode, proc.stdout + proc.stderr)
