# SPDX-License-Identifier: Apache-2.0
"""[accel_daemon_rpc] callers and the [caller:NAME] sections: what each
caller may name, checked against the host's envelope."""

import logging

from oslo_config import cfg
import pytest

from accel_daemon.cmd import daemon
from accel_daemon import conf as accel_conf
from accel_daemon.conf import callers
from accel_daemon.engine.settings import Scope


def make_conf(tmp_path, text):
    path = tmp_path / 'accel-daemon.conf'
    path.write_text(text)
    conf = cfg.ConfigOpts()
    accel_conf.register_opts(conf)
    conf(['--config-file', str(path)], project='accel-daemon')
    return conf


BASE = """
[accel_daemon]
allowed_dirs = /srv/cinder,/srv/nova/instances
allowed_block_devices = /dev/vg/*
"""

TWO = BASE + """
[accel_daemon_rpc]
callers = cinder,nova

[caller:cinder]
transport_url = rabbit://accel-daemon:pw@127.0.0.1:5672/accel-cinder
allowed_dirs = /srv/cinder/conversion
allowed_block_devices = /dev/vg/volume-*
max_queued = 8

[caller:nova]
transport_url = rabbit://accel-daemon:pw@127.0.0.1:5672/accel-nova
allowed_dirs = /srv/nova/instances/_base
operator = true
"""


def test_two_callers(tmp_path):
    conf = make_conf(tmp_path, TWO)
    assert accel_conf.settings(conf).callers == (
        Scope('cinder', ('/srv/cinder/conversion',), ('/dev/vg/volume-*',)),
        Scope('nova', ('/srv/nova/instances/_base',), ()))
    found = daemon.callers_of(conf)
    assert [c.name for c in found] == ['cinder', 'nova']
    assert found[0].max_queued == 8 and not found[0].operator
    assert found[0].owner == 'cinder'
    assert found[1].operator and found[1].owner is None
    assert found[0].transport_url.endswith('/accel-cinder')
    # The daemon's password is never shown.
    assert 'pw@' not in repr(found[0])


def test_no_callers_is_one_caller_with_the_envelope(tmp_path):
    conf = make_conf(tmp_path, BASE)
    [only] = daemon.callers_of(conf)
    assert only.name is None and only.owner is None
    assert only.allowed_dirs == ('/srv/cinder', '/srv/nova/instances')
    assert only.transport_url is None


@pytest.mark.parametrize('change, words', [
    # A caller directory outside the host's envelope.
    (('/srv/cinder/conversion', '/var/lib/secret'), 'not inside'),
    # A prefix that is not a parent ("/srv/cinder-x" is not in /srv/cinder).
    (('/srv/cinder/conversion', '/srv/cinder-x'), 'not inside'),
    # Device patterns wider than the host's.
    (('/dev/vg/volume-*', '/dev/*'), 'not within'),
    (('/dev/vg/volume-*', '/dev/mapper/x'), 'not within'),
    # Two callers on one transport could not be told apart.
    (('accel-nova', 'accel-cinder'), 'share one transport_url'),
    # No transport, no directory.
    (('transport_url = rabbit://accel-daemon:pw@127.0.0.1:5672/accel-cinder',
      ''), 'transport_url is required'),
    (('allowed_dirs = /srv/cinder/conversion', ''), 'names no directory'),
    # Names that are not a caller's.
    (('callers = cinder,nova', 'callers = Cinder'), 'not a caller name'),
    (('callers = cinder,nova', 'callers = cinder,cinder'), 'twice'),
])
def test_bad_sections_are_refused(tmp_path, change, words):
    conf = make_conf(tmp_path, TWO.replace(*change))
    with pytest.raises(callers.CallerConfigError) as err:
        accel_conf.settings(conf)
    assert words in str(err.value)
    with pytest.raises(SystemExit) as stop:
        daemon.check_callers(conf)
    assert words in str(stop.value)


def test_warnings_for_shared_dirs_guest_and_no_callers(tmp_path, caplog):
    text = TWO.replace('/srv/nova/instances/_base',
                       '/srv/cinder/conversion/nova').replace(
        'accel-daemon:pw@127.0.0.1:5672/accel-nova',
        'guest:guest@127.0.0.1:5672/accel-nova')
    text = text.replace('allowed_dirs = /srv/cinder,', 'allowed_dirs = '
                        '/srv/cinder,/srv/cinder/conversion/nova,')
    with caplog.at_level(logging.WARNING):
        daemon.check_callers(make_conf(tmp_path, text))
    messages = [r.getMessage() for r in caplog.records]
    assert any('share the directory /srv/cinder/conversion/nova' in m
               for m in messages), messages
    assert any('caller nova logs in as guest' in m for m in messages)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        daemon.check_callers(make_conf(tmp_path / '..', BASE))
    assert any('No [accel_daemon_rpc] callers configured' in r.getMessage()
               for r in caplog.records)
