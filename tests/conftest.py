# SPDX-License-Identifier: Apache-2.0
import shutil

# oslo.service's threading backend for the whole run, as accel-daemon and
# accel-image select it in production: the first import of oslo.messaging
# would otherwise pick the eventlet backend, whose Launcher runs the
# daemon's service in a green thread that never runs here.
import accel_daemon.cmd.daemon  # noqa: F401

import pytest

from tests import envfixture


@pytest.fixture
def env(tmp_path):
    return envfixture.make_env(tmp_path)


def have(tool):
    return shutil.which(tool) is not None


def pytest_configure(config):
    for name, text in (
            ('functional', 'uses real external tools'),
            ('rpc', 'uses the real RabbitMQ broker'),
            ('privsep', 'starts a real privsep daemon'),
            ('slow', 'takes more than a few seconds')):
        config.addinivalue_line('markers', '%s: %s' % (name, text))
