# SPDX-License-Identifier: Apache-2.0
"""[privsep_accel]: oslo.privsep's options for accel-daemon's context.

oslo.privsep registers these itself on the global configuration when
``accel_daemon.privileged`` creates its context; this module only lists
them, with accel-daemon's defaults, for oslo-config-generator.
"""

import copy

from oslo_config import cfg
from oslo_privsep import priv_context

GROUP = cfg.OptGroup(
    'privsep_accel', title='accel-daemon privileged helper',
    help='oslo.privsep options of the helper daemon that holds '
         'accel-daemon\'s privileges. The defaults are what accel-daemon '
         'needs; change them only with care (see the accel_daemon.privileged '
         'module documentation).')

_DEFAULTS = {
    'capabilities': ('[CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_KILL, CAP_SETGID, '
                     'CAP_SETUID, CAP_SETPCAP]',
                     ['CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_KILL',
                      'CAP_SETGID', 'CAP_SETUID', 'CAP_SETPCAP']),
    'thread_pool_size': ('[tasks] workers + 4', None),
    'helper_command': ('<sudo -n when not root> '
                       '<venv>/bin/accel-privsep-helper '
                       '--config-file <each of the daemon\'s files>', None),
    'logger_name': ('accel_daemon.privileged', 'accel_daemon.privileged'),
}


def _opts():
    opts = copy.deepcopy(priv_context.OPTS)
    for opt in opts:
        if opt.name in _DEFAULTS:
            sample, default = _DEFAULTS[opt.name]
            opt.sample_default = sample
            if default is not None:
                opt.default = default
    return opts


def register_opts(conf):
    """Nothing to do: the privsep context registers the group itself."""


def list_opts():
    return {GROUP: _opts()}
