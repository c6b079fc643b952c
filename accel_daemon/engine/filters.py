# SPDX-License-Identifier: Apache-2.0
"""In-process enforcement of oslo.rootwrap-style filter files.

accel-daemon never runs the rootwrap daemon: it serialises commands and
handles denials poorly.  Instead every argv is matched here, with
oslo.rootwrap's own filter classes, before it is executed.

``oslo_rootwrap.wrapper.load_filters()`` silently appends an allow-all
``privsep-helper`` CommandFilter; we parse the files ourselves so that line
never exists, and any ``privsep-helper`` line an operator adds is dropped.
"""

from __future__ import annotations

import configparser
import logging
import os
import threading
from collections.abc import Iterable, Sequence

from oslo_rootwrap import filters as rw_filters
from oslo_rootwrap import wrapper as rw_wrapper

from accel_daemon.engine.landlock import Sandbox
from accel_daemon.engine.tooluser import ToolUser
from accel_daemon import exception

LOG = logging.getLogger(__name__)

_NEVER = frozenset({'privsep-helper'})


def load_filter_files(dirs: Iterable[str]) -> list[rw_filters.CommandFilter]:
    result: list[rw_filters.CommandFilter] = []
    for d in dirs:
        if not os.path.isdir(d):
            LOG.warning('Filter directory %s does not exist', d)
            continue
        for name in sorted(os.listdir(d)):
            path = os.path.join(d, name)
            if name.startswith('.') or not os.path.isfile(path):
                continue
            result.extend(_parse_file(path))
    return result


def _parse_file(path: str) -> list[rw_filters.CommandFilter]:
    parser = configparser.RawConfigParser(strict=False)
    parser.read(path)
    if not parser.has_section('Filters'):
        return []
    out = []
    for name, value in parser.items('Filters'):
        fields = [s.strip() for s in value.split(',')]
        flt = rw_wrapper.build_filter(*fields)
        if flt is None or os.path.basename(flt.exec_path) in _NEVER:
            LOG.warning('Ignoring filter %s in %s', name, path)
            continue
        flt.name = name
        out.append(flt)
    return out


class CommandPolicy:
    """The filters in force, reloadable (the daemon reloads on SIGHUP).

    ``timeout`` is the wall-clock limit, in seconds, that ``process.run()``
    applies to every command unless the call gives its own (None: no
    limit).  It lives here because the policy is what every run() is handed:
    no call site can forget it.
    """

    def __init__(self, filters_path: Sequence[str],
                 exec_dirs: Sequence[str] = (),
                 timeout: float | None = None,
                 tool_user: ToolUser | None = None,
                 sandbox: Sandbox | None = None) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError('timeout must be None or positive, not %r'
                             % (timeout,))
        self.filters_path = tuple(filters_path)
        self.exec_dirs = list(exec_dirs)
        self.timeout = timeout
        # Who the commands run as (None: as this process).
        self.tool_user = tool_user
        # The Landlock domain every command runs in (None: unconfined).
        self.sandbox = sandbox
        self._lock = threading.Lock()
        self._filters = load_filter_files(self.filters_path)

    def reload(self) -> int:
        loaded = load_filter_files(self.filters_path)
        with self._lock:
            self._filters = loaded
        LOG.info('Loaded %d command filters from %s', len(loaded),
                 ', '.join(self.filters_path))
        return len(loaded)

    def __len__(self) -> int:
        return len(self._filters)

    def check(self, argv: Sequence[str]) -> list[str]:
        """Return argv with its executable resolved, or raise CommandDenied."""
        argv = [str(a) for a in argv]
        with self._lock:
            current = list(self._filters)
        try:
            flt = rw_wrapper.match_filter(current, argv, self.exec_dirs)
        except rw_wrapper.FilterMatchNotExecutable:
            raise exception.CommandDenied(
                'Command %s is allowed by the filters but its executable '
                'was not found' % argv[0], command=' '.join(argv))
        except rw_wrapper.NoFilterMatched:
            raise exception.CommandDenied(command=' '.join(argv))
        return flt.get_command(argv, self.exec_dirs)

    def allows(self, argv: Sequence[str]) -> bool:
        try:
            self.check(argv)
        except exception.CommandDenied:
            return False
        return True
