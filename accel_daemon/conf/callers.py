# SPDX-License-Identifier: Apache-2.0
"""The daemon's callers: who may ask, and what each may name.

A caller is one calling service (cinder-volume, nova-compute, an
operator's ``accel-image``).  Each has its own broker login and virtual
host, and the daemon runs one RPC server per caller on that caller's
transport: a request's caller is the virtual host it arrived on, which the
broker admits only with that caller's credentials (or the daemon's).
Nothing in a message can name another caller.  ``[caller:NAME]`` says where
NAME's transport is and which directories and block devices NAME may name;
each must lie inside the host's envelope, ``[accel_daemon] allowed_dirs``
and ``allowed_block_devices``.  ``doc/source/security.rst`` has the design.

With ``[accel_daemon_rpc] callers`` empty (the default) the daemon serves
one caller on ``[DEFAULT] transport_url`` with the whole envelope, as
releases before callers did; it logs a warning at start.
"""

from __future__ import annotations

import fnmatch
import os
import re

from oslo_config import cfg

from accel_daemon.engine.settings import Scope

RPC_GROUP = 'accel_daemon_rpc'
GROUP_PREFIX = 'caller:'
# Also a RabbitMQ user and virtual host name in tools/install.sh.
NAME_RE = re.compile(r'[a-z][a-z0-9_-]{0,31}')

CALLERS_OPT = cfg.ListOpt(
    'callers', default=[],
    help='Names of the services that may call this daemon, each described '
         'by a [caller:NAME] section: its own transport_url (a broker '
         'account and virtual host of its own), the directories and block '
         'devices it may name, and its queue cap. The daemon serves each '
         'caller on that caller\'s transport, so a request\'s caller is '
         'the broker login it came with, and a caller sees, cancels and '
         'writes only what is its own. Names: lower-case letters, digits, '
         '"-" and "_", at most 32. Empty (the default): one caller on '
         '[DEFAULT] transport_url with all of [accel_daemon] allowed_dirs '
         'and allowed_block_devices; anyone with that transport\'s '
         'credentials is then that caller. tools/install.sh --caller sets '
         'up a caller\'s broker account and section.')

OPTS = [
    cfg.StrOpt('transport_url', secret=True,
               help='The oslo.messaging transport URL the daemon serves '
                    'this caller on: the DAEMON\'s own account on the '
                    'caller\'s virtual host, for example '
                    'rabbit://accel-daemon:SECRET@127.0.0.1:5672/'
                    'accel-cinder. Only the daemon\'s account and the '
                    'caller\'s may use that virtual host; never guest. '
                    'Each caller needs its own virtual host. Required.'),
    cfg.ListOpt('allowed_dirs', default=[],
                help='Directories this caller\'s inputs and outputs must '
                     'resolve under; each inside [accel_daemon] '
                     'allowed_dirs. At least one. Give each caller its '
                     'own: a directory two callers share lets each plant '
                     'or replace files the other will use.'),
    cfg.ListOpt('allowed_block_devices', default=[],
                help='Shell-style patterns of the block devices this '
                     'caller may read or write in place; each must be '
                     'matched by a pattern of [accel_daemon] '
                     'allowed_block_devices. Empty: none.'),
    cfg.IntOpt('max_queued', default=0, min=0,
               help='Largest number of this caller\'s tasks waiting for a '
                    'worker; a request beyond it fails with QueueFull, '
                    'while other callers keep their share of [tasks] '
                    'max_queued. 0: only [tasks] max_queued applies.'),
    cfg.BoolOpt('operator', default=False,
                help='Whether this caller sees and may cancel every '
                     'caller\'s tasks (an operator\'s accel-image). It '
                     'still reads and writes only its own directories.'),
]


class CallerConfigError(ValueError):
    """The [caller:NAME] sections do not describe a usable set of
    callers."""


def group_name(name: str) -> str:
    return GROUP_PREFIX + name


def names(conf: cfg.ConfigOpts) -> list[str]:
    """The configured callers' names, each checked and its section
    registered (only now: the configuration files name them)."""
    result = []
    for name in conf[RPC_GROUP].callers:
        if not NAME_RE.fullmatch(name):
            raise CallerConfigError(
                '[%s] callers: %r is not a caller name (lower-case letters, '
                'digits, "-" and "_", starting with a letter, at most 32)'
                % (RPC_GROUP, name))
        if name in result:
            raise CallerConfigError('[%s] callers names %s twice'
                                    % (RPC_GROUP, name))
        conf.register_opts(OPTS, group=group_name(name))
        result.append(name)
    return result


def _inside(path: str, roots: list[str]) -> bool:
    path = os.path.normpath(os.path.abspath(path))
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep)
               for r in (os.path.normpath(os.path.abspath(d))
                         for d in roots))


def _check(name: str, opts: cfg.ConfigOpts.GroupAttr,
           envelope: cfg.ConfigOpts.GroupAttr) -> Scope:
    section = '[%s]' % group_name(name)
    if not opts.transport_url:
        raise CallerConfigError('%s transport_url is required' % section)
    if not opts.allowed_dirs:
        raise CallerConfigError('%s allowed_dirs names no directory'
                                % section)
    for d in opts.allowed_dirs:
        if not _inside(d, envelope.allowed_dirs):
            raise CallerConfigError(
                '%s allowed_dirs: %s is not inside [accel_daemon] '
                'allowed_dirs' % (section, d))
    for p in opts.allowed_block_devices:
        # A caller's pattern, read as a name, must be one the host's
        # patterns allow: then every device it matches is allowed too
        # ("/dev/vg/volume-*" inside "/dev/vg/*").
        if not any(fnmatch.fnmatchcase(p, g)
                   for g in envelope.allowed_block_devices):
            raise CallerConfigError(
                '%s allowed_block_devices: %s is not within [accel_daemon] '
                'allowed_block_devices' % (section, p))
    return Scope(name, tuple(opts.allowed_dirs),
                 tuple(opts.allowed_block_devices))


def scopes(conf: cfg.ConfigOpts) -> tuple[Scope, ...]:
    """What each configured caller may name; CallerConfigError when a
    section is incomplete, reaches outside the host's envelope, or two
    callers share a transport."""
    result = []
    urls: dict[str, str] = {}
    for name in names(conf):
        opts = conf[group_name(name)]
        scope = _check(name, opts, conf.accel_daemon)
        other = urls.setdefault(opts.transport_url, name)
        if other != name:
            raise CallerConfigError(
                'callers %s and %s share one transport_url: the daemon '
                'could not tell them apart' % (other, name))
        result.append(scope)
    return tuple(result)


def shared_dirs(found: tuple[Scope, ...]) -> list[tuple[str, str, str]]:
    """(directory, caller, caller) for every directory of one caller that
    is, or is inside, a directory of another: worth a warning."""
    shared = []
    for i, a in enumerate(found):
        for b in found[i + 1:]:
            for d in a.allowed_dirs:
                if _inside(d, list(b.allowed_dirs)):
                    shared.append((d, a.name, b.name))
            for d in b.allowed_dirs:
                if _inside(d, list(a.allowed_dirs)):
                    shared.append((d, b.name, a.name))
    return shared


def list_opts():
    # The sample shows one section as a template.
    return {group_name('name'): OPTS}
