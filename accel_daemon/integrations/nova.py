# SPDX-License-Identifier: Apache-2.0
"""nova 34's qemu-img conversions, on accel-daemon.

``convert_image`` is a drop-in for ``nova.virt.images.convert_image``
(same signature); ``privsep_convert_image`` has the parameters of its
privsep twin ``nova.privsep.qemu.convert_image`` (which nova calls only
from ``nova.virt.images._convert_image``).  ``install()`` puts
``convert_image`` in place of nova's, keeping the original for the
fallbacks.

Sent to the daemon: a local file to a local file, both in the daemon's
``allowed_dirs`` (or block devices matching its ``allowed_block_devices``,
written in place), both formats known to it, with the virtual size nova
expects as ``max_bytes`` (a raw source's size, or what nova's own
``qemu_img_info`` finds, as its callers did just before), so that a source
that grew or changed since is refused before anything is written.  An
existing ``dest`` file is replaced; ``compress`` applies to qcow2 outputs
(nova's snapshot extraction converts to qcow2 with ``compress=True``).
The daemon runs privileged and inspects the source itself:
``run_as_root`` and ``instances_path`` are not used.

Everything else goes to nova's own function with the same arguments, each
reason logged once at info: no input format (nova's own refusal, a
``RuntimeError``), encryption (``src_encryption``/``dest_encryption``),
URIs, ``/dev/`` paths other than the devices the daemon allows, paths
outside the daemon's directories, formats it does not convert, a daemon
that does not answer, a source whose size nova cannot tell, and a qcow2
whose header names a backing file: the delta of a live snapshot of a
qcow2-backed instance, which nova flattens with its own qemu-img run and
which the daemon, never following a backing file, would refuse.

Errors, as nova's callers expect them from a failed qemu-img run:

* ``convert_image``: the daemon's refusals of the image raise
  ``nova.exception.ImageUnacceptable(image_id=source, reason=...)``; any
  other failure is wrapped as nova wraps qemu-img's
  ``ProcessExecutionError``: ``ImageUnacceptable`` with
  ``"Unable to convert image to FORMAT: ..."``;
* ``privsep_convert_image``: refusals raise ``ImageUnacceptable``, other
  failures ``ProcessExecutionError`` (which nova's ``_convert_image``
  wraps).

The typed accel-daemon error stays reachable as ``accel_error`` and
``__cause__``.  The daemon is called with nova's configuration
(``cfg.CONF``: its ``transport_url`` and ``[accel_daemon_client]``).
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any, Callable, Optional

from oslo_config import cfg

from accel_daemon.client import AccelClient
from accel_daemon.conf import integrations as integrations_conf
from accel_daemon import exception
from accel_daemon.integrations import common

LOG = logging.getLogger(__name__)
# The nova releases (major versions) install() switches over; they are
# tested against their real code (tools/run-caller-tests.sh).
SUPPORTED = (32, 33, 34)

# The options live in accel_daemon.conf.integrations (the
# accel_daemon.nova namespace of oslo.config.opts).
GROUP = integrations_conf.NOVA_GROUP
OPTS: list[cfg.Opt] = integrations_conf.NOVA_OPTS
register_opts = integrations_conf.register_nova_opts
list_opts = integrations_conf.list_nova_opts


_shared = common.SharedClient()
_caps_cache = common.CapsCache(LOG)
_fallback_log = common.FallbackLog(LOG, 'nova')
_fallbacks_logged: set[str] = _fallback_log.logged


# The client every call built without one uses (on nova's global
# configuration, made on first use), and how to close and forget it so that
# the next call builds a new one from the configuration as it is then.
shared_client = _shared.get
reset = _shared.reset


def original_convert_image() -> Callable[..., None]:
    """nova's own ``nova.virt.images.convert_image`` (never ours)."""
    return _convert_image.get()


def original_privsep_convert_image() -> Callable[..., None]:
    """nova's own ``nova.privsep.qemu.convert_image`` (never ours)."""
    return _privsep_convert_image.get()


def original_fetch_to_raw() -> Callable[..., None]:
    """nova's own ``nova.virt.images.fetch_to_raw`` (never ours)."""
    return _fetch_to_raw.get()


