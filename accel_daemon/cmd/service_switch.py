# SPDX-License-Identifier: Apache-2.0
"""What ``accel-cinder-volume`` and ``accel-nova-compute`` share: read
``[accel_daemon_client] enabled`` from the service's own configuration,
the way the service itself is about to read it.

The service parses its configuration inside its ``main()`` (cinder:
``CONF(sys.argv[1:], project='cinder')``; nova: ``nova.config.parse_args``
with ``project='nova'``), so the switch has to be read before, on a
private ``ConfigOpts`` that sees the same files: the ``--config-file`` and
``--config-dir`` arguments of the command line, or else oslo.config's
defaults for the same project and program name
(``/etc/cinder/cinder.conf``, ``/etc/nova/nova.conf``, their ``.conf.d``
directories...), and the same ``OS_ACCEL_DAEMON_CLIENT__ENABLED``
environment variable.  The arguments themselves are left untouched for
the service.

Nothing here imports oslo.messaging, eventlet or the service: the caller
imports the service's command module (which monkey-patches) only after the
switch is read.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any
from typing import Callable
from typing import NoReturn
from typing import Optional
from typing import Sequence

from oslo_config import cfg

from accel_daemon.conf import client as client_conf

GROUP = client_conf.CLIENT_GROUP.name
LOG = logging.getLogger(__name__)


class SwitchError(Exception):
    """``[accel_daemon_client] enabled`` is set to something that is not a
    boolean: the command refuses to guess."""


def config_args(argv: Sequence[str]) -> list[str]:
    """The ``--config-file``/``--config-dir`` arguments of ``argv`` (the
    arguments after the program name), in their order, as separate
    tokens.  Abbreviations of those options are not recognised; an option
    without its value is left for the service to report."""
    # Their order matters to oslo.config (a later file overrides an
    # earlier one; a directory's files come where it is named): kept.
    order: list[tuple[str, str]] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == '--':
            break
        for name in ('--config-file', '--config-dir'):
            if token == name and i + 1 < len(tokens):
                order.append((name, tokens[i + 1]))
                i += 1
                break
            if token.startswith(name + '='):
                order.append((name, token[len(name) + 1:]))
                break
        i += 1
    args: list[str] = []
    for name, value in order:
        args += [name, value]
    return args


def read_enabled(project: str, argv: Optional[Sequence[str]] = None,
                 prog: Optional[str] = None) -> Optional[bool]:
    """``[accel_daemon_client] enabled`` of the service's configuration.

    ``argv`` defaults to ``sys.argv`` (the program name first), ``prog``
    to its base name, as oslo.config does for the service.  None when the
    configuration cannot be read (a missing or malformed file): the
    service reports that itself, in its own way, a moment later.  Raises
    ``SwitchError`` for a value that is not a boolean.
    """
    argv = list(sys.argv if argv is None else argv)
    if prog is None:
        prog = os.path.basename(argv[0]) if argv else None
    conf = cfg.ConfigOpts()
    client_conf.register_opts(conf)
    try:
        conf(config_args(argv[1:]), project=project, prog=prog)
    except (cfg.ConfigFilesNotFoundError, cfg.ConfigDirNotFoundError,
            cfg.ConfigFileParseError, cfg.ConfigFilesPermissionDeniedError):
        return None
    try:
        return bool(conf[GROUP].enabled)
    except (cfg.ConfigFileValueError, ValueError) as e:
        raise SwitchError('[%s] enabled: %s' % (GROUP, e)) from e


def refuse(prog: str, err: SwitchError) -> NoReturn:
    """One line on stderr, exit status 1."""
    sys.stderr.write('%s: %s\n' % (prog, err))
    sys.exit(1)


def run(project: str, service_module: str,
        install: Callable[[], None]) -> Any:
    """The console script: read the switch from the service's files,
    import the service's command module (it picks eventlet or threads as
    its first line, so nothing of oslo.messaging may come before it),
    ``install()`` when switched on, then return the service's own
    ``main()`` with ``sys.argv`` untouched."""
    prog = os.path.basename(sys.argv[0])
    try:
        enabled = read_enabled(project)
    except SwitchError as e:
        refuse(prog, e)
    service = importlib.import_module(service_module)
    if enabled:
        try:
            install()
        except Exception as e:
            # Another release of the service, or a function that is not
            # what the integration replaces: nothing was replaced, the
            # service runs as it is (never a crash, never a call routed
            # that the integration does not understand).
            LOG.error('accel-daemon: %s runs without accel-daemon: %s',
                      project, e)
    return service.main()
