# SPDX-License-Identifier: Apache-2.0
"""accel_daemon.cmd.service_switch: reading [accel_daemon_client] enabled
from a service's own configuration files before the service starts.

(The console scripts themselves run against the real cinder and nova in
the caller suites cinder-switch and nova-switch.)
"""

import logging
import os
import subprocess
import sys

import pytest

from accel_daemon.cmd import service_switch


def _conf(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _enabled(value):
    return '[accel_daemon_client]\nenabled = %s\n' % value


@pytest.fixture(autouse=True)
def _no_env(monkeypatch, tmp_path):
    monkeypatch.delenv('OS_ACCEL_DAEMON_CLIENT__ENABLED', raising=False)
    # oslo.config's default files are looked for under HOME first.
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))


def test_config_args_keeps_only_config_options_in_order():
    argv = ['--debug', '--config-file', '/a', '--log-file', 'x',
            '--config-dir=/d', '--config-file=/b', '--', '--config-file',
            '/after-double-dash']
    assert service_switch.config_args(argv) == [
        '--config-file', '/a', '--config-dir', '/d', '--config-file', '/b']


def test_config_args_ignores_an_option_without_value():
    assert service_switch.config_args(['--config-file']) == []


@pytest.mark.parametrize('value,expected', [
    ('true', True), ('True', True), ('1', True), ('yes', True),
    ('false', False), ('0', False), ('no', False)])
def test_enabled_values(tmp_path, value, expected):
    conf = _conf(tmp_path, 'c.conf', _enabled(value))
    assert service_switch.read_enabled(
        'cinder', ['accel-cinder-volume', '--config-file', conf]) is expected


def test_unset_is_false(tmp_path):
    conf = _conf(tmp_path, 'c.conf', '[DEFAULT]\ndebug = true\n')
    assert service_switch.read_enabled(
        'nova', ['x', '--config-file', conf]) is False


def test_other_arguments_are_ignored(tmp_path):
    conf = _conf(tmp_path, 'c.conf', _enabled('true'))
    argv = ['accel-cinder-volume', '--debug', '--backend_host', 'h',
            '--config-file', conf, '--unknown-option']
    assert service_switch.read_enabled('cinder', argv) is True


def test_later_file_overrides(tmp_path):
    on = _conf(tmp_path, 'on.conf', _enabled('true'))
    off = _conf(tmp_path, 'off.conf', _enabled('false'))
    assert service_switch.read_enabled(
        'cinder', ['x', '--config-file', on, '--config-file', off]) is False
    assert service_switch.read_enabled(
        'cinder', ['x', '--config-file', off, '--config-file', on]) is True


def test_config_dir(tmp_path):
    base = _conf(tmp_path, 'nova.conf', _enabled('false'))
    _conf(tmp_path, 'nova.conf.d/10-accel.conf', _enabled('true'))
    argv = ['x', '--config-file', base, '--config-dir',
            str(tmp_path / 'nova.conf.d')]
    assert service_switch.read_enabled('nova', argv) is True


def test_default_files_of_the_project(tmp_path):
    """No --config-file: oslo.config's defaults for the project, here
    ~/.cinder/cinder.conf (and nothing of nova's)."""
    _conf(tmp_path, 'home/.cinder/cinder.conf', _enabled('true'))
    assert service_switch.read_enabled('cinder', ['accel-cinder-volume'])
    assert not service_switch.read_enabled('nova', ['accel-nova-compute'])


def test_default_files_of_the_program_name(tmp_path):
    """oslo.config also reads PROG.conf: the program name is the
    command's own, as it is for the service's main()."""
    _conf(tmp_path, 'home/.cinder/accel-cinder-volume.conf',
          _enabled('true'))
    assert service_switch.read_enabled(
        'cinder', ['/usr/bin/accel-cinder-volume'])
    assert not service_switch.read_enabled('cinder', ['cinder-volume'])


def test_environment_variable(tmp_path, monkeypatch):
    conf = _conf(tmp_path, 'c.conf', '')
    monkeypatch.setenv('OS_ACCEL_DAEMON_CLIENT__ENABLED', 'true')
    assert service_switch.read_enabled('nova', ['x', '--config-file', conf])


def test_unreadable_configuration_is_left_to_the_service(tmp_path):
    missing = str(tmp_path / 'missing.conf')
    assert service_switch.read_enabled(
        'cinder', ['x', '--config-file', missing]) is None
    broken = _conf(tmp_path, 'broken.conf', '[accel_daemon_client\n')
    assert service_switch.read_enabled(
        'cinder', ['x', '--config-file', broken]) is None
    assert service_switch.read_enabled(
        'cinder', ['x', '--config-dir', str(tmp_path / 'nodir')]) is None


def test_invalid_value_is_a_switch_error(tmp_path):
    conf = _conf(tmp_path, 'c.conf', _enabled('maybe'))
    with pytest.raises(service_switch.SwitchError) as info:
        service_switch.read_enabled('cinder', ['x', '--config-file', conf])
    assert str(info.value).startswith('[accel_daemon_client] enabled: ')
    assert "'maybe'" in str(info.value)


def test_refuse_is_one_line_and_status_1(capsys):
    with pytest.raises(SystemExit) as info:
        service_switch.refuse('accel-nova-compute',
                              service_switch.SwitchError('bad'))
    assert info.value.code == 1
    assert capsys.readouterr().err == 'accel-nova-compute: bad\n'


@pytest.mark.parametrize('module', ['accel_daemon.cmd.cinder_volume',
                                    'accel_daemon.cmd.nova_compute'])
def test_commands_import_nothing_before_the_service(module):
    """The service's command module chooses eventlet or threads first:
    the console scripts' modules must not import oslo.messaging,
    oslo.service, eventlet or the integrations before it."""
    code = ('import sys, %s\n'
            'print(sorted(m for m in ("oslo_messaging", "oslo_service", '
            '"eventlet", "accel_daemon.client", '
            '"accel_daemon.integrations.cinder", '
            '"accel_daemon.integrations.nova") if m in sys.modules))'
            % module)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True,
                         env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert out.stdout.strip() == '[]'


@pytest.mark.parametrize('module,service', [
    ('accel_daemon.cmd.cinder_volume', 'cinder'),
    ('accel_daemon.cmd.nova_compute', 'nova')])
def test_without_the_service_installed(tmp_path, module, service):
    """In this venv (no cinder, no nova) the command fails on the import
    of the service, after reading the switch: an ImportError naming it."""
    conf = _conf(tmp_path, 'c.conf', _enabled('true'))
    code = ('import sys; sys.argv = ["x", "--config-file", %r]\n'
            'from %s import main\nmain()' % (conf, module))
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 1
    assert "No module named '%s'" % service in proc.stderr


def test_a_refused_install_leaves_the_service_running(tmp_path, monkeypatch,
                                                      caplog):
    # Another release of the service: one ERROR line, and its own main()
    # runs (never a crash at start).
    import types

    from accel_daemon.integrations import common
    conf = tmp_path / 'svc.conf'
    conf.write_text('[accel_daemon_client]\nenabled = true\n')
    module = types.ModuleType('fake_service_cmd')
    module.main = lambda: 'service main'
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(sys, 'argv', ['accel-svc', '--config-file',
                                      str(conf)])

    def install():
        raise common.Refused('svc 1.0.0 is not a release this '
                             'accel-daemon supports (2, 3)')
    with caplog.at_level(logging.ERROR):
        assert service_switch.run('svc', module.__name__,
                                  install) == 'service main'
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        'accel-daemon: svc runs without accel-daemon: svc 1.0.0 is not a '
        'release this accel-daemon supports (2, 3)']
