# SPDX-License-Identifier: Apache-2.0
"""What tools/install.sh does for callers, short of a broker: the sections
tools/caller_conf.py writes are ones the daemon accepts, and a guest
transport is refused before anything is installed."""

import os
import subprocess

from oslo_config import cfg
import pytest

from accel_daemon.cmd import daemon
from accel_daemon import conf as accel_conf
from accel_daemon.engine.settings import Scope
from tests.envfixture import ROOT

INSTALL = os.path.join(ROOT, 'tools', 'install.sh')
CALLER_CONF = os.path.join(ROOT, 'tools', 'caller_conf.py')


def add(conf, *args):
    subprocess.run(['python3', CALLER_CONF, str(conf), *args], check=True)


def load(path):
    conf = cfg.ConfigOpts()
    accel_conf.register_opts(conf)
    conf(['--config-file', str(path)], project='accel-daemon')
    return conf


def test_sections_written_are_accepted_by_the_daemon(tmp_path):
    path = tmp_path / 'accel-daemon.conf'
    path.write_text('# kept\n[DEFAULT]\ntransport_url = rabbit://d:x@h/'
                    'accel-operator\n\n[accel_daemon]\nallowed_dirs = '
                    '/var/lib/accel-daemon/images\n')
    add(path, 'operator', 'rabbit://d:x@h/accel-operator',
        '/var/lib/accel-daemon/images', '', '--operator')
    add(path, 'cinder', 'rabbit://d:x@h/accel-cinder',
        '/var/lib/cinder/conversion', '/dev/cinder-volumes/volume-*')
    add(path, 'nova', 'rabbit://d:x@h/accel-nova',
        '/var/lib/nova/instances/_base')
    # Again: nothing doubles.
    add(path, 'cinder', 'rabbit://d:x@h/accel-cinder',
        '/var/lib/cinder/conversion', '/dev/cinder-volumes/volume-*')
    text = path.read_text()
    assert text.startswith('# kept\n')
    assert text.count('[caller:cinder]') == 1
    conf = load(path)
    assert conf.accel_daemon_rpc.callers == ['operator', 'cinder', 'nova']
    assert accel_conf.settings(conf).callers == (
        Scope('operator', ('/var/lib/accel-daemon/images',)),
        Scope('cinder', ('/var/lib/cinder/conversion',),
              ('/dev/cinder-volumes/volume-*',)),
        Scope('nova', ('/var/lib/nova/instances/_base',)))
    found = daemon.callers_of(conf)
    assert [c.operator for c in found] == [True, False, False]
    # The envelope grew just enough to hold them.
    assert conf.accel_daemon.allowed_dirs == [
        '/var/lib/accel-daemon/images', '/var/lib/cinder/conversion',
        '/var/lib/nova/instances/_base']
    assert conf.accel_daemon.allowed_block_devices == [
        '/dev/cinder-volumes/volume-*']


@pytest.mark.parametrize('url, guest', [
    ('rabbit://guest:guest@127.0.0.1:5672/', True),
    ('rabbit://guest@127.0.0.1:5672/', True),
    ('rabbit://accel-daemon:pw@h:5672,guest:guest@h2:5672/', True),
    ('rabbit://accel-daemon:guest@127.0.0.1:5672/', False),
    ('rabbit://accel-guest:pw@127.0.0.1:5672/', False),
])
def test_guest_urls_are_recognised(url, guest):
    # $0 is not the script: sourcing it runs nothing but definitions.
    r = subprocess.run(['bash', '-c', 'source "$1"; is_guest_url "$2"',
                        'x', INSTALL, url], capture_output=True)
    assert (r.returncode == 0) is guest


@pytest.mark.skipif(os.geteuid() != 0, reason='install.sh runs as root')
def test_install_refuses_guest_before_installing_anything(tmp_path):
    env = dict(os.environ,
               ACCEL_TRANSPORT_URL='rabbit://guest:guest@127.0.0.1:5672/',
               ACCEL_PREFIX=str(tmp_path / 'prefix'))
    r = subprocess.run(['bash', INSTALL], env=env, capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 1
    assert 'refusing to deploy on the broker\'s guest account' in r.stderr
    assert not (tmp_path / 'prefix').exists()
