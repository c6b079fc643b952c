# SPDX-License-Identifier: Apache-2.0
"""The example systemd unit (etc/accel-daemon/accel-daemon.service) and its
installation by tools/install.sh, in a temporary root.

systemd-analyze is not available on the test hosts: the unit is parsed
here, checked against what install.sh installs (the venv's accel-daemon,
the config file the sudoers rule allows, the service user) and against
the options that would stop sudo, and so the privsep helper, from working.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests import envfixture

pytestmark = [pytest.mark.functional]

UNIT = os.path.join(envfixture.ROOT, 'etc', 'accel-daemon',
                    'accel-daemon.service')
INSTALL = os.path.join(envfixture.ROOT, 'tools', 'install.sh')
SUDOERS = os.path.join(envfixture.ROOT, 'etc', 'accel-daemon', 'sudoers.d',
                       'accel-daemon')

# Options after which systemd sets no_new_privs for a service with User=
# (systemd.exec(5), NoNewPrivileges=): sudo could no longer become root.
IMPLY_NO_NEW_PRIVS = frozenset({
    'NoNewPrivileges', 'DynamicUser', 'LockPersonality',
    'MemoryDenyWriteExecute', 'PrivateDevices', 'ProtectClock',
    'ProtectHostname', 'ProtectKernelLogs', 'ProtectKernelModules',
    'ProtectKernelTunables', 'RestrictAddressFamilies', 'RestrictNamespaces',
    'RestrictRealtime', 'RestrictSUIDSGID', 'SystemCallArchitectures',
    'SystemCallFilter', 'SystemCallLog'})


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of key -> values (a key may repeat), as systemd reads
    them: comments, blank lines and backslash continuations."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    logical = ''
    for raw in text.splitlines():
        line = logical + raw.strip()
        logical = ''
        if line.endswith('\\'):
            logical = line[:-1] + ' '
            continue
        if not line or line[0] in '#;':
            continue
        m = re.fullmatch(r'\[([A-Za-z]+)\]', line)
        if m:
            current = sections.setdefault(m.group(1), {})
            continue
        assert current is not None, 'option outside a section: %s' % line
        key, sep, value = line.partition('=')
        assert sep and re.fullmatch(r'[A-Za-z]+', key.strip()), line
        current.setdefault(key.strip(), []).append(value.strip())
    assert not logical, 'dangling continuation'
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    values = section[key]
    assert len(values) == 1, (key, values)
    return values[0]


@pytest.fixture(scope='module')
def unit() -> dict[str, dict[str, list[str]]]:
    with open(UNIT) as f:
        return parse_unit(f.read())


def install_defaults() -> dict[str, str]:
    """install.sh's defaults, read from the script itself."""
    out = subprocess.run(
        ['bash', '-c', 'source "$1"; echo "$VENV|$ETC|$USER_NAME|$UNIT_DIR"',
         'x', INSTALL], env={'PATH': os.environ['PATH']},
        capture_output=True, text=True, check=True).stdout.strip()
    venv, etc, user, unit_dir = out.split('|')
    return {'venv': venv, 'etc': etc, 'user': user, 'unit_dir': unit_dir}


def test_unit_parses_and_is_a_notify_service(unit):
    assert set(unit) == {'Unit', 'Service', 'Install'}
    service = unit['Service']
    assert one(service, 'Type') == 'notify'
    # READY=1 comes from the daemon's main process.
    assert one(service, 'NotifyAccess') == 'main'
    assert one(service, 'KillMode') == 'mixed'
    assert one(service, 'ExecReload') == '/bin/kill -HUP $MAINPID'
    assert one(unit['Install'], 'WantedBy') == 'multi-user.target'


def test_exec_start_is_what_install_sh_installs(unit):
    defaults = install_defaults()
    argv = shlex.split(one(unit['Service'], 'ExecStart'))
    assert argv == [os.path.join(defaults['venv'], 'bin', 'accel-daemon'),
                    '--config-file',
                    os.path.join(defaults['etc'], 'accel-daemon.conf')]
    assert one(unit['Service'], 'User') == defaults['user']
    assert one(unit['Service'], 'Group') == defaults['user']
    assert defaults['unit_dir'] == '/etc/systemd/system'


