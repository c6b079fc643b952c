# SPDX-License-Identifier: Apache-2.0
"""A real accel-daemon process, started the way a host starts it, for the
functional tests (``tests.functional.test_rpc_daemon.DaemonProcess``), the
flow tests in the caller venvs (``tests/callers/realdaemon.py``) and the
benchmarks (``benchmarks/bench_daemon.py``).

Everything lives under one root: ``images/`` (the allowed directory),
``filters/`` (the shipped filter files rendered for ``images/`` by
``tools/render_filters.py``, as ``tools/install.sh`` does), ``state/``,
``accel-daemon.conf`` and ``daemon.log``.  The daemon is the
``accel-daemon`` console script beside the running interpreter, in a
session of its own, so that its whole group (privsep helper and tools
included) can be killed at once.

Standard library only: the caller venvs and the benchmarks load this file
by its path (``load_file``), because putting the checkout on their
``sys.path`` would hide the accel_daemon installed in them, which is what
they test.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_FILTERS = os.path.join(CHECKOUT, 'filters')
BROKER = ('127.0.0.1', 5672)
TRANSPORT_URL = 'rabbit://guest:guest@127.0.0.1:5672/'

# Section -> option -> value.
Sections = Mapping[str, Mapping[str, Any]]


def load_file(name: str, path: str) -> Any:
    """The Python file ``path`` as a module named ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def broker_up() -> bool:
    try:
        socket.create_connection(BROKER, timeout=2).close()
        return True
    except OSError:
        return False


def render_config(sections: Sections, extra: str = '') -> str:
    """An oslo.config file of ``sections``, then ``extra`` as it is."""
    lines = []
    for section, options in sections.items():
        lines.append('[%s]' % section)
        lines += ['%s = %s' % item for item in options.items()]
        lines.append('')
    return '\n'.join(lines) + '\n' + extra


def merge(*layers: Sections) -> dict[str, dict[str, Any]]:
    """The sections of every layer, later options over earlier ones."""
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, options in layer.items():
            merged.setdefault(section, {}).update(options)
    return merged


# The daemons' stream directories (made by their helpers), removed when
# the tests end.
_STREAMS = '/tmp/accel-test-streams'
atexit.register(shutil.rmtree, _STREAMS, True)


class DaemonProcess:
    """One accel-daemon under ``root``, answering as ``host``.

    ``sections`` add to (or change) the configuration every daemon here
    has: the broker, its directories and its host name; ``extra`` is
    appended to the file.  ``filters`` is the directory of the filter files
    to render (the checkout's by default)."""

    def __init__(self, root: str, host: str, sections: Sections = {},
                 extra: str = '', filters: str = SHIPPED_FILTERS,
                 transport_url: str = TRANSPORT_URL) -> None:
        self.root = os.path.realpath(root)
        self.host = host
        self.images = os.path.join(self.root, 'images')
        self.filters = os.path.join(self.root, 'filters')
        self.state = os.path.join(self.root, 'state')
        self.config = os.path.join(self.root, 'accel-daemon.conf')
        self.log_path = os.path.join(self.root, 'daemon.log')
        self.streams = os.path.join(_STREAMS, host)
        self.executable = os.path.join(os.path.dirname(sys.executable),
                                       'accel-daemon')
        self.sections = merge({
            'DEFAULT': {'transport_url': transport_url, 'debug': 'false'},
            'accel_daemon': {'allowed_dirs': self.images,
                             'filters_path': self.filters,
                             'state_dir': self.state,
                             'staging_dir': os.path.join(self.root,
                                                         'staging')},
            'accel_daemon_rpc': {'host': host},
            # A socket's path must fit in sun_path: a short directory.
            'streams': {'socket_dir': self.streams, 'group': 'root',
                        'allowed_users': 'root', 'idle_timeout': 10},
        }, sections)
        self.extra = extra
        self.proc: Optional[subprocess.Popen] = None
        os.makedirs(self.images, exist_ok=True)
        self.write_filters(filters)
        self.write_config()

    def write_filters(self, source: str) -> None:
        render = load_file('render_filters', os.path.join(
            CHECKOUT, 'tools', 'render_filters.py'))
        os.makedirs(self.filters, exist_ok=True)
        for name in sorted(os.listdir(source)):
            if not name.endswith('.filters'):
                continue
            with open(os.path.join(source, name)) as f:
                text = render.render(f.read(), [self.images])
            with open(os.path.join(self.filters, name), 'w') as f:
                f.write(text)

    def write_config(self) -> None:
        with open(self.config, 'w') as f:
            f.write(render_config(self.sections, self.extra))

    # -- the process -------------------------------------------------------
    def spawn(self, args: Sequence[str] = (),
              env: Optional[dict[str, str]] = None) -> None:
        """Start the daemon (not waiting for it); its output goes to the
        log."""
        with open(self.log_path, 'ab') as log:
            self.proc = subprocess.Popen(
                [self.executable, '--config-file', self.config, *args],
                stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, client: Any, timeout: float,
                   gone: Callable[[str], Exception] = RuntimeError) -> Any:
        """The daemon's capabilities, once ``client`` gets them; ``gone``
        of a message when the daemon exits or does not answer in time."""
        from accel_daemon import exception
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise gone('accel-daemon exited with %s:\n%s'
                           % (self.proc.returncode, self.log_tail()))
            try:
                return client.capabilities()
            except exception.ServiceUnavailable:
                if time.monotonic() > deadline:
                    raise gone('accel-daemon does not answer after %d s:\n%s'
                               % (timeout, self.log_tail()))

    def kill_group(self) -> None:
        """SIGKILL the daemon's process group (privsep helper and tools
        too): a crash, mid-task if one runs."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def terminate(self, timeout: float) -> Optional[int]:
        """SIGTERM, as a service manager stops it; the exit status, or None
        when it still runs after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        return self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, errors='replace') as f:
                return ''.join(f.readlines()[-lines:])
        except OSError:
            return ''