def install() -> None:
    """Replace nova's ``nova.virt.images.convert_image`` with
    ``convert_image`` and its ``fetch_to_raw`` with the streamed
    ``fetch_to_raw``, keeping the originals for the fallbacks; refused,
    changing nothing, when nova's have other parameters or nova is not a
    release in ``SUPPORTED`` (``common.Refused``)."""
    common.check_release('nova', SUPPORTED)
    common.install(_convert_image, _fetch_to_raw)


def uninstall() -> None:
    """Undo ``install()``: nova's own functions again."""
    common.uninstall(_convert_image, _fetch_to_raw)


def _capabilities(client: AccelClient) -> common.Caps:
    register_opts(client.conf)
    opts = client.conf.accel_daemon_nova
    return _caps_cache.get(client, opts.caps_cache_ttl, opts.probe_timeout)


def _refusal(source: str, dest: str, in_format: Optional[str],
             src_encryption: Any, dest_encryption: Any) -> Optional[str]:
    """nova's own reasons to keep a call, before the daemon is asked."""
    if in_format is None:
        return "no input format (nova's own refusal)"
    if src_encryption or dest_encryption:
        return 'encryption (src_encryption, dest_encryption)'
    refusal = common.local_refusal('URIs', source, dest)
    if refusal:
        return refusal
    if in_format == 'qcow2' and _names_a_backing_file(source):
        return 'a qcow2 with a backing file (a live snapshot delta)'
    return None


_QCOW2_MAGIC = b'QFI\xfb'


def _names_a_backing_file(path: str) -> bool:
    """Whether the qcow2 header of ``path`` (nova's own file, read here
    with nova's own rights) has a backing file offset.  Only a routing
    hint: an unreadable file goes to the daemon, which judges it."""
    try:
        with open(path, 'rb') as f:
            head = f.read(16)
    except OSError:
        return False
    return (len(head) == 16 and head[:4] == _QCOW2_MAGIC
            and int.from_bytes(head[8:16], 'big') != 0)


def _plan(source: str, dest: str, in_format: Optional[str],
          out_format: str, compress: bool, src_encryption: Any,
          dest_encryption: Any) -> tuple[AccelClient, dict[str, Any]]:
    """The client and convert() arguments, or raise common.Fallback."""
    refusal = _refusal(source, dest, in_format, src_encryption,
                       dest_encryption)
    if refusal:
        raise _fallback_log.fallback(refusal)
    assert in_format is not None
    client = shared_client()
    refusal = common.daemon_refusal(_capabilities(client), source, dest,
                                    in_format, out_format)
    if refusal:
        raise _fallback_log.fallback(refusal)
    args = common.convert_args(source, dest, in_format, out_format,
                               compress)
    args['max_bytes'] = _expected_size(source, in_format)
    return client, args


def _expected_size(source: str, in_format: str) -> int:
    """The virtual size nova accepts for ``source``: a raw file's size, or
    what nova's own (unprivileged, resource-limited) ``qemu_img_info``
    finds, as nova's callers did just before; raise common.Fallback when
    nova cannot tell."""
    if in_format.lower() == 'raw':
        size = common.source_bytes(source)
    else:
        from nova.virt import images
        try:
            size = common.virtual_size(
                images.qemu_img_info(source, format=in_format))
        except Exception as e:
            LOG.debug('nova cannot inspect %s: %s', source, e)
            size = None
    if size is None:
        raise _fallback_log.fallback(
            "no expected size (nova's qemu_img_info cannot tell it)")
    return size


def _convert_error(err: exception.AccelError, args: dict[str, Any],
                   wrap: bool) -> Exception:
    """nova's error for ``err``: ImageUnacceptable for a refusal; else a
    ProcessExecutionError, wrapped in ImageUnacceptable as nova's
    ``_convert_image`` does when ``wrap``."""
    from nova import exception as nova_exception
    error: Exception
    if isinstance(err, common.REFUSALS):
        error = nova_exception.ImageUnacceptable(image_id=args['src'],
                                                 reason=str(err))
    elif wrap:
        msg = 'Unable to convert image to %(format)s: %(exp)s' % {
            'format': args['dst_format'],
            'exp': common.process_error(err, args)}
        error = nova_exception.ImageUnacceptable(image_id=args['src'],
                                                 reason=msg)
    else:
        error = common.process_error(err, args)
    error.accel_error = err     # type: ignore[attr-defined]
    return error


