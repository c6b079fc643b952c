# SPDX-License-Identifier: Apache-2.0
"""The privsep helper's own check of its command line, for a service user
that sudo ran it for (accel_daemon.privileged.helper_args)."""

import os
import tempfile

import pytest

from accel_daemon.privileged import helper_args

CONF = '/etc/accel-daemon/accel-daemon.conf'
UID = 4321


@pytest.fixture
def sock_dir():
    # What tempfile.mkdtemp makes for the service user.
    d = tempfile.mkdtemp()
    os.chown(d, UID, UID)
    yield d
    os.rmdir(d)


def _argv(sock_dir, *extra, conf=(CONF,)):
    argv = []
    for c in conf:
        argv += ['--config-file', c]
    return argv + list(extra) + [
        '--privsep_context', helper_args.CONTEXT,
        '--privsep_sock_path', os.path.join(sock_dir, 'privsep.sock')]


def test_the_installed_command_line_passes(sock_dir):
    helper_args.check(_argv(sock_dir), helper_args.Installed(), UID)


@pytest.mark.parametrize('extra', [
    ['--config-file', '/tmp/evil.conf'],           # its own filters
    ['--config-dir', '/tmp/evil.d'],
    ['--log-file', '/etc/shadow'],                 # a file written as root
    ['--log-config-append', '/tmp/log.conf'],
    ['--debug'],
    ['--privsep_context', 'os_brick.privileged.default'],
    ['--config-file=/tmp/evil.conf'],
    ['--version'],
])
def test_anything_more_is_refused(sock_dir, extra):
    with pytest.raises(helper_args.Refused):
        helper_args.check(_argv(sock_dir, *extra), helper_args.Installed(),
                          UID)


def test_another_configuration_is_refused(sock_dir):
    with pytest.raises(helper_args.Refused, match='installed one'):
        helper_args.check(_argv(sock_dir, conf=('/tmp/evil.conf',)),
                          helper_args.Installed(), UID)
    # Order and count matter too.
    policy = helper_args.Installed(('/etc/a.conf', '/etc/b.conf'))
    with pytest.raises(helper_args.Refused):
        helper_args.check(_argv(sock_dir, conf=('/etc/b.conf',
                                                '/etc/a.conf')), policy, UID)
    helper_args.check(_argv(sock_dir, conf=('/etc/a.conf', '/etc/b.conf')),
                      policy, UID)


def test_a_missing_context_or_value_is_refused(sock_dir):
    with pytest.raises(helper_args.Refused, match='needs a value'):
        helper_args.check(['--config-file'], helper_args.Installed(), UID)
    with pytest.raises(helper_args.Refused, match='privsep_context'):
        helper_args.check(['--config-file', CONF, '--privsep_sock_path',
                           os.path.join(sock_dir, 'privsep.sock')],
                          helper_args.Installed(), UID)


def test_the_socket_must_be_in_the_callers_private_directory(sock_dir):
    policy = helper_args.Installed()
    # Another user's directory (root's), a group-readable one, a name
    # outside the temporary directory, another file name.
    root_dir = tempfile.mkdtemp()
    try:
        for path in (os.path.join(root_dir, 'privsep.sock'),
                     '/run/privsep.sock',
                     os.path.join(sock_dir, 'other.sock'),
                     'privsep.sock'):
            argv = _argv(sock_dir)[:-1] + [path]
            with pytest.raises(helper_args.Refused):
                helper_args.check(argv, policy, UID)
        os.chmod(sock_dir, 0o750)
        with pytest.raises(helper_args.Refused, match='only they'):
            helper_args.check(_argv(sock_dir), policy, UID)
    finally:
        os.rmdir(root_dir)


def test_a_symlinked_socket_directory_is_refused(sock_dir):
    link = sock_dir + '-link'
    os.symlink(sock_dir, link)
    try:
        with pytest.raises(helper_args.Refused):
            helper_args.check(_argv(link), helper_args.Installed(), UID)
    finally:
        os.unlink(link)


def test_only_a_service_user_started_through_sudo_is_checked(monkeypatch):
    assert helper_args.caller_uid({}) is None
    assert helper_args.caller_uid({'SUDO_UID': '0'}) is None
    assert helper_args.caller_uid({'SUDO_UID': str(UID)}) == UID
    assert helper_args.caller_uid({'PKEXEC_UID': str(UID)}) == UID
    with pytest.raises(helper_args.Refused):
        helper_args.caller_uid({'SUDO_UID': 'x'})
    # Root starting it itself: anything goes (root needs no helper).
    helper_args.enforce(['--log-file', '/tmp/x'], environ={})


def test_the_installed_list_comes_from_a_root_only_file(tmp_path):
    prefix = tmp_path / 'venv'
    os.makedirs(os.path.dirname(helper_args.policy_path(str(prefix))))
    assert helper_args.installed(str(prefix)) == helper_args.Installed()
    path = helper_args.policy_path(str(prefix))
    with open(path, 'w') as f:
        f.write('# installed by tools/install.sh\n'
                'config-file /etc/x/a.conf\nconfig-dir /etc/x/conf.d\n')
    os.chmod(path, 0o644)
    got = helper_args.installed(str(prefix))
    assert got == helper_args.Installed(('/etc/x/a.conf',),
                                        ('/etc/x/conf.d',))
    # Writable by others, or owned by someone else: not trusted.
    os.chmod(path, 0o666)
    with pytest.raises(helper_args.Refused, match='root-owned'):
        helper_args.installed(str(prefix))
    os.chmod(path, 0o644)
    os.chown(path, UID, UID)
    with pytest.raises(helper_args.Refused, match='root-owned'):
        helper_args.installed(str(prefix))
    os.chown(path, 0, 0)
    with open(path, 'w') as f:
        f.write('config-file relative.conf\n')
    with pytest.raises(helper_args.Refused, match='line 1'):
        helper_args.installed(str(prefix))


def test_enforce_checks_with_the_installed_list(tmp_path, sock_dir):
    env = {'SUDO_UID': str(UID)}
    helper_args.enforce(_argv(sock_dir), environ=env, prefix=str(tmp_path))
    with pytest.raises(helper_args.Refused):
        helper_args.enforce(_argv(sock_dir, '--log-file', '/tmp/x'),
                            environ=env, prefix=str(tmp_path))


def test_a_directory_others_can_write_above_the_list_is_refused(tmp_path):
    prefix = tmp_path / 'venv'
    path = helper_args.policy_path(str(prefix))
    os.makedirs(os.path.dirname(path))
    with open(path, 'w') as f:
        f.write('config-file /etc/x/a.conf\n')
    os.chmod(prefix, 0o777)              # not sticky: anyone can rename
    with pytest.raises(helper_args.Refused, match='venv is not'):
        helper_args.installed(str(prefix))
    os.chmod(prefix, 0o1777)             # sticky, like /tmp: root's stay
    assert helper_args.installed(str(prefix)).config_files == (
        '/etc/x/a.conf',)
