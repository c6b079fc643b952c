# SPDX-License-Identifier: Apache-2.0
"""The drop-in that switches a packaged cinder-volume or nova-compute unit
to accel-daemon's launcher (tools/systemd_switch.py), rendered from unit
files as the distributions ship them, with their programs' real #! lines;
each rendered drop-in is read back the way systemd merges it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tests import daemonproc

ROOT = pathlib.Path(__file__).resolve().parents[2]


sw = daemonproc.load_file('systemd_switch',
                          str(ROOT / 'tools' / 'systemd_switch.py'))

UBUNTU = '''# /usr/lib/systemd/system/cinder-volume.service
[Unit]
Description=OpenStack Cinder Volume
After=network.target

[Service]
User=cinder
Group=cinder
Type=simple
WorkingDirectory=~
RuntimeDirectory=cinder lock/cinder
CacheDirectory=cinder
ExecStart=/usr/bin/cinder-volume --config-file=/etc/cinder/cinder.conf \\
    --log-file=/var/log/cinder/cinder-volume.log
Restart=on-failure
LimitNOFILE=65535
TimeoutStopSec=15

[Install]
WantedBy=multi-user.target
'''

RDO = '''# /usr/lib/systemd/system/openstack-nova-compute.service
[Unit]
Description=OpenStack Nova Compute Server
After=syslog.target network.target libvirtd.service

[Service]
Environment=LIBGUESTFS_ATTACH_METHOD=appliance
Type=notify
NotifyAccess=all
TimeoutStartSec=0
Restart=always
User=nova
ExecStart=/usr/bin/nova-compute

[Install]
WantedBy=multi-user.target

# /etc/systemd/system/openstack-nova-compute.service.d/override.conf
[Service]
ExecStart=
ExecStart=/usr/bin/nova-compute --config-file /etc/nova/nova.conf $OPTIONS
'''


@pytest.fixture
def programs(tmp_path):
    """Console scripts with the #! lines of a packaged host (the
    interpreter: this test's own Python, where accel-daemon is
    installed)."""
    bindir = tmp_path / 'usr' / 'bin'
    bindir.mkdir(parents=True)
    made = {}
    for name in ('cinder-volume', 'nova-compute'):
        path = bindir / name
        path.write_text('#!%s\nimport sys\n' % sys.executable)
        path.chmod(0o755)
        made[name] = str(path)
    initd = tmp_path / 'cinder-volume.init'
    initd.write_text('#!/bin/sh\n### BEGIN INIT INFO\n')
    initd.chmod(0o755)
    made['init'] = str(initd)
    return made


def _scripts():
    import sysconfig
    return sysconfig.get_path('scripts')


def _merged_exec_start(unit, dropin):
    """What systemd runs once the drop-in is added after the unit."""
    return sw.exec_start(unit + '\n' + dropin)


def test_ubuntu_unit_keeps_its_arguments(programs):
    unit = UBUNTU.replace('/usr/bin/cinder-volume', programs['cinder-volume'])
    dropin = sw.render('cinder-volume', unit)
    [command] = _merged_exec_start(unit, dropin)
    argv = sw.split_command(command)
    launcher = os.path.join(_scripts(), 'accel-cinder-volume')
    assert argv == [launcher, '--config-file=/etc/cinder/cinder.conf',
                    '--log-file=/var/log/cinder/cinder-volume.log']
    assert 'Environment=OS_ACCEL_DAEMON_CLIENT__ENABLED=true' in dropin
    # The launcher is really the service's: it runs and reads the switch
    # from the environment the drop-in sets.
    assert os.access(launcher, os.X_OK)


def test_an_override_and_environment_variables_are_kept(programs):
    unit = RDO.replace('/usr/bin/nova-compute', programs['nova-compute'])
    dropin = sw.render('nova-compute', unit)
    [command] = _merged_exec_start(unit, dropin)
    assert command.endswith(' --config-file /etc/nova/nova.conf $OPTIONS')
    assert sw.split_command(command)[0] == os.path.join(
        _scripts(), 'accel-nova-compute')


def test_without_the_console_script_the_module_runs(programs):
    def run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 0, '/nonexistent\nTrue\n')
    unit = UBUNTU.replace('/usr/bin/cinder-volume', programs['cinder-volume'])
    [command] = sw.exec_start(sw.render('cinder-volume', unit, run=run))
    assert sw.split_command(command)[:3] == [
        sys.executable, '-m', 'accel_daemon.cmd.cinder_volume']


@pytest.mark.parametrize('change, says', [
    (lambda u, p: u.replace('/usr/bin/cinder-volume',
                            p['init'] + ' systemd-start'),
     'not a Python console script'),
    (lambda u, p: u.replace('ExecStart=/usr/bin/cinder-volume',
                            'ExecStartPre=/usr/bin/cinder-volume'),
     '0 ExecStart commands'),
    (lambda u, p: u.replace('/usr/bin/cinder-volume', '/nonexistent/x'),
     'cannot read'),
])
def test_units_it_cannot_switch(programs, change, says):
    unit = change(UBUNTU, programs)
    with pytest.raises(sw.CannotSwitch, match=says):
        sw.render('cinder-volume', unit)


def test_accel_daemon_missing_from_the_services_python(programs):
    def run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 0, '/usr/bin\nFalse\n')
    unit = UBUNTU.replace('/usr/bin/cinder-volume', programs['cinder-volume'])
    with pytest.raises(sw.CannotSwitch, match='not installed'):
        sw.render('cinder-volume', unit, run=run)


def test_a_unit_already_switched_or_another_service(programs):
    switched = UBUNTU.replace('/usr/bin/cinder-volume',
                              '/usr/bin/accel-cinder-volume')
    with pytest.raises(sw.CannotSwitch, match='already runs'):
        sw.render('cinder-volume', switched)
    with pytest.raises(sw.CannotSwitch, match='not a service'):
        sw.render('glance-api', UBUNTU)


def test_the_command_line_tool(programs):
    unit = UBUNTU.replace('/usr/bin/cinder-volume', programs['cinder-volume'])
    proc = subprocess.run([sys.executable, str(ROOT / 'tools' /
                                               'systemd_switch.py'),
                           'cinder-volume'], input=unit, text=True,
                          capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('# Written by accel-daemon')
    bad = subprocess.run([sys.executable, str(ROOT / 'tools' /
                                              'systemd_switch.py'),
                          'cinder-volume'], input='[Service]\n', text=True,
                         capture_output=True, check=False)
    assert bad.returncode == 2
    assert 'systemd_switch: cinder-volume:' in bad.stderr