def test_exec_start_config_is_the_one_the_helper_accepts(unit):
    # The sudoers rule names the unit's venv's helper; the helper accepts
    # the unit's configuration file (its default; install.sh writes the
    # same into privsep-helper.conf).
    from accel_daemon.privileged import helper_args
    argv = shlex.split(one(unit['Service'], 'ExecStart'))
    with open(SUDOERS) as f:
        rule = [ln for ln in f if ln.startswith('accel-daemon ALL')][0]
    venv_bin = os.path.dirname(argv[0])
    assert rule.rstrip().endswith(
        ' %s' % os.path.join(venv_bin, 'accel-privsep-helper'))
    assert helper_args.Installed().config_files == (argv[2],)
    with open(INSTALL) as f:
        text = f.read()
    # install_sudoers: "config-file $ETC/accel-daemon.conf" into the venv.
    assert re.search(r'config-file %s\\n\' \\\n\s+"\$ETC/accel-daemon\.conf"',
                     text), 'install.sh writes another configuration'
    assert '"$VENV/etc/accel-daemon/privsep-helper.conf"' in text


def test_no_option_that_stops_sudo(unit):
    service = unit['Service']
    assert not IMPLY_NO_NEW_PRIVS & set(service), \
        IMPLY_NO_NEW_PRIVS & set(service)
    # The helper's socket directory is made under TMPDIR, which the sudoers
    # rule allows only as /tmp.
    for env in service.get('Environment', []):
        assert 'TMPDIR' not in env


def test_bounding_set_keeps_the_helpers_capabilities(unit):
    from accel_daemon import privileged
    bounding = set(one(unit['Service'], 'CapabilityBoundingSet').split())
    from oslo_privsep import capabilities as c
    names = {v: k for k, v in vars(c).items() if k.startswith('CAP_')}
    helper = {names[cap] for cap in privileged.CAPABILITIES}
    assert helper <= bounding
    assert {'CAP_SETUID', 'CAP_SETGID'} <= bounding     # sudo


def run_install_unit(tmp_path, systemd: bool, **env: str):
    run_dir = tmp_path / 'run-systemd-system'
    if systemd:
        run_dir.mkdir(exist_ok=True)
    unit_dir = tmp_path / 'etc-systemd-system'
    full = {'PATH': os.environ['PATH'],
            'ACCEL_SYSTEMD_RUN_DIR': str(run_dir),
            'ACCEL_SYSTEMD_UNIT_DIR': str(unit_dir)}
    full.update(env)
    proc = subprocess.run(['bash', '-c', 'source "$1"; how_to_start', 'x',
                           INSTALL], env=full, capture_output=True,
                          text=True)
    return proc, unit_dir / 'accel-daemon.service'


def test_install_sh_installs_the_unit_where_systemd_runs(tmp_path):
    proc, installed = run_install_unit(tmp_path, systemd=True)
    assert proc.returncode == 0, proc.stderr
    with open(UNIT) as f:
        shipped = f.read()
    assert installed.read_text() == shipped        # defaults: unchanged
    assert os.stat(installed).st_mode & 0o777 == 0o644
    assert 'systemctl enable --now accel-daemon.service' in proc.stderr
    # Again: nothing to do, nothing said about the unit.
    again, _ = run_install_unit(tmp_path, systemd=True)
    assert 'installed' not in again.stderr


def test_install_sh_rewrites_venv_and_user(tmp_path):
    proc, installed = run_install_unit(tmp_path, systemd=True,
                                       ACCEL_PREFIX='/srv/accel',
                                       ACCEL_USER='svc-accel')
    assert proc.returncode == 0, proc.stderr
    service = parse_unit(installed.read_text())['Service']
    assert shlex.split(one(service, 'ExecStart')) == [
        '/srv/accel/venv/bin/accel-daemon', '--config-file',
        '/etc/accel-daemon/accel-daemon.conf']
    assert one(service, 'User') == one(service, 'Group') == 'svc-accel'


@pytest.mark.parametrize('systemd,env', [(False, {}),
                                         (True, {'ACCEL_SYSTEMD_UNIT': '0'})])
