"""An accelerator for cinder's ``cinder.image.accelerator``, on accel-daemon.

``DaemonAccel`` has the interface of cinder's ``AccelBase`` (and subclasses
it when cinder is importable): ``is_accel_exist()``, ``compress_img(src,
dest, run_as_root)`` and ``decompress_img(src, dest, run_as_root)``.
cinder's ``ImageAccel`` builds each engine of its list with no arguments,
keeps the first whose ``is_accel_exist()`` is true, and calls it IN PLACE
(``src == dest``, a temporary file cinder made).  So:

* the daemon is called with cinder's own configuration (``cfg.CONF``:
  its ``transport_url``, ``control_exchange`` and ``[accel_daemon_client]``
  options), through one client shared by every instance;
* ``is_accel_exist()`` asks the daemon for its capabilities (with a short
  RPC timeout, ``[accel_daemon_cinder] probe_timeout``) and caches the
  answer for ``[accel_daemon_cinder] exist_cache_ttl`` seconds; it never
  raises: a daemon that does not answer is "not there".  Once an instance
  has answered True it answers True for the rest of its life: cinder's
  ``ImageAccel`` asks again before each call and silently skips the work
  on False, which would upload an image uncompressed (or leave it
  compressed on download) without a word.  A daemon that went away is
  reported by the call instead;
* ``compress_img`` and ``decompress_img`` send ``replace=True`` and wait for
  the task; every failure -- a typed accel-daemon error, a daemon that does
  not answer, a wait that times out -- raises cinder's
  ``CinderAcceleratorError`` whose reason is the typed accel-daemon error:
  its text in the message (cinder keeps only the text of exception
  arguments), the error itself as ``accel_error`` and ``__cause__``.
  Never a silent no-op.

cinder 29 cannot select this class by configuration: its engine list
(``cinder.image.accelerator._ACCEL_PATH_PREFERENCE_ORDER_LIST``) is
hard-coded.  Put ``'accel_daemon.integrations.cinder.DaemonAccel'`` first
in that list (a patch or a wrapper of cinder-volume's start-up).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

from oslo_config import cfg

from accel_daemon import exception
from accel_daemon.client import AccelClient

LOG = logging.getLogger(__name__)

NAME = 'accel-daemon'
PATH = '%s.DaemonAccel' % __name__

GROUP = cfg.OptGroup('accel_daemon_cinder',
                     title='accel-daemon as a cinder image accelerator')
OPTS: list[cfg.Opt] = [
    cfg.FloatOpt('exist_cache_ttl', default=5.0, min=0.0, max=300.0,
                 help='Seconds the answer of the daemon to "are you '
                      'there?" (is_accel_exist) is reused before asking '
                      'again. 0 asks every time.'),
    cfg.FloatOpt('probe_timeout', default=3.0, min=0.1, max=60.0,
                 help='Seconds is_accel_exist waits for the daemon to '
                      'answer its capabilities call before it answers '
                      'False.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> dict[cfg.OptGroup, list[cfg.Opt]]:
    return {GROUP: OPTS}


def _accel_base() -> type:
    """cinder's AccelBase when cinder is installed, else object."""
    try:
        from cinder.image import accelerator
    except ImportError:
        return object
    return accelerator.AccelBase


_AccelBase: Any = _accel_base()

_lock = threading.Lock()
_shared_client: AccelClient | None = None
# client -> (monotonic time of the answer, answer)
_exist_cache: weakref.WeakKeyDictionary[AccelClient, tuple[float, bool]] = (
    weakref.WeakKeyDictionary())


def shared_client() -> AccelClient:
    """The client every instance built without one uses: on cinder's
    global configuration, made on first use."""
    global _shared_client
    with _lock:
        if _shared_client is None:
            _shared_client = AccelClient(cfg.CONF)
        return _shared_client


def _cinder_error(action: str, src: str, dest: str,
                  err: exception.AccelError) -> Exception:
    try:
        from cinder import exception as cinder_exception
    except ImportError:
        return err
    # CinderException keeps the text of an exception argument only: the
    # typed error stays reachable as ``accel_error`` (and ``__cause__``).
    error = cinder_exception.CinderAcceleratorError(
        accelerator=NAME, cmd='%s %s -> %s' % (action, src, dest),
        description='accel-daemon error %s' % type(err).__name__,
        reason=err)
    error.accel_error = err
    return error


class DaemonAccel(_AccelBase):
    """cinder image accelerator that runs gzip work in accel-daemon.

    Built with no arguments by cinder; ``client`` (an ``AccelClient``) and
    ``conf`` are for tests and wrappers.  ``exist_ttl`` and
    ``probe_timeout`` default to ``[accel_daemon_cinder]`` of ``conf``
    (cinder's ``cfg.CONF`` by default).
    """

    def __init__(self, client: AccelClient | None = None,
                 conf: cfg.ConfigOpts | None = None,
                 exist_ttl: float | None = None,
                 probe_timeout: float | None = None,
                 task_timeout: float | None = None) -> None:
        super().__init__()
        conf = conf if conf is not None else (
            client.conf if client is not None else cfg.CONF)
        register_opts(conf)
        opts = conf.accel_daemon_cinder
        self._client = client
        self.exist_ttl = opts.exist_cache_ttl if exist_ttl is None \
            else exist_ttl
        self.probe_timeout = opts.probe_timeout if probe_timeout is None \
            else probe_timeout
        # None: the client's [accel_daemon_client] task_timeout.
        self.task_timeout = task_timeout
        self._exists = False

    @property
    def client(self) -> AccelClient:
        if self._client is None:
            self._client = shared_client()
        return self._client

    # -- AccelBase -----------------------------------------------------------
    def is_accel_exist(self) -> bool:
        if self._exists:
            return True
        try:
            exists = self._probe()
        except Exception as e:   # never raise: "not there"
            LOG.warning('accel-daemon: cannot tell whether it is there: %s',
                        e)
            exists = False
        self._exists = exists
        return exists

    def compress_img(self, src: str, dest: str, run_as_root: bool) -> None:
        self._run('compress', src, dest,
                  lambda: self.client.compress(src, dest, replace=True))

    def decompress_img(self, src: str, dest: str, run_as_root: bool) -> None:
        self._run('decompress', src, dest,
                  lambda: self.client.decompress(src, dest, replace=True))

    # -- helpers -------------------------------------------------------------
    def _probe(self) -> bool:
        client = self.client
        now = time.monotonic()
        with _lock:
            cached = _exist_cache.get(client)
        if cached is not None and now - cached[0] < self.exist_ttl:
            return cached[1]
        try:
            caps = client.capabilities(timeout=self.probe_timeout)
            exists = caps.get('default_driver') is not None
            if not exists:
                LOG.info('accel-daemon on %s has no compression driver',
                         client.host)
        except exception.AccelError as e:
            LOG.info('accel-daemon on %s is not there: %s', client.host, e)
            exists = False
        with _lock:
            _exist_cache[client] = (time.monotonic(), exists)
        return exists

    def _run(self, action: str, src: str, dest: str, submit: Any) -> None:
        try:
            submit().wait(timeout=self.task_timeout)
        except exception.AccelError as e:
            raise _cinder_error(action, src, dest, e) from e
        except Exception as e:
            # Not typed (a transport error oslo.messaging let through):
            # still a failure of the daemon call, never a silent no-op.
            err = exception.InternalError(
                reason='%s: %s' % (type(e).__name__, e))
            raise _cinder_error(action, src, dest, err) from e
