# SPDX-License-Identifier: Apache-2.0
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
  the task; ``decompress_img`` also sends ``container='gzip'`` (cinder
  checked the magic and supports nothing else) and, as ``max_bytes``, the
  size of the volume being made (kept by ``fetch_to_volume_format``, the
  one caller of cinder's, plus room for an image format's metadata);
  every failure -- a typed accel-daemon error, a daemon that does not
  answer, a wait that times out -- raises cinder's
  ``CinderAcceleratorError`` whose reason is the typed accel-daemon error:
  its text in the message (cinder keeps only the text of exception
  arguments), the error itself as ``accel_error`` and ``__cause__``.
  Never a silent no-op.

cinder 29 cannot select this class by configuration: its engine list
(``cinder.image.accelerator._ACCEL_PATH_PREFERENCE_ORDER_LIST``) is
hard-coded.  ``install()`` (from a wrapper of cinder-volume's start-up)
puts this class, ``PATH``, first in that list.

``upload_volume`` is a drop-in for cinder 29's
``cinder.image.image_utils.upload_volume``: an upload that converts or
compresses is streamed by the daemon (``stream_out``) straight into the
image service, with no temporary file (see its docstring).

``convert_image`` is a drop-in for cinder 29's
``cinder.image.image_utils.convert_image`` (same signature): it runs the
conversions accel-daemon supports in the daemon and hands everything else,
unchanged, to cinder's original function (see its docstring).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Optional

from oslo_config import cfg

from accel_daemon.client import AccelClient
from accel_daemon.conf import integrations as integrations_conf
from accel_daemon import exception
from accel_daemon.integrations import common

LOG = logging.getLogger(__name__)

NAME = 'accel-daemon'
PATH = '%s.DaemonAccel' % __name__
# The cinder releases (major versions) install() switches over; they are
# tested against their real code (tools/run-caller-tests.sh).
SUPPORTED = (27, 28, 29)

# The options live in accel_daemon.conf.integrations (the
# accel_daemon.cinder namespace of oslo.config.opts).
GROUP = integrations_conf.CINDER_GROUP
OPTS: list[cfg.Opt] = integrations_conf.CINDER_OPTS
register_opts = integrations_conf.register_cinder_opts
list_opts = integrations_conf.list_cinder_opts


def _accel_base() -> type:
    """cinder's AccelBase when cinder is installed, else object."""
    try:
        from cinder.image import accelerator
    except ImportError:
        return object
    return accelerator.AccelBase


_AccelBase: Any = _accel_base()

_lock = threading.Lock()
_shared = common.SharedClient()
# The daemon's capabilities, shared by DaemonAccel's probes and
# convert_image (both ask with [accel_daemon_cinder]'s ttl and timeout).
_caps_cache = common.CapsCache(LOG)


# The client every call built without one uses (on cinder's global
# configuration, made on first use), and how to close and forget it so that
# the next call builds a new one from the configuration as it is then.
shared_client = _shared.get
reset = _shared.reset


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
        # cinder checked the gzip magic and supports nothing else; the
        # image inside is at most the volume being made from it.
        max_bytes = decompressed_cap(_volume_bytes())
        self._run('decompress', src, dest,
                  lambda: self.client.decompress(
                      src, dest, replace=True, container='gzip',
                      max_bytes=max_bytes))

    # -- helpers -------------------------------------------------------------
    def _probe(self) -> bool:
        client = self.client
        caps = _caps_cache.get(client, self.exist_ttl, self.probe_timeout)
        if caps is None:
            return False
        if caps.get('default_driver') is None:
            LOG.info('accel-daemon on %s has no compression driver',
                     client.host)
            return False
        return True

    def _run(self, action: str, src: str, dest: str, submit: Any) -> None:
        common.run_task(
            submit, lambda err: _cinder_error(action, src, dest, err),
            timeout=self.task_timeout)


# -- the volume being made: fetch_to_volume_format --------------------------

GIB = 1024 ** 3
# What an image format may add to its virtual size (qcow2, vmdk, vhd(x)
# metadata is well under 1/64 of it), plus headers and alignment.
_FORMAT_OVERHEAD = 64 * 1024 * 1024

# The size of the volume that cinder's fetch_to_volume_format, running in
# this thread (a green thread in cinder-volume), writes.
_volume = threading.local()


def _volume_bytes() -> Optional[int]:
    return getattr(_volume, 'bytes', None)


def decompressed_cap(volume_bytes: Optional[int]) -> Optional[int]:
    """The most a decompressed image of a volume of ``volume_bytes`` may
    take (room for its format's metadata); None when the volume's size is
    unknown (the daemon's own cap then applies: the free space of the
    target's file system)."""
    if volume_bytes is None:
        return None
    return volume_bytes + volume_bytes // 64 + _FORMAT_OVERHEAD


def fetch_to_volume_format(context: Any, image_service: Any, image_id: str,
                           dest: str, volume_format: str, blocksize: int,
                           volume_subformat: Optional[str] = None,
                           user_id: Optional[str] = None,
                           project_id: Optional[str] = None,
                           size: Optional[int] = None,
                           run_as_root: bool = True,
                           disable_sparse: bool = False) -> None:
    """cinder 29's ``image_utils.fetch_to_volume_format``, in accel-daemon
    (create-volume-from-image).

    * An image cinder did not download before (no ``TemporaryImages``
      entry: cinder's create flow with the contrib patch, or a reimage) is
      streamed: cinder's own ``image_service.download(..., data=writer)``
      writes into the daemon's ``stream_in``, which inflates a
      ``compressed`` container in its unprivileged decoding child,
      inspects the image before writing anything, writes a raw image
      straight to the volume (a qcow2 through one unnamed stage) and
      finishes the volume only once the download is complete.  Nothing is
      written to ``image_conversion_dir``.
    * A ``compressed`` image cinder downloaded before (its create flow
      does, to verify signatures and check the virtual size) is the
      daemon's ``download`` of that file: inflated straight onto the
      volume for raw (one stage for qcow2), instead of cinder's
      decompress-in-place into a second full file, then a convert.
    * The size of the volume (``size``, GiB) caps what the daemon writes:
      an image larger than the volume is refused while it is inflated.

    cinder's own function runs, with the same arguments (and the volume's
    size kept for ``DaemonAccel.decompress_img``), each reason logged
    once: ``[accel_daemon_cinder] stream_images = False``, a bare image
    cinder downloaded before (cinder's path is then one conversion, which
    goes to the daemon through ``convert_image``), a signed image
    (``img_signature*``: cinder verifies the stored bytes) or a volume of
    unknown size not downloaded before, containers other than bare and
    compressed (or compressed ones cinder refuses), a
    ``volume_subformat``, a target or format the daemon does not take, and
    a daemon that does not answer (or, for a stream, is older than API
    1.5 or whose stream sockets cinder-volume may not reach).

    :raises ImageUnacceptable: the daemon refused the image
    :raises ProcessExecutionError: any other failure of the daemon's task
    """
    previous = _volume_bytes()
    _volume.bytes = size * GIB if isinstance(size, int) and size > 0 \
        else None
    try:
        try:
            # A Fallback comes before anything is written.
            _fetch_plan(context, image_service, image_id, dest,
                        volume_format, volume_subformat, size,
                        disable_sparse)()
        except common.Fallback:
            return original_fetch_to_volume_format()(
                context, image_service, image_id, dest, volume_format,
                blocksize, volume_subformat=volume_subformat,
                user_id=user_id, project_id=project_id, size=size,
                run_as_root=run_as_root, disable_sparse=disable_sparse)
    finally:
        _volume.bytes = previous


def _fetch_plan(context: Any, image_service: Any, image_id: str, dest: str,
                volume_format: str, volume_subformat: Optional[str],
                size: Optional[int],
                disable_sparse: bool) -> Callable[[], None]:
    """What to run for a fetch, or raise common.Fallback."""
    from cinder.image import image_utils
    client = shared_client()
    register_opts(client.conf)
    if not client.conf.accel_daemon_cinder.stream_images:
        raise _fallback('[accel_daemon_cinder] stream_images = False')
    if volume_subformat:
        raise _fallback('volume_subformat')
    refusal = common.local_refusal('rbd: and other URIs', dest)
    if refusal:
        raise _fallback(refusal)
    # Where the image goes, before the image service is asked what it is
    # (cinder's own path asks again).
    caps = _capabilities(client)
    refusal = common.daemon_refusal(caps, dest, dest, 'raw', 'raw')
    if refusal:
        raise _fallback(refusal)
    assert caps is not None       # daemon_refusal said so
    meta = image_service.show(context, image_id)
    if not meta or not isinstance(meta.get('disk_format'), str):
        raise _fallback('an image without a disk_format')
    image_utils.check_image_conversion_disable(
        meta['disk_format'], volume_format, image_id, upload=False)
    container = meta.get('container_format')
    if container not in ('bare', 'compressed'):
        raise _fallback('a container other than bare or compressed (%s)'
                        % container)
    compressed = container == 'compressed'
    if compressed and not _allow_compressed():
        raise _fallback('a compressed image cinder refuses '
                        '(allow_compression_on_image_upload = false)')
    disk_format = image_utils.fixup_disk_format(meta['disk_format'])
    if not common.formats_known(caps, disk_format, volume_format):
        raise _fallback('a format accel-daemon does not convert')
    tmp = image_utils.TemporaryImages.for_image_service(
        image_service).get(context, image_id)
    common_args = {
        'dst': dest, 'disk_format': disk_format.lower(),
        'dst_format': volume_format.lower(),
        'replace': os.path.lexists(dest) and not common.is_device(dest),
        'sparse': False if disable_sparse else None}
    where = {'src': 'image %s' % image_id, 'src_format': disk_format,
             'dst': dest, 'dst_format': volume_format}
    if tmp:
        if not compressed:
            raise _fallback('a bare image cinder downloaded before (one '
                            'conversion, through convert_image)')
        args = dict(common_args, src=tmp, container='gzip',
                    max_bytes=decompressed_cap(_volume_bytes()))
        return lambda: common.run_task(
            lambda: client.download(**args),
            lambda err: _convert_error(err, where, image_id))
    if _signed(meta):
        raise _fallback('a signed image (cinder verifies the stored bytes)')
    if not (isinstance(size, int) and size > 0):
        raise _fallback('a volume of unknown size (cinder checks the '
                        "image's virtual size against it)")
    refusal = common.stream_refusal(caps)
    if refusal:
        raise _fallback(refusal)
    args = dict(common_args, container='gzip' if compressed else None,
                max_bytes=size * GIB)
    return lambda: _stream_in(client, args, where, context, image_service,
                              image_id)


def _stream_in(client: AccelClient, args: dict[str, Any],
               where: dict[str, Any], context: Any, image_service: Any,
               image_id: str) -> None:
    try:
        writer = client.stream_in(**args)
    except exception.ServiceUnavailable:
        # Gone since it answered: nothing started, cinder's own path runs.
        raise _fallback('a daemon that did not take the stream') from None
    except exception.AccelError as e:
        raise _convert_error(e, where, image_id) from e
    try:
        image_service.download(context, image_id, data=writer)
    except exception.AccelError as e:
        writer.abort('%s: %s' % (type(e).__name__, e))
        raise _convert_error(e, where, image_id) from e
    except BaseException as e:
        # The image service's failure (or glanceclient's hash check):
        # nothing is published.
        writer.abort('%s: %s' % (type(e).__name__, e))
        if writer.error is not None:
            raise _convert_error(writer.error, where, image_id) from e
        raise
    try:
        writer.close()
    except exception.AccelError as e:
        raise _convert_error(e, where, image_id) from e


def download_before_volume(context: Any, image_service: Any, image_id: str,
                           image_meta: dict) -> bool:
    """The hook of ``contrib/cinder-stream-create-from-image.patch``
    (``image_utils.download_before_volume``): False, so that cinder's
    create flow writes the volume without first downloading the image into
    ``image_conversion_dir``, when the integration's
    ``fetch_to_volume_format`` can stream it (``stream_images`` on, a
    daemon that streams, a bare or compressed image of a format it
    takes) and nothing needs the stored bytes (no ``img_signature*``).
    The daemon then refuses an image larger than the volume, or not of
    its ``disk_format``, while it arrives; and where the stream does not
    happen after all (a target the daemon does not take), cinder's own
    ``fetch_to_volume_format`` downloads the image and checks its size
    itself.  Otherwise cinder's own answer (True)."""
    try:
        _streamable(image_meta)
    except common.Fallback:
        return original_download_before_volume()(context, image_service,
                                                 image_id, image_meta)
    return False


def _streamable(meta: dict) -> None:
    """Raise common.Fallback unless an image of ``meta`` can be
    streamed onto a volume."""
    client = shared_client()
    register_opts(client.conf)
    if not client.conf.accel_daemon_cinder.stream_images:
        raise _fallback('[accel_daemon_cinder] stream_images = False')
    if _signed(meta):
        raise _fallback('a signed image (cinder verifies the stored bytes)')
    container = meta.get('container_format')
    if container not in ('bare', 'compressed'):
        raise _fallback('a container other than bare or compressed (%s)'
                        % container)
    caps = _capabilities(client)
    refusal = common.stream_refusal(caps)
    if refusal:
        raise _fallback(refusal)
    assert caps is not None       # stream_refusal said so
    disk_format = meta.get('disk_format')
    if not isinstance(disk_format, str) or \
            not common.formats_known(caps, disk_format, 'raw'):
        raise _fallback('a format accel-daemon does not convert')


def _signed(meta: dict) -> bool:
    props = meta.get('properties') or {}
    return any(str(k).startswith('img_signature')
               for k in list(meta) + list(props))


def original_download_before_volume() -> Callable[..., bool]:
    """cinder's own ``image_utils.download_before_volume`` (a cinder with
    the contrib patch only)."""
    return _download_before_volume.get()


def _allow_compressed() -> bool:
    """cinder's ``allow_compression_on_image_upload`` (False, its
    default, when cinder has not registered it)."""
    try:
        return bool(cfg.CONF.allow_compression_on_image_upload)
    except cfg.NoSuchOptError:
        return False


# -- convert_image -----------------------------------------------------------

_fallback_log = common.FallbackLog(LOG, 'cinder')
_fallbacks_logged: set[str] = _fallback_log.logged
_fallback = _fallback_log.fallback


def original_convert_image() -> Callable[..., None]:
    """cinder's own ``image_utils.convert_image`` (never ours)."""
    return _convert_image.get()


def original_fetch_to_volume_format() -> Callable[..., None]:
    """cinder's own ``image_utils.fetch_to_volume_format`` (never ours)."""
    return _fetch_to_volume_format.get()


def _engines() -> list[str]:
    """cinder's accelerator list, which ``ImageAccel`` reads each time it
    is built (so it is changed in place)."""
    from cinder.image import accelerator
    engines = accelerator._ACCEL_PATH_PREFERENCE_ORDER_LIST
    if not isinstance(engines, list):
        raise common.Refused('cinder.image.accelerator.'
                             '_ACCEL_PATH_PREFERENCE_ORDER_LIST is not a list')
    return engines


def install() -> None:
    """Switch cinder over: replace ``image_utils.convert_image`` with
    ``convert_image`` (keeping the original for the fallbacks),
    ``image_utils.fetch_to_volume_format`` with its size-keeping wrapper
    and ``image_utils.upload_volume`` with the streamed ``upload_volume``,
    and put ``DaemonAccel`` first in cinder's accelerator list, before its
    QAT and gzip engines (which ``ImageAccel`` still picks when the daemon
    does not answer); in a cinder with
    ``contrib/cinder-stream-create-from-image.patch``, its hook
    ``image_utils.download_before_volume`` too.  Calling it again changes
    nothing; refused, changing nothing, when cinder's function or list is
    not what it replaces, or cinder is not a release in ``SUPPORTED``
    (``common.Refused``)."""
    common.check_release('cinder', SUPPORTED)
    engines = _engines()
    common.install(_convert_image, _fetch_to_volume_format, _upload_volume,
                   *_patched())
    with _lock:
        if PATH not in engines:
            engines.insert(0, PATH)


def _patched() -> tuple[common.Original, ...]:
    """The hooks of the contrib patches the installed cinder has."""
    from cinder.image import image_utils
    if hasattr(image_utils, 'download_before_volume'):
        return (_download_before_volume,)
    return ()


def uninstall() -> None:
    """Undo ``install()``: cinder's own convert_image and engine list."""
    common.uninstall(_convert_image, _fetch_to_volume_format,
                     _upload_volume, *_patched())
    engines = _engines()
    with _lock:
        while PATH in engines:
            engines.remove(PATH)


def _capabilities(client: AccelClient) -> common.Caps:
    """The daemon's capabilities, None when it does not answer; cached for
    ``[accel_daemon_cinder] exist_cache_ttl`` seconds either way."""
    register_opts(client.conf)
    opts = client.conf.accel_daemon_cinder
    return _caps_cache.get(client, opts.exist_cache_ttl, opts.probe_timeout)


def _bps_limit(throttle: Any) -> Optional[int]:
    """The bandwidth limit of cinder's Throttle (``throttle`` or cinder's
    default one), None for no limit."""
    from cinder.volume import throttling
    if not throttle:
        throttle = throttling.Throttle.get_default()
    if isinstance(throttle, throttling.BlkioCgroup):
        limit = getattr(throttle, 'bps_limit', None)
        if isinstance(limit, int) and not isinstance(limit, bool) \
                and limit > 0:
            return limit
        raise _fallback('a blkio throttle whose bps limit is unreadable')
    if type(throttle) is throttling.Throttle and not throttle.prefix:
        return None
    raise _fallback('a throttle accel-daemon cannot reproduce')


def _inspected_format(data: Any) -> Optional[str]:
    """The format of cinder's ``QemuImgInfo`` of the source, if any."""
    fmt = getattr(data, 'file_format', None)
    return fmt if isinstance(fmt, str) and fmt else None


def _encrypted(data: Any) -> bool:
    """cinder's ``QemuImgInfo`` says the source is encrypted (cinder
    reports a LUKS volume as ``raw``, keeping its format-specific part)."""
    specific = getattr(data, 'format_specific', None)
    return bool(getattr(data, 'encrypted', None)) or (
        isinstance(specific, dict) and specific.get('type') == 'luks')


def _compress_on_upload() -> bool:
    """cinder's ``image_compress_on_upload`` (True, its default, when
    cinder has not registered it)."""
    try:
        return bool(cfg.CONF.image_compress_on_upload)
    except cfg.NoSuchOptError:
        return True


def _plan(source: str, dest: str, out_format: str,
          out_subformat: Optional[str], src_format: Optional[str],
          throttle: Any, cipher_spec: Optional[dict],
          passphrase_file: Optional[str], compress: bool,
          src_passphrase_file: Optional[str], disable_sparse: bool,
          skip_create: bool,
          data: Any = None) -> tuple[AccelClient, dict[str, Any]]:
    """The client and convert() arguments, or raise common.Fallback."""
    if cipher_spec or passphrase_file or src_passphrase_file:
        raise _fallback('encryption (cipher_spec, passphrase_file, '
                        'src_passphrase_file)')
    if out_subformat:
        raise _fallback('out_subformat')
    if skip_create:
        raise _fallback('skip_create (writing into an existing target)')
    if not src_format:
        # upload_volume names no format but hands over what cinder's own
        # inspection (qemu_img_info: format_inspector, then qemu-img info
        # -f) found in this file; the daemon inspects it again and refuses
        # a mismatch.
        if _encrypted(data):
            raise _fallback('an encrypted source (LUKS) without a named '
                            'format')
        src_format = _inspected_format(data)
        if not src_format:
            raise _fallback('an unnamed source format (accel-daemon never '
                            'guesses)')
    refusal = common.local_refusal('rbd: and other URIs', source, dest)
    if refusal:
        raise _fallback(refusal)
    bps_limit = _bps_limit(throttle)
    client = shared_client()
    refusal = common.daemon_refusal(_capabilities(client), source, dest,
                                    src_format, out_format)
    if refusal:
        raise _fallback(refusal)
    # As cinder: compress only when image_compress_on_upload allows.
    args = common.convert_args(source, dest, src_format, out_format,
                               bool(compress) and _compress_on_upload())
    # The virtual size cinder's own inspection accepted (it checked it
    # against the volume's size), or a raw source's size: the daemon
    # refuses an image that is larger when it inspects it.
    max_bytes = common.expected_size(source, src_format, data)
    if max_bytes is None:
        raise _fallback('no expected size (neither data nor a raw source)')
    args.update(bps_limit=bps_limit, max_bytes=max_bytes,
                sparse=False if disable_sparse else None)
    return client, args


def _convert_error(err: exception.AccelError, args: dict[str, Any],
                   image_id: Optional[str]) -> Exception:
    from cinder import exception as cinder_exception
    error: Exception
    if isinstance(err, common.REFUSALS):
        error = cinder_exception.ImageUnacceptable(
            image_id=image_id or 'internal image', reason=str(err))
    else:
        # cinder's callers look for "No space left" in stderr.
        error = common.process_error(err, args)
    error.accel_error = err     # type: ignore[attr-defined]
    return error


def convert_image(source: str,
                  dest: str,
                  out_format: str,
                  out_subformat: Optional[str] = None,
                  src_format: Optional[str] = None,
                  run_as_root: bool = True,
                  throttle: Any = None,
                  cipher_spec: Optional[dict] = None,
                  passphrase_file: Optional[str] = None,
                  compress: bool = False,
                  src_passphrase_file: Optional[str] = None,
                  image_id: Optional[str] = None,
                  data: Any = None,
                  disable_sparse: bool = False,
                  skip_create: bool = False) -> None:
    """cinder 29's ``image_utils.convert_image``, in accel-daemon.

    Sent to the daemon: a local file (in its ``allowed_dirs``) or a block
    device it allows to a local file or such a device (written in place),
    both formats named and known to the daemon; an existing ``dest``
    (cinder pre-creates it) is replaced, ``disable_sparse`` asks a fully
    allocated output, ``compress`` applies to qcow2 outputs, and the bps
    limit of a blkio ``throttle`` (or of cinder's default throttle) is the
    daemon's ``bps_limit``.  The daemon inspects the source itself
    (``run_as_root`` is not used).  Without ``src_format`` (upload_volume
    names none), the format cinder's own inspection found
    (``data.file_format``) is named, and the daemon refuses a mismatch.
    ``compress`` follows cinder's ``image_compress_on_upload``.

    Everything else goes to cinder's own function with the same arguments:
    encryption (also a LUKS source that ``data`` shows without a
    ``src_format``), ``out_subformat``, ``skip_create``, neither
    ``src_format`` nor ``data``, URIs (``rbd:``), ``/dev/`` paths other
    than the block devices the daemon allows (``allowed_block_devices``),
    paths outside the daemon's directories, formats it does not convert,
    throttles it cannot reproduce, a source whose expected size is unknown
    (neither ``data`` nor a raw source), and a daemon that does not
    answer.  Each reason is logged once, at info.  The expected size (the
    virtual size of ``data``, which cinder checked against the volume, or
    a raw source's size) is sent as ``max_bytes``.

    :raises ImageUnacceptable: the daemon refused the image (inspection,
        unsafe image, format mismatch, unsupported format, size limit)
    :raises ProcessExecutionError: any other failure of the conversion
    """
    try:
        client, args = _plan(source, dest, out_format, out_subformat,
                             src_format, throttle, cipher_spec,
                             passphrase_file, compress, src_passphrase_file,
                             disable_sparse, skip_create, data)
    except common.Fallback:
        # skip_create exists from cinder 29 on (and is only ever True
        # there): not passed when False, so cinder 27 and 28 take it.
        extra = {'skip_create': True} if skip_create else {}
        return original_convert_image()(
            source, dest, out_format, out_subformat=out_subformat,
            src_format=src_format, run_as_root=run_as_root,
            throttle=throttle, cipher_spec=cipher_spec,
            passphrase_file=passphrase_file, compress=compress,
            src_passphrase_file=src_passphrase_file, image_id=image_id,
            data=data, disable_sparse=disable_sparse, **extra)
    common.run_task(lambda: client.convert(**args),
                    lambda err: _convert_error(err, args, image_id))


# cinder 27's and 28's convert_image has no skip_create (they always
# create the output): the same function with their parameters.
convert_image_27 = common.without(convert_image, 'skip_create')


# -- upload_volume -----------------------------------------------------------

def original_upload_volume() -> Callable[..., None]:
    """cinder's own ``image_utils.upload_volume`` (never ours)."""
    return _upload_volume.get()


def _upload_plan(image_meta: dict, volume_path: str, volume_fd: Any,
                 volume_format: str,
                 compress: bool) -> tuple[AccelClient, dict[str, Any]]:
    """The client and stream_out() arguments of an upload, or raise
    common.Fallback."""
    compressed = image_meta.get('container_format') == 'compressed'
    disk_format = image_meta.get('disk_format')
    client = shared_client()
    register_opts(client.conf)
    if not client.conf.accel_daemon_cinder.stream_images:
        raise _fallback('[accel_daemon_cinder] stream_images = False')
    if not compressed and disk_format == volume_format:
        raise _fallback('an upload with nothing to convert or compress '
                        '(cinder sends the volume as it is)')
    if volume_fd is not None:
        raise _fallback('a volume given as an open file (volume_fd)')
    if not volume_format or not isinstance(disk_format, str):
        raise _fallback('an upload without a volume or image format')
    refusal = common.local_refusal('rbd: and other URIs', volume_path)
    if refusal:
        raise _fallback(refusal)
    from cinder.image import image_utils
    out_format = image_utils.fixup_disk_format(disk_format)
    caps = _capabilities(client)
    refusal = (common.daemon_refusal(caps, volume_path, volume_path,
                                     volume_format, out_format)
               or common.stream_refusal(caps))
    if refusal:
        raise _fallback(refusal)
    return client, {
        'src': volume_path, 'src_format': volume_format.lower(),
        'disk_format': out_format.lower(),
        'compression': 'gzip' if compressed else None,
        # As cinder: compressed qcow2 clusters when image_compress_on_upload
        # allows -- but never inside a gzip container (deflated once).
        'compress': (bool(compress) and _compress_on_upload()
                     and not compressed and out_format == 'qcow2')}


def upload_volume(context: Any,
                  image_service: Any,
                  image_meta: dict,
                  volume_path: str,
                  volume_fd: Any = None,
                  volume_format: str = 'raw',
                  run_as_root: bool = True,
                  compress: bool = True,
                  store_id: Optional[str] = None,
                  base_image_ref: Optional[str] = None) -> None:
    """cinder 29's ``image_utils.upload_volume``, streamed: the daemon
    reads the volume once, converts it if ``disk_format`` differs (one
    unnamed stage) and compresses it for a ``compressed`` container on all
    cores, while ``image_service.update`` sends what it streams
    (``AccelClient.stream_out``).  Nothing is written to
    ``image_conversion_dir``, and a qcow2 in a ``compressed`` container is
    deflated once (cinder's own path writes compressed clusters, then
    gzips them).

    cinder's own function runs, with the same arguments, with
    ``[accel_daemon_cinder] stream_images = False``, for an upload
    with nothing to convert or compress (cinder already sends the volume
    as it is), a ``volume_fd``, a path the daemon does not take, a daemon
    that does not answer, is older than API 1.5 or whose stream sockets
    this service may not reach, and a volume the daemon finds is not its
    ``volume_format`` (a LUKS volume, which cinder calls raw; refused
    before anything is sent).  Each reason is logged once, at info.

    :raises ImageUnacceptable: the daemon refused the volume (inspection,
        format mismatch, size limit)
    :raises ProcessExecutionError: any other failure of the daemon's task
    """
    from cinder.image import image_utils
    image_id = image_meta['id']
    image_utils.check_image_conversion_disable(
        image_meta['disk_format'], volume_format, image_id, upload=True)
    try:
        client, args = _upload_plan(image_meta, volume_path, volume_fd,
                                    volume_format, compress)
    except common.Fallback:
        return original_upload_volume()(
            context, image_service, image_meta, volume_path,
            volume_fd=volume_fd, volume_format=volume_format,
            run_as_root=run_as_root, compress=compress, store_id=store_id,
            base_image_ref=base_image_ref)
    where = {'src': volume_path, 'src_format': args['src_format'],
             'dst': 'image %s' % image_id, 'dst_format': args['disk_format']}
    try:
        # Ready to send (inspected, converted if needed) before glance's
        # upload starts waiting for bytes.
        reader = client.stream_out(**args).open()
    except (exception.FormatMismatch, exception.ServiceUnavailable) as e:
        # Nothing was sent.  The volume is not what cinder says it is (a
        # LUKS volume cinder calls raw), or the daemon went away since it
        # answered: cinder's own path, which inspects the volume itself,
        # decides (and routes a conversion it can make back here through
        # convert_image).
        if isinstance(e, exception.FormatMismatch):
            _fallback_log('a volume that is not its volume_format (%s)'
                          % e.fields.get('detected'))
        else:
            _fallback_log('a daemon that did not take the stream')
        return original_upload_volume()(
            context, image_service, image_meta, volume_path,
            volume_fd=volume_fd, volume_format=volume_format,
            run_as_root=run_as_root, compress=compress, store_id=store_id,
            base_image_ref=base_image_ref)
    except exception.AccelError as e:
        raise _convert_error(e, where, image_id) from e
    try:
        image_service.update(context, image_id, {}, reader,
                             store_id=store_id,
                             base_image_ref=base_image_ref)
    except exception.AccelError as e:
        reader.close()
        raise _convert_error(e, where, image_id) from e
    except BaseException as e:
        # The image service's own failure, or ours wrapped by it.
        reader.close()
        if reader.error is not None:
            raise _convert_error(reader.error, where, image_id) from e
        raise
    try:
        result = reader.close()
    except exception.AccelError as e:
        raise _convert_error(e, where, image_id) from e
    LOG.debug('accel-daemon streamed volume %s to image %s: %s',
              volume_path, image_id, result)


# cinder's own image_utils.convert_image, kept before anything replaces it
# (``install()``); resolved on first use otherwise.
_convert_image = common.Original('cinder.image.image_utils', 'convert_image',
                                 convert_image, variants=(convert_image_27,))
_fetch_to_volume_format = common.Original(
    'cinder.image.image_utils', 'fetch_to_volume_format',
    fetch_to_volume_format)
_upload_volume = common.Original('cinder.image.image_utils', 'upload_volume',
                                 upload_volume)
# Only in a cinder with contrib/cinder-stream-create-from-image.patch.
_download_before_volume = common.Original(
    'cinder.image.image_utils', 'download_before_volume',
    download_before_volume)
