# SPDX-License-Identifier: Apache-2.0
"""A command policy that lets a test act at the worst moment: as a tool
is about to be exec'ed, after every check the engine made."""

from __future__ import annotations

from collections.abc import Callable

from accel_daemon.engine.filters import CommandPolicy


class ActBeforeExec(CommandPolicy):
    """``policy`` as it is (filters, timeout, tool user, Landlock), plus
    ``act()`` run once, as the first ``qemu-img <verb>`` is checked: the
    last moment an attacker could swap a name or rewrite a file."""

    def __init__(self, policy: CommandPolicy, verb: str,
                 act: Callable[[], None]) -> None:
        super().__init__(policy.filters_path, policy.exec_dirs,
                         timeout=policy.timeout, tool_user=policy.tool_user,
                         sandbox=policy.sandbox)
        self.verb, self.act, self.acted = verb, act, False

    def check(self, argv):
        if not self.acted and argv[1:2] == [self.verb]:
            self.acted = True
            self.act()
        return super().check(argv)
