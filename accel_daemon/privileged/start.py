# SPDX-License-Identifier: Apache-2.0
"""Starting and stopping the privsep daemon of accel-daemon's one context
(``accel_daemon.privileged.context``): the helper command, the pool size,
``init()`` from the daemon's main() and ``stop()``.

Kept apart from ``accel_daemon.privileged``, which the privsep daemon itself
imports to find its context: that module holds the context and the one
default it must set at import (the pool size, see there).
"""

from __future__ import annotations

from collections.abc import Sequence
import logging
import os
import shlex
import shutil
import sys

from oslo_config import cfg
from oslo_privsep import priv_context

from accel_daemon import privileged
from accel_daemon.privileged import CAPABILITIES
from accel_daemon.privileged import helper_args
from accel_daemon.privileged import SECTION

LOG = logging.getLogger(__name__)

# oslo.privsep's helper behind accel-daemon's own console script, which
# keeps eventlet's import warning out of the log (accel_daemon.cmd.
# privsep_helper).
HELPER = 'accel-privsep-helper'


def helper_command(executable: str, euid: int,
                   config_files: Sequence[str] = (),
                   config_dirs: Sequence[str] = (),
                   sudo: str | None = '/usr/bin/sudo') -> list[str]:
    """argv that starts our privsep daemon; privsep appends the context
    and socket arguments.

    The helper (``accel-privsep-helper``, oslo.privsep's ``privsep-helper``
    without eventlet's import warning) is named by absolute path next to
    ``executable`` (the venv's
    interpreter): sudo's secure_path would not find a venv.  sudo is used
    only when we are not root; ``-n`` makes a missing sudoers rule fail at
    once instead of waiting for a password.  The argument order is the one
    the sudoers sample (etc/accel-daemon/sudoers.d) expects.
    """
    helper = os.path.join(os.path.dirname(os.path.abspath(executable)),
                          HELPER)
    cmd = [helper]
    for path in config_files:
        cmd += ['--config-file', os.path.abspath(path)]
    for path in config_dirs:
        cmd += ['--config-dir', os.path.abspath(path)]
    if euid != 0:
        if not sudo:
            raise RuntimeError('accel-daemon runs as uid %d and sudo was not '
                               'found to start the privsep helper' % euid)
        cmd = [sudo, '-n'] + cmd
    return cmd


def _conf_list(conf: cfg.ConfigOpts, name: str) -> list[str]:
    try:
        return list(getattr(conf, name) or [])
    except cfg.NoSuchOptError:
        return []


def init(conf: cfg.ConfigOpts = cfg.CONF, start: bool = True) -> None:
    """Configure (and by default start) the privsep daemon.

    Call once from the daemon's main() after the configuration is parsed.
    An operator-set ``[privsep_accel] helper_command`` is used unchanged.
    oslo.privsep reads its options from the global ``cfg.CONF`` only.
    """
    if conf is not cfg.CONF:
        raise ValueError('oslo.privsep only reads the global cfg.CONF')
    # Again here: a test fixture's conf.reset() unsets privsep's defaults.
    conf.set_default('capabilities', list(CAPABILITIES), group=SECTION)
    privileged.apply_pool_default(conf)
    if os.geteuid() == 0:
        # A root daemon (even one an operator started with sudo) starts its
        # helper itself: the helper must not take it for a service user
        # that sudo ran it for (helper_args.caller_uid).
        for name in helper_args.CALLER_VARIABLES:
            os.environ.pop(name, None)
    if not conf[SECTION].helper_command:
        cmd = helper_command(sys.executable, os.geteuid(),
                             _conf_list(conf, 'config_file'),
                             _conf_list(conf, 'config_dir'),
                             shutil.which('sudo'))
        conf.set_override('helper_command', shlex.join(cmd), group=SECTION)
    LOG.info('privsep helper: %s (threads %d)', conf[SECTION].helper_command,
             conf[SECTION].thread_pool_size)
    if start:
        privileged.context.start(priv_context.Method.ROOTWRAP)


def stop() -> None:
    """Close the channel; the privsep daemon exits when it sees EOF."""
    privileged.context.stop()
