# SPDX-License-Identifier: Apache-2.0
"""The only command line the privsep helper runs for a service user.

When the daemon runs as an unprivileged user it starts its privsep helper
through sudo.  oslo.privsep's helper takes oslo.config's and oslo.log's
whole command line: an extra ``--config-file`` (other filters: any command
as root), ``--config-dir``, another ``--privsep_context`` (another
package's capabilities), ``--log-file`` (a file written as root) or
``--log-config-append`` would each hand root to whoever can run it.  A
sudoers rule can pin the arguments only with a regular expression, which
needs sudo 1.9.10 (RHEL 9 and Rocky 9 ship 1.9.5, Ubuntu 22.04 1.9.9).

So the helper checks its own arguments before oslo.privsep reads them,
whenever sudo (or pkexec, doas) started it for a user other than root:

* ``--config-file`` and ``--config-dir`` must be exactly the installed
  ones, in order: those listed in ``<prefix>/etc/accel-daemon/
  privsep-helper.conf`` (``tools/install.sh`` writes it; ``prefix`` is the
  helper's venv), else ``/etc/accel-daemon/accel-daemon.conf`` alone.
  That list is used only if the file and every directory above it belong
  to root and nobody else can write them;
* ``--privsep_context`` must be accel-daemon's context;
* ``--privsep_sock_path`` must be ``privsep.sock`` in a directory of the
  system's temporary directory that belongs to the calling user and only
  they can enter (what ``tempfile.mkdtemp`` makes; the socket is the
  caller's own);
* nothing else, and no ``--option=value`` spelling.

A plain sudoers command rule (any sudo) is then enough.  Root starting the
helper itself is not checked: it needs no helper to be root.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import os
import stat
import sys
import tempfile

CONTEXT = 'accel_daemon.privileged.context'
DEFAULT_CONFIG = '/etc/accel-daemon/accel-daemon.conf'
SOCKET_NAME = 'privsep.sock'
# Set by sudo, pkexec and doas for the command they run; the caller
# cannot unset or forge them through those tools.
CALLER_VARIABLES = ('SUDO_UID', 'PKEXEC_UID', 'DOAS_USER')


class Refused(Exception):
    """The helper's command line is not the installed one."""


@dataclasses.dataclass(frozen=True)
class Installed:
    config_files: tuple[str, ...] = (DEFAULT_CONFIG,)
    config_dirs: tuple[str, ...] = ()


def policy_path(prefix: str = sys.prefix) -> str:
    return os.path.join(prefix, 'etc', 'accel-daemon', 'privsep-helper.conf')


def _root_only(path: str) -> None:
    """Nobody but root can change or replace ``path``: it and every
    directory above it belong to root, and only root can write them, or
    (a directory above, such as /tmp) the sticky bit keeps others from
    renaming what root owns in it."""
    path = os.path.abspath(path)
    first = True
    while True:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise Refused('%s is a symbolic link' % path)
        shared = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if st.st_uid != 0 or shared and (
                first or not st.st_mode & stat.S_ISVTX):
            raise Refused('%s is not root-owned and writable by root only'
                          % path)
        first = False
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def installed(prefix: str = sys.prefix) -> Installed:
    """The installed configuration: ``policy_path(prefix)``, whose lines
    are ``config-file PATH`` or ``config-dir PATH`` (``#`` comments), or
    the default when there is no such file."""
    path = policy_path(prefix)
    if not os.path.lexists(path):
        return Installed()
    _root_only(path)
    files: list[str] = []
    dirs: list[str] = []
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            line = line.split('#', 1)[0].strip()
            if not line:
                continue
            key, _, value = line.partition(' ')
            value = value.strip()
            if key not in ('config-file', 'config-dir') or \
                    not os.path.isabs(value):
                raise Refused('%s line %d: expected "config-file PATH" or '
                              '"config-dir PATH" with an absolute path'
                              % (path, number))
            (files if key == 'config-file' else dirs).append(value)
    if not files:
        raise Refused('%s names no config-file' % path)
    return Installed(tuple(files), tuple(dirs))


def caller_uid(environ: Mapping[str, str] = os.environ) -> int | None:
    """The user sudo (pkexec, doas) ran us for, if not root; None when
    root started us itself."""
    if os.getuid() != 0 and os.geteuid() != 0:
        return None        # not root at all: nothing to give away
    for name in CALLER_VARIABLES:
        value = environ.get(name)
        if value is None:
            continue
        if name == 'DOAS_USER':
            import pwd
            try:
                uid = pwd.getpwnam(value).pw_uid
            except KeyError:
                raise Refused('doas ran the helper for an unknown user')
        else:
            try:
                uid = int(value)
            except ValueError:
                raise Refused('%s is not a user id' % name)
        if uid != 0:
            return uid
    return None


def _socket_ok(path: str, uid: int) -> None:
    if not os.path.isabs(path) or os.path.basename(path) != SOCKET_NAME:
        raise Refused('--privsep_sock_path must be an absolute path '
                      'ending in /%s' % SOCKET_NAME)
    directory = os.path.dirname(path)
    if os.path.dirname(directory) != os.path.realpath(
            tempfile.gettempdir()):
        raise Refused('--privsep_sock_path must be in a directory of %s'
                      % tempfile.gettempdir())
    try:
        st = os.lstat(directory)
    except OSError as e:
        raise Refused('--privsep_sock_path: %s' % e.strerror)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or \
            st.st_mode & 0o077:
        raise Refused('--privsep_sock_path must be in a directory of the '
                      'calling user that only they can enter')


def check(argv: Sequence[str], policy: Installed, uid: int) -> None:
    """Raise Refused unless ``argv`` (without the program) is the
    installed command line for the calling user ``uid``."""
    files: list[str] = []
    dirs: list[str] = []
    context: list[str] = []
    sockets: list[str] = []
    slots = {'--config-file': files, '--config-dir': dirs,
             '--privsep_context': context, '--privsep_sock_path': sockets}
    args = list(argv)
    while args:
        option = args.pop(0)
        if option not in slots:
            raise Refused('%r is not an argument the helper takes from '
                          'a service user' % option[:100])
        if not args:
            raise Refused('%s needs a value' % option)
        slots[option].append(args.pop(0))
    if tuple(files) != policy.config_files or \
            tuple(dirs) != policy.config_dirs:
        raise Refused('the configuration must be the installed one: %s'
                      % ' '.join(['--config-file %s' % p
                                  for p in policy.config_files] +
                                 ['--config-dir %s' % p
                                  for p in policy.config_dirs]))
    if context != [CONTEXT]:
        raise Refused('--privsep_context must be %s, once' % CONTEXT)
    if len(sockets) != 1:
        raise Refused('--privsep_sock_path must be given once')
    _socket_ok(sockets[0], uid)


def enforce(argv: Sequence[str], environ: Mapping[str, str] = os.environ,
            prefix: str = sys.prefix) -> None:
    """Check ``argv`` when a service user had us started as root."""
    uid = caller_uid(environ)
    if uid is None:
        return
    check(argv, installed(prefix), uid)
