# SPDX-License-Identifier: Apache-2.0
"""A confined environment for tests: an allowed directory and the shipped
filters rewritten to point at it (the filters name the default directory
/var/lib/accel-daemon/images; deployments rewrite it the same way)."""

from __future__ import annotations

import dataclasses
import os
import re

from accel_daemon.engine.context import Context
from accel_daemon.engine.context import make_policy
from accel_daemon.engine.filters import CommandPolicy
from accel_daemon.engine.settings import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_FILTERS = os.path.join(ROOT, 'filters')
DEFAULT_DIR = '/var/lib/accel-daemon/images'


@dataclasses.dataclass
class Env:
    root: str          # scratch space, not allowed
    images: str        # the allowed directory
    filters_dir: str
    settings: Settings
    policy: CommandPolicy

    @property
    def ctx(self) -> Context:
        return Context.create(self.settings, self.policy)

    def path(self, *parts: str) -> str:
        return os.path.join(self.images, *parts)

    def with_settings(self, **changes) -> 'Env':
        settings = dataclasses.replace(self.settings, **changes)
        return dataclasses.replace(self, settings=settings)


def install_filters(dest: str, allowed_dir: str,
                    source: str = SHIPPED_FILTERS) -> None:
    if not re.fullmatch(r'[A-Za-z0-9_/.-]+', allowed_dir):
        raise ValueError('test directory %s needs regex escaping'
                         % allowed_dir)
    os.makedirs(dest, exist_ok=True)
    for name in os.listdir(source):
        with open(os.path.join(source, name)) as f:
            text = f.read()
        with open(os.path.join(dest, name), 'w') as f:
            f.write(text.replace(DEFAULT_DIR, allowed_dir))


def make_env(root: str, **overrides) -> Env:
    root = os.path.realpath(str(root))
    images = os.path.join(root, 'images')
    filters_dir = os.path.join(root, 'filters')
    os.makedirs(images, exist_ok=True)
    install_filters(filters_dir, images)
    settings = Settings(allowed_dirs=(images,), filters_path=(filters_dir,),
                        **overrides)
    # As the daemon builds it: confined tools (confine_tools), no timeout
    # unless the settings give one.
    policy = make_policy(settings)
    return Env(root, images, filters_dir, settings, policy)


def copy_filters_without(env: Env, tool: str) -> None:
    """Remove every filter line for ``tool`` (operators forbidding a tool)."""
    for name in os.listdir(env.filters_dir):
        path = os.path.join(env.filters_dir, name)
        with open(path) as f:
            lines = f.readlines()
        kept = [ln for ln in lines
                if not re.match(r'\s*[\w-]+\s*[:=]\s*\w+Filter\s*,\s*%s\s*,'
                                % re.escape(tool), ln)]
        with open(path, 'w') as f:
            f.writelines(kept)
    env.policy.reload()