def _run(client: AccelClient, args: dict[str, Any], wrap: bool) -> None:
    common.run_task(lambda: client.convert(**args),
                    lambda err: _convert_error(err, args, wrap))


def convert_image(source: str, dest: str, in_format: Optional[str],
                  out_format: str, run_as_root: bool = False,
                  compress: bool = False, src_encryption: Any = None,
                  dest_encryption: Any = None) -> None:
    """nova 34's ``nova.virt.images.convert_image``, in accel-daemon (see
    the module's docstring for what goes where).

    :raises ImageUnacceptable: the daemon refused the image, or the
        conversion failed (as nova wraps a failed qemu-img run)
    """
    try:
        client, args = _plan(source, dest, in_format, out_format, compress,
                             src_encryption, dest_encryption)
    except common.Fallback:
        return original_convert_image()(
            source, dest, in_format, out_format, run_as_root=run_as_root,
            compress=compress, src_encryption=src_encryption,
            dest_encryption=dest_encryption)
    _run(client, args, wrap=True)


def privsep_convert_image(source: str, dest: str, in_format: Optional[str],
                          out_format: str, instances_path: str,
                          compress: bool, src_encryption: Any = None,
                          dest_encryption: Any = None) -> None:
    """nova 34's ``nova.privsep.qemu.convert_image``, in accel-daemon.

    :raises ImageUnacceptable: the daemon refused the image
    :raises ProcessExecutionError: any other failure of the conversion
    """
    try:
        client, args = _plan(source, dest, in_format, out_format, compress,
                             src_encryption, dest_encryption)
    except common.Fallback:
        return original_privsep_convert_image()(
            source, dest, in_format, out_format, instances_path, compress,
            src_encryption=src_encryption, dest_encryption=dest_encryption)
    _run(client, args, wrap=False)


# -- fetch_to_raw ------------------------------------------------------------

# Formats nova treats as raw after its inspection (fetch_to_raw's
# do_image_deep_inspection): left to nova.
_NOVA_RAW_ALIASES = ('iso', 'ami', 'aki', 'ari')


def _fetch_plan(context: Any, image_href: str,
                path: str) -> tuple[AccelClient, dict[str, Any], Any]:
    """The client, the stream_in() arguments and nova's image API of a
    fetch, or raise common.Fallback."""
    from nova import conf as nova_conf
    from nova.virt import images
    conf = nova_conf.CONF
    client = shared_client()
    register_opts(client.conf)
    if not client.conf.accel_daemon_nova.stream_images:
        raise _fallback_log.fallback(
            '[accel_daemon_nova] stream_images = False')
    if conf.workarounds.disable_deep_image_inspection:
        raise _fallback_log.fallback(
            '[workarounds] disable_deep_image_inspection (nova lets '
            'qemu-img guess the format; accel-daemon never does)')
    if conf.glance.enable_rbd_download:
        raise _fallback_log.fallback(
            '[glance] enable_rbd_download (nova reads the image from RBD '
            'itself)')
    refusal = common.local_refusal('URIs', path)
    if refusal:
        raise _fallback_log.fallback(refusal)
    # Where the image goes, before glance is asked what it is (nova's own
    # path asks again).
    caps = _capabilities(client)
    refusal = (common.daemon_refusal(caps, path, path, 'raw', 'raw')
               or common.stream_refusal(caps))
    if refusal:
        raise _fallback_log.fallback(refusal)
    image_api = images.IMAGE_API
    img = image_api.get(context, image_href)
    disk_format = img.get('disk_format')
    if not isinstance(disk_format, str) or disk_format in _NOVA_RAW_ALIASES:
        raise _fallback_log.fallback(
            'a disk_format nova reads as raw (%s)' % disk_format)
    if img.get('container_format') not in (None, 'bare'):
        raise _fallback_log.fallback(
            'a container_format other than bare (%s)'
            % img.get('container_format'))
    out_format = 'raw' if conf.force_raw_images else disk_format
    assert caps is not None       # daemon_refusal said so
    if not common.formats_known(caps, disk_format, out_format):
        raise _fallback_log.fallback('a format accel-daemon does not '
                                     'convert')
    return client, {
        'dst': path, 'disk_format': disk_format, 'dst_format': out_format,
        'replace': os.path.lexists(path)}, image_api


