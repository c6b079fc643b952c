# SPDX-License-Identifier: Apache-2.0
"""What every engine operation needs, built once: settings, the command
policy (the filters) and the confinement (allowed directories, resolved
once, and block-device patterns)."""

from __future__ import annotations

import dataclasses
import os

from accel_daemon.engine import files
from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine import landlock
from accel_daemon.engine import paths
from accel_daemon.engine.settings import Scope
from accel_daemon.engine.settings import Settings
from accel_daemon.engine.tooluser import ToolUser
from accel_daemon import exception


def make_policy(settings: Settings,
                tool_user: ToolUser | None = None) -> CommandPolicy:
    """The command policy of ``settings``: their filters, timeout and, with
    ``confine_tools``, a Landlock domain for every command."""
    sandbox = (landlock.Sandbox(settings.tool_extra_paths)
               if settings.confine_tools else None)
    return CommandPolicy(settings.filters_path, settings.exec_dirs,
                         timeout=settings.command_timeout,
                         tool_user=tool_user, sandbox=sandbox)


def _confinement(scope: Scope) -> paths.Confinement:
    return paths.Confinement(scope.allowed_dirs, scope.allowed_block_devices)


@dataclasses.dataclass(frozen=True)
class Context:
    settings: Settings
    policy: CommandPolicy
    confinement: paths.Confinement

    @classmethod
    def create(cls, settings: Settings,
               policy: CommandPolicy | None = None) -> Context:
        if policy is None:
            # Only a root engine (the privileged helper, or --local as
            # root) can switch users; any other runs tools as itself.
            user = (ToolUser.lookup(settings.tool_user)
                    if settings.tool_user and os.geteuid() == 0 else None)
            policy = make_policy(settings, user)
        return cls(settings, policy, paths.Confinement(
            settings.allowed_dirs, settings.allowed_block_devices))

    def scoped(self, caller: str) -> Context:
        """This context confined to what ``caller`` may name; an unknown
        caller is refused (the privileged layer never falls back to the
        host's envelope for a name it does not know)."""
        scope = self.settings.scope(caller)
        if scope is None:
            raise exception.InvalidRequest(reason='unknown caller %r'
                                           % (caller,))
        return dataclasses.replace(self, confinement=_confinement(scope))

    def open_source(self, path: str) -> files.Opened:
        """Open an input once (see ``engine.files``)."""
        return files.open_source(self.confinement, path)

    def output(self, path: str, devices: bool = False,
               replace: bool = False) -> files.Output:
        """A new output file (or, with ``devices``, an allowed device);
        ``replace``: it may replace an existing regular file."""
        return files.Output(self.confinement, path,
                            self.settings.output_file_mode, devices,
                            replace=replace,
                            staging_dir=self.settings.staging_dir)
