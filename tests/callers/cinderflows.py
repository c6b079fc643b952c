# SPDX-License-Identifier: Apache-2.0
"""What the cinder flow tests share: cinder's configuration for a real
accel-daemon, and a small image service.

cinder's ``image_utils`` is used as cinder-volume uses it, on cinder's
global configuration (``cfg.CONF``) parsed from a cinder.conf written here:
``image_conversion_dir`` inside the daemon's allowed directory, compressed
containers allowed, the daemon in ``[accel_daemon_client]``, and cinder's
own privsep helper (``[cinder_sys_admin] helper_command``: the venv's
``privsep-helper``, run directly since the tests run as root, where a host
runs it through ``sudo cinder-rootwrap``).  cinder's ``qemu-img info``
calls run as root without rootwrap for the same reason (oslo.concurrency
adds the root helper only for other users).

Only the image service is a stand-in (``ImageService``): it keeps images
and uploads in memory and offers the three calls ``image_utils`` makes of
``glance.GlanceImageService`` (show, download, update).
"""

from __future__ import annotations

import os
import uuid

from oslo_config import cfg

# Registers the options of image_utils (image_conversion_dir...) on CONF.
from cinder.image import image_utils  # noqa: F401

from accel_daemon.integrations import cinder as integration
import realdaemon

CONF = cfg.CONF
MIB = realdaemon.MIB
GZIP_MAGIC = b'\x1f\x8b'


class ImageService:
    """The calls cinder's image_utils makes of its image service."""

    def __init__(self) -> None:
        self.images: dict[str, tuple[dict, bytes]] = {}
        self.uploads: dict[str, bytes] = {}
        # Read by image_utils.TemporaryImages.for_image_service.
        self.temp_images = None

    def add(self, data: bytes, disk_format: str,
            container_format: str = 'bare') -> str:
        image_id = str(uuid.uuid4())
        self.images[image_id] = ({
            'id': image_id, 'status': 'active', 'size': len(data),
            'disk_format': disk_format,
            'container_format': container_format}, data)
        return image_id

    def show(self, context, image_id):
        return dict(self.images[image_id][0])

    def download(self, context, image_id, data=None):
        data.write(self.images[image_id][1])

    def update(self, context, image_id, image_meta, data=None,
               store_id=None, base_image_ref=None):
        chunks = []
        while True:
            chunk = data.read(MIB)
            if not chunk:
                break
            chunks.append(chunk)
        self.uploads[image_id] = b''.join(chunks)
        return {'id': image_id}


def configure(daemon: realdaemon.Daemon, accel_cinder=None,
              timeout: int = 5, **default) -> str:
    """Parse cinder's CONF from a cinder.conf for ``daemon`` (``default``
    in [DEFAULT], ``accel_cinder`` in [accel_daemon_cinder], an RPC
    ``timeout`` in [accel_daemon_client]) and make the integration's next
    call use it.  Returns the conversion directory."""
    conversion = os.path.join(daemon.images, 'conversion')
    os.makedirs(conversion, exist_ok=True)
    path = os.path.join(daemon.root, 'cinder.conf')
    options = {'image_conversion_dir': conversion,
               'allow_compression_on_image_upload': True,
               'state_path': os.path.join(daemon.root, 'cinder-state')}
    options.update(default)
    daemon.service_conf(path, options, {
        'oslo_concurrency': {
            'lock_path': os.path.join(daemon.root, 'locks')},
        'cinder_sys_admin': {
            'helper_command': '%s --config-file %s' % (
                os.path.join(realdaemon.BIN, 'privsep-helper'), path)},
        'accel_daemon_cinder': accel_cinder or {},
    }, timeout=timeout)
    CONF(['--config-file', path], project='cinder',
         default_config_files=[])
    integration.reset()
    return conversion


def write(path: str, data: bytes) -> str:
    with open(path, 'wb') as f:
        f.write(data)
    return path


def read(path: str) -> bytes:
    with open(path, 'rb') as f:
        return f.read()


def new_tasks(daemon: realdaemon.Daemon, before: set) -> list[dict]:
    """The daemon's tasks not in ``before`` (ids), oldest first."""
    tasks = [t for t in daemon.task_states() if t['id'] not in before]
    return sorted(tasks, key=lambda t: t.get('created_at') or 0)


def task_ids(daemon: realdaemon.Daemon) -> set:
    return {t['id'] for t in daemon.task_states()}