def _fetch_error(err: exception.AccelError, image_href: str) -> Exception:
    from nova import exception as nova_exception
    error: Exception
    if isinstance(err, common.REFUSALS):
        error = nova_exception.ImageUnacceptable(image_id=image_href,
                                                 reason=str(err))
    else:
        # A write that failed, as nova's own download would report it.
        error = OSError(errno.EIO, 'accel-daemon could not write image '
                        '%s: %s: %s' % (image_href, type(err).__name__, err))
    error.accel_error = err     # type: ignore[attr-defined]
    return error


def fetch_to_raw(context: Any, image_href: str, path: str,
                 trusted_certs: Any = None) -> None:
    """nova 34's ``nova.virt.images.fetch_to_raw``, streamed: nova's own
    ``IMAGE_API.download(..., data=writer)`` (inside nova's
    ``disk_ops_semaphore``, with nova's signature verification and
    glanceclient's hash check) writes the image into an accel-daemon
    ``stream_in`` task, which inspects its start before writing anything
    (the claimed ``disk_format`` must be what it is, and safe), writes a
    raw image straight to ``path`` (a qcow2 through one unnamed stage,
    converted to raw when ``force_raw_images``) and publishes ``path``
    only once the download completed and its checks passed.  No
    ``path.part`` or ``path.converted`` is ever named.

    nova's own function runs, with the same arguments, each reason logged
    once: ``[accel_daemon_nova] stream_images = False``, ``[workarounds]
    disable_deep_image_inspection``, ``[glance] enable_rbd_download``, a
    ``disk_format`` nova reads as raw (iso, ami, aki, ari), a container
    other than bare, a path or format the daemon does not take, and a
    daemon that does not answer, is older than API 1.5 or whose stream
    sockets nova-compute's user may not reach.

    :raises ImageUnacceptable: the daemon refused the image
    :raises OSError: (EIO) the daemon could not write the image
    """
    try:
        client, args, image_api = _fetch_plan(context, image_href, path)
    except common.Fallback:
        return original_fetch_to_raw()(context, image_href, path,
                                       trusted_certs=trusted_certs)
    from nova.compute import utils as compute_utils
    try:
        writer = client.stream_in(**args)
    except exception.ServiceUnavailable:
        # Gone since it answered: nothing started, nova's own path runs.
        _fallback_log('a daemon that did not take the stream')
        return original_fetch_to_raw()(context, image_href, path,
                                       trusted_certs=trusted_certs)
    except exception.AccelError as e:
        raise _fetch_error(e, image_href) from e
    with compute_utils.disk_ops_semaphore:
        try:
            image_api.download(context, image_href, data=writer,
                               trusted_certs=trusted_certs)
        except exception.AccelError as e:
            writer.abort('%s: %s' % (type(e).__name__, e))
            raise _fetch_error(e, image_href) from e
        except BaseException as e:
            # nova's failure (signature, glanceclient's hash, the
            # download): nothing is published.
            writer.abort('%s: %s' % (type(e).__name__, e))
            if writer.error is not None:
                raise _fetch_error(writer.error, image_href) from e
            raise
        try:
            writer.close()
        except exception.AccelError as e:
            raise _fetch_error(e, image_href) from e


# nova's own functions, kept before anything replaces them; resolved on
# first use otherwise.
_convert_image = common.Original('nova.virt.images', 'convert_image',
                                 convert_image)
_privsep_convert_image = common.Original(
    'nova.privsep.qemu', 'convert_image', privsep_convert_image)
_fetch_to_raw = common.Original('nova.virt.images', 'fetch_to_raw',
                                fetch_to_raw)
