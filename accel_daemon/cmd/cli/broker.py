# SPDX-License-Identifier: Apache-2.0
"""Bounded waits for the message broker and the daemon.

oslo.messaging's rabbit driver retries a broker it cannot reach without end:
the connection that receives RPC replies is opened with no retry limit, and
no option bounds it (``rabbit_retry_interval``, ``rabbit_retry_backoff`` and
``rabbit_interval_max`` only space the attempts).  A command line must give
up instead, so ``accel-image``:

* checks, before its first call, that a broker of the transport URL accepts
  TCP connections: a few attempts a second apart, all within the command's
  ``--timeout`` (``check``);
* bounds every call to the daemon by the same timeout (``Deadline``): a call
  that has not returned by then (a broker that accepts connections but never
  answers, a broker that went away while a task was being waited for) ends
  the process with one line on stderr, since the thread stuck in the
  driver's retry loop cannot be interrupted.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any, Callable

from accel_daemon import exception

ATTEMPTS = 3
INTERVAL = 1.0
DEFAULT_PORT = 5672
# The schemes whose hosts are TCP brokers worth checking (fake:// and the
# like are not).
_SCHEMES = ('rabbit', 'amqp', 'kombu')


def broker_hosts(conf: Any) -> list[tuple[str, int]]:
    """(host, port) of each broker in ``conf``'s transport URL; [] when the
    transport is not a TCP broker (``fake://``...)."""
    import oslo_messaging
    from oslo_messaging import opts
    for group, options in opts.list_opts():
        if group is None:
            # transport_url and control_exchange, registered as
            # get_rpc_transport() would (the same options: no conflict).
            conf.register_opts(options)
    url = oslo_messaging.TransportURL.parse(conf, conf.transport_url)
    if not url.transport or not url.transport.startswith(_SCHEMES):
        return []
    hosts = [(h.hostname or 'localhost', h.port or DEFAULT_PORT)
             for h in url.hosts]
    return hosts or [('localhost', DEFAULT_PORT)]


def check(hosts: list[tuple[str, int]], timeout: float,
          attempts: int = ATTEMPTS, interval: float = INTERVAL,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep,
          connect: Callable[..., Any] = socket.create_connection) -> None:
    """Return once one of ``hosts`` accepts a TCP connection; raise
    ``ServiceUnavailable`` after ``attempts`` rounds or ``timeout`` seconds,
    whichever comes first."""
    if not hosts:
        return
    start = clock()
    deadline = start + timeout
    error: OSError | None = None
    tried = 0
    while tried < attempts and deadline - clock() > 0:
        tried += 1
        for host, port in hosts:
            left = deadline - clock()
            if left <= 0:
                break
            try:
                connect((host, port), timeout=min(left, 5.0)).close()
                return
            except OSError as e:
                error = e
        left = deadline - clock()
        if tried < attempts and left > 0:
            sleep(min(interval, left))
    where = ', '.join('%s:%d' % hp for hp in hosts)
    raise exception.ServiceUnavailable(
        reason='cannot reach the message broker at %s: %s (%d attempt%s in '
               '%.1f s)' % (where, _why(error), tried,
                            '' if tried == 1 else 's', clock() - start))


def _why(error: OSError | None) -> str:
    if error is None:
        return 'no time left to try'
    if isinstance(error, socket.timeout):
        return 'connection timed out'
    return error.strerror or str(error)


class Deadline:
    """``with Deadline(seconds, what):`` around a call that may block in
    the messaging driver for ever.  When the time is up, ``on_expiry`` runs
    (it prints the one-line error) and the process exits with status 1
    at once: the blocked thread cannot be stopped otherwise."""

    def __init__(self, seconds: float, what: str,
                 on_expiry: Callable[[str], None],
                 exit: Callable[[int], Any] = os._exit,
                 shown: float | None = None) -> None:
        self.seconds = seconds
        # The timeout the message names (the command's --timeout, of which
        # ``seconds`` may be what is left).
        self.shown = seconds if shown is None else shown
        self.what = what
        self._on_expiry = on_expiry
        self._exit = exit
        self._timer: threading.Timer | None = None

    def _expire(self) -> None:
        try:
            self._on_expiry(
                'ServiceUnavailable: no answer from %s within %g s (is '
                'the message broker up and the daemon running?)'
                % (self.what, self.shown))
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            self._exit(1)

    def __enter__(self) -> Deadline:
        if self.seconds and self.seconds > 0:
            self._timer = threading.Timer(self.seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
