# SPDX-License-Identifier: Apache-2.0
"""Which /dev paths the cinder and nova integrations send to the daemon:
those matching the ``allowed_block_devices`` the daemon advertises and
really block devices (accel_daemon.integrations.common)."""

import os
import stat

import pytest

from accel_daemon.integrations import common


def a_block_device():
    for name in sorted(os.listdir('/dev')):
        path = os.path.join('/dev', name)
        try:
            if stat.S_ISBLK(os.stat(path).st_mode):
                return path
        except OSError:
            continue
    pytest.skip('no block device in /dev')


def caps(*patterns, dirs=('/srv/images',)):
    return {'allowed_dirs': list(dirs),
            'allowed_block_devices': list(patterns)}


def test_matching_block_device_is_sent():
    dev = a_block_device()
    assert common.device_allowed(caps(dev), dev)
    assert common.device_allowed(caps('/dev/*'), dev)
    assert common.device_refusal(caps(dev), '/srv/images/x', dev) is None
    assert common.paths_allowed(caps(dev), '/srv/images/x', dev)
    assert common.paths_allowed(caps(dev), dev, '/srv/images/x')


def test_device_outside_the_patterns_falls_back():
    dev = a_block_device()
    other = caps('/dev/mapper/cinder--volumes-*')
    assert not common.device_allowed(other, dev)
    assert 'outside' in common.device_refusal(other, '/srv/images/x', dev)
    assert not common.paths_allowed(other, '/srv/images/x', dev)


def test_a_daemon_that_allows_none():
    dev = a_block_device()
    for advertised in (caps(), {'allowed_dirs': ['/srv/images']}):
        reason = common.device_refusal(advertised, dev, '/srv/images/x')
        assert 'allows none' in reason
        assert not common.device_allowed(advertised, dev)


def test_matching_name_that_is_no_block_device():
    assert not common.device_allowed(caps('/dev/*'), '/dev/null')
    assert 'not a block device' in common.device_refusal(
        caps('/dev/*'), '/dev/null')
    missing = '/dev/accel-test-no-such-device'
    assert not common.device_allowed(caps('/dev/*'), missing)


def test_files_are_not_devices():
    assert common.device_refusal(caps(), '/srv/images/a',
                                 '/srv/images/b') is None
    assert common.paths_allowed(caps(), '/srv/images/a', '/srv/images/b')
    assert not common.paths_allowed(caps(), '/etc/passwd', '/srv/images/b')


def test_patterns_of_other_types_are_ignored():
    dev = a_block_device()
    assert not common.device_allowed({'allowed_block_devices': [None, 3]},
                                     dev)
