# SPDX-License-Identifier: Apache-2.0
"""The tools' identity: a real child switched to an unprivileged user with
no capability at all (needs root, like the daemon's privileged helper)."""

import os
import pwd

import pytest

from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine import process
from accel_daemon.engine import tooluser

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason='switching users needs root')

NOBODY = pwd.getpwnam('nobody')


@pytest.fixture
def policy(tmp_path):
    d = tmp_path / 'filters'
    d.mkdir()
    (d / 'cat.filters').write_text(
        '[Filters]\ncat: RegExpFilter, cat, root, cat, /proc/self/status\n'
        'cat_fd: RegExpFilter, cat, root, cat, /dev/fd/[0-9]+\n')
    return CommandPolicy([str(d)], ['/usr/bin', '/bin'],
                         tool_user=tooluser.ToolUser.lookup('nobody'))


def _status(policy):
    out = process.run(['cat', '/proc/self/status'], policy)
    return dict(line.split(':', 1) for line in
                out.stdout.decode().splitlines() if ':' in line)


def test_tools_run_as_the_user_with_no_capability(policy):
    st = _status(policy)
    assert st['Uid'].split() == [str(NOBODY.pw_uid)] * 4
    assert st['Gid'].split() == [str(NOBODY.pw_gid)] * 4
    for field in ('CapEff', 'CapPrm', 'CapInh', 'CapAmb', 'CapBnd'):
        assert int(st[field], 16) == 0, field
    assert st['NoNewPrivs'].strip() == '1'


def test_a_descriptor_is_not_a_licence_to_reopen(policy, tmp_path):
    # Why qemu-img is served its inputs over NBD: handed /dev/fd/N of a
    # file it may not open by mode, a tool with no capability cannot
    # reopen it, even though the descriptor is its own.
    secret = tmp_path / 'secret'
    secret.write_bytes(b'root only')
    secret.chmod(0o600)
    fd = os.open(secret, os.O_RDONLY)
    try:
        denied = process.run(['cat', '/dev/fd/%d' % fd], policy,
                             pass_fds=(fd,), check=False)
        assert denied.returncode != 0 and b'denied' in denied.stderr
        assert b'root only' not in denied.stdout
    finally:
        os.close(fd)


def test_root_and_missing_users_are_refused():
    with pytest.raises(ValueError):
        tooluser.ToolUser.lookup('root')
    with pytest.raises(KeyError):
        tooluser.ToolUser.lookup('no-such-user-for-accel')
