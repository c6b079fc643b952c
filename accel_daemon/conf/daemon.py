# SPDX-License-Identifier: Apache-2.0
"""The daemon's option groups, and the engine's ``Settings`` made of them.

``accel_daemon.conf.register_opts`` and ``accel_daemon.conf.settings``
call these: they are kept apart from the package's ``__init__`` because
every import of a module of this package runs that file first, and the
client's ``accel_daemon.conf.client`` must not bring these groups (nor
``accel_daemon.engine.settings``) into cinder-volume and nova-compute.
"""

from __future__ import annotations

from oslo_config import cfg

from accel_daemon.conf import accel
from accel_daemon.conf import callers
from accel_daemon.conf import compression
from accel_daemon.conf import manager
from accel_daemon.conf import qemu_img
from accel_daemon.conf import rpc
from accel_daemon.conf import streams
from accel_daemon.engine.settings import Settings

_MODULES = (accel, compression, qemu_img, manager, rpc, streams)


def register_opts(conf: cfg.ConfigOpts) -> None:
    for module in _MODULES:
        module.register_opts(conf)


def settings(conf: cfg.ConfigOpts) -> Settings:
    a, c, q = conf.accel_daemon, conf.compression, conf.qemu_img
    return Settings(
        allowed_dirs=tuple(a.allowed_dirs),
        allowed_block_devices=tuple(a.allowed_block_devices),
        filters_path=tuple(a.filters_path),
        exec_dirs=tuple(a.exec_dirs),
        output_file_mode=int(a.output_file_mode, 8),
        staging_dir=a.staging_dir or None,
        command_timeout=float(a.command_timeout) or None,
        min_bps_limit=a.min_bps_limit,
        max_image_bytes=a.max_image_gib * 1024 ** 3,
        tool_user=a.tool_user or None,
        confine_tools=a.confine_tools,
        tool_extra_paths=tuple(a.tool_extra_paths),
        drivers=tuple(c.drivers),
        allow_software_fallback=c.allow_software_fallback,
        compression_level=c.level,
        compression_threads=c.threads or Settings.compression_threads,
        chunk_size=c.chunk_size_mib * 1024 * 1024,
        max_decompressed_bytes=c.max_decompressed_gib * 1024 ** 3,
        sysfs_root=c.sysfs_root,
        info_cpu_seconds=q.info_cpu_seconds,
        info_address_space=q.info_address_space_mib * 1024 * 1024,
        convert_coroutines=q.convert_coroutines,
        callers=callers.scopes(conf),
        stream_dir=conf.streams.socket_dir,
        stream_group=conf.streams.group or None,
        stream_users=tuple(conf.streams.allowed_users),
        stream_groups=tuple(conf.streams.allowed_groups),
        stream_idle_timeout=float(conf.streams.idle_timeout),
        stream_total_timeout=float(conf.streams.total_timeout),
        max_streams=conf.streams.max_streams,
    )