def test_install_sh_without_systemd_says_how_to_start(tmp_path, systemd,
                                                      env):
    proc, installed = run_install_unit(tmp_path, systemd=systemd, **env)
    assert proc.returncode == 0, proc.stderr
    assert not installed.exists()
    assert ('sudo -u accel-daemon /opt/accel-daemon/venv/bin/accel-daemon '
            '--config-file /etc/accel-daemon/accel-daemon.conf'
            in proc.stderr)


@pytest.mark.skipif(shutil.which('shellcheck') is None,
                    reason='shellcheck is not installed')
def test_install_sh_passes_shellcheck():
    subprocess.run(['bash', '-n', INSTALL], check=True)
    proc = subprocess.run(['shellcheck', '-x', INSTALL],
                          cwd=envfixture.ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def _fake_systemctl(tmp_path, unit_text):
    """A systemctl that prints ``unit_text`` for ``cat`` and records
    every call (this machine runs no systemd)."""
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    (tmp_path / 'unit.txt').write_text(unit_text)
    script = bindir / 'systemctl'
    script.write_text('#!/bin/sh\necho "$*" >> %s\n'
                      'if [ "$1" = cat ]; then cat %s; fi\n'
                      % (tmp_path / 'calls', tmp_path / 'unit.txt'))
    script.chmod(0o755)
    return bindir


def _switch_env(tmp_path, unit_text):
    """install.sh's environment on a host where systemd runs (as it
    sees it) and holds a unit of ``unit_text``; and its unit directory."""
    bindir = _fake_systemctl(tmp_path, unit_text)
    run_dir = tmp_path / 'run-systemd-system'
    run_dir.mkdir()
    unit_dir = tmp_path / 'etc-systemd-system'
    return ({'PATH': '%s:%s' % (bindir, os.environ['PATH']),
             'ACCEL_SYSTEMD_RUN_DIR': str(run_dir),
             'ACCEL_SYSTEMD_UNIT_DIR': str(unit_dir)}, unit_dir)


def _install_sh(env, call):
    """One function of install.sh (sourced), e.g. ``switch_services X``."""
    return subprocess.run(['bash', '-c', 'source "$1"; ' + call, 'x',
                           INSTALL], env=env, capture_output=True, text=True)


def test_install_sh_switches_a_packaged_unit_and_back(tmp_path):
    # cinder-volume as Ubuntu packages it, its program a console script of
    # a Python where accel-daemon is installed (this venv's).
    program = tmp_path / 'cinder-volume'
    program.write_text('#!%s\n' % sys.executable)
    program.chmod(0o755)
    unit = ('[Service]\nUser=cinder\nExecStart=%s --config-file='
            '/etc/cinder/cinder.conf\n' % program)
    env, unit_dir = _switch_env(tmp_path, unit)
    proc = _install_sh(env, 'switch_services cinder-volume')
    assert proc.returncode == 0, proc.stderr
    dropin = unit_dir / 'cinder-volume.service.d' / 'accel-daemon.conf'
    service = parse_unit(unit + dropin.read_text())['Service']
    # The last ExecStart wins after the reset: the launcher, same args.
    assert service['ExecStart'][-2:] == ['', '%s --config-file=/etc/cinder/'
                                         'cinder.conf' % os.path.join(
                                             os.path.dirname(sys.executable),
                                             'accel-cinder-volume')]
    assert service['Environment'] == ['OS_ACCEL_DAEMON_CLIENT__ENABLED=true']
    assert 'restart it' in proc.stderr
    calls = (tmp_path / 'calls').read_text().splitlines()
    assert calls == ['cat cinder-volume.service', 'daemon-reload']
    back = _install_sh(env, 'unswitch_services cinder-volume')
    assert back.returncode == 0, back.stderr
    assert not dropin.parent.exists()


def test_install_sh_switch_refuses_a_unit_it_cannot_switch(tmp_path):
    unit = '[Service]\nExecStart=/etc/init.d/cinder-volume systemd-start\n'
    env, unit_dir = _switch_env(tmp_path, unit)
    proc = _install_sh(env, 'switch_services cinder-volume')
    assert proc.returncode == 1
    assert 'systemd_switch: cinder-volume:' in proc.stderr
    assert not (unit_dir / 'cinder-volume.service.d').exists()
