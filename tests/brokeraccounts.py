# SPDX-License-Identifier: Apache-2.0
"""RabbitMQ accounts for a test's callers, made by ``tools/broker.sh`` as
``tools/install.sh --caller`` makes them, under names of the test's own
(tagged, so tests never meet), and removed afterwards."""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import os
import shutil
import subprocess
import uuid

import pytest

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROKER = os.path.join(CHECKOUT, 'tools', 'broker.sh')


class Accounts:
    def __init__(self, secrets: str) -> None:
        self.tag = 't%s' % uuid.uuid4().hex[:6]
        self.secrets = secrets
        self.daemon_account = 'accel-%s-daemon' % self.tag
        self.callers: list[str] = []
        self.plain_accounts: list[str] = []

    def run(self, *script: str) -> str:
        """``script`` (lines of bash) with tools/broker.sh sourced."""
        env = dict(os.environ, BROKER_SECRETS=self.secrets,
                   BROKER_DAEMON_ACCOUNT=self.daemon_account)
        return subprocess.run(
            ['bash', '-c', 'set -euo pipefail; source "$0"; '
             + '; '.join(script), BROKER], env=env, check=True,
            capture_output=True, text=True, timeout=120).stdout.strip()

    def name(self, role: str) -> str:
        """The caller name of ``role`` in this test."""
        return '%s-%s' % (self.tag, role)

    def caller(self, role: str) -> str:
        """Make ``role``'s account and virtual host; the daemon's URL
        there (its [caller:NAME] transport_url)."""
        name = self.name(role)
        self.callers.append(name)
        return self.run('broker_caller %s' % name)

    def plain(self, role: str) -> str:
        """An account of ``role``'s own on the default virtual host, as
        devstack makes its RABBIT_USERID; its transport URL there."""
        user = 'accel-%s' % self.name(role)
        self.plain_accounts.append(user)
        self.run('broker_account %s' % user,
                 'rabbitmqctl -q set_permissions -p / %s ".*" ".*" ".*"'
                 % user)
        return 'rabbit://%s:%s@127.0.0.1:5672/' % self.account(role)

    def account(self, role: str) -> tuple[str, str]:
        """(user, password) of ``role``'s own account."""
        user = 'accel-%s' % self.name(role)
        with open(os.path.join(self.secrets, user)) as f:
            return user, f.read().strip()

    def client_url(self, role: str) -> str:
        user, password = self.account(role)
        return 'rabbit://%s:%s@127.0.0.1:5672/accel-%s' % (
            user, password, self.name(role))

    def remove(self) -> None:
        script = []
        for name in self.callers:
            script += ['rabbitmqctl -q delete_vhost accel-%s || true' % name,
                       'rabbitmqctl -q delete_user accel-%s || true' % name]
        script += ['rabbitmqctl -q delete_user %s || true' % user
                   for user in self.plain_accounts]
        script.append('rabbitmqctl -q delete_user %s || true'
                      % self.daemon_account)
        self.run(*script)


@contextlib.contextmanager
def accounts(secrets: str) -> Iterator[Accounts]:
    """Accounts made under ``secrets`` and removed at the end; the test is
    skipped where no RabbitMQ runs on this host (no rabbitmqctl)."""
    if shutil.which('rabbitmqctl') is None:
        pytest.skip('needs rabbitmqctl (a RabbitMQ on this host)')
    made = Accounts(secrets)
    try:
        yield made
    finally:
        made.remove()


def caller_sections(callers: dict[str, dict[str, object]]) -> str:
    """Config text: [accel_daemon_rpc] callers and one [caller:NAME] of
    options per name."""
    lines = ['[accel_daemon_rpc]', 'callers = %s' % ','.join(callers)]
    for name, options in callers.items():
        lines.append('[caller:%s]' % name)
        lines += ['%s = %s' % item for item in options.items()]
    return '\n'.join(lines) + '\n'
