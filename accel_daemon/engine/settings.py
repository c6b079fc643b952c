# SPDX-License-Identifier: Apache-2.0
"""Plain settings handed to the engine (built from oslo.config elsewhere)."""

from __future__ import annotations

import dataclasses
import os

DEFAULT_DRIVERS = ('qat', 'isal', 'igzip', 'pigz', 'gzip')


@dataclasses.dataclass(frozen=True)
class Scope:
    """What one caller (``[caller:NAME]`` of the daemon's configuration)
    may name: its own directories and block-device patterns, each inside
    the host's ``allowed_dirs`` / ``allowed_block_devices``."""
    name: str
    allowed_dirs: tuple[str, ...]
    allowed_block_devices: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Settings:
    # Directories every input and output must resolve under.
    allowed_dirs: tuple[str, ...] = ('/var/lib/accel-daemon/images',)
    # fnmatch patterns of block devices that may be read or written.
    allowed_block_devices: tuple[str, ...] = ()
    # Directories holding oslo.rootwrap-style filter files.
    filters_path: tuple[str, ...] = ('/etc/accel-daemon/rootwrap.d',)
    # Where executables are looked up (like rootwrap's exec_dirs).
    exec_dirs: tuple[str, ...] = ('/usr/local/bin', '/usr/bin', '/bin',
                                  '/usr/sbin', '/sbin')
    # Compression drivers in order of preference; the first available wins.
    drivers: tuple[str, ...] = DEFAULT_DRIVERS
    # Whether a software driver may be used when no hardware one is found.
    allow_software_fallback: bool = True
    compression_level: int = 1
    compression_threads: int = max(1, os.cpu_count() or 1)
    chunk_size: int = 4 * 1024 * 1024
    # Decompressed output may never exceed this many bytes (the cap when a
    # request gives no max_bytes).
    max_decompressed_bytes: int = 1024 ** 4
    # Largest virtual size of an image that may be converted or written.
    max_image_bytes: int = 1024 ** 4
    # Wall-clock limit of every external command, seconds (None: none).
    command_timeout: float | None = 3 * 3600.0
    # The lowest bps_limit a request may ask for (bytes per second).
    min_bps_limit: int = 1024 * 1024
    # System user the external tools run as (None: as this process).
    tool_user: str | None = None
    # Every tool in a Landlock domain (engine.landlock); refused without it.
    confine_tools: bool = True
    # What the confined tools may also read and write (device nodes).
    tool_extra_paths: tuple[str, ...] = ()
    # Limits for "qemu-img info" on untrusted input.
    info_cpu_seconds: int = 30
    info_address_space: int = 1024 ** 3
    # qemu-img convert -m (parallel coroutines).
    convert_coroutines: int = 16
    # Root of sysfs (tests point this at a fake tree).
    sysfs_root: str = '/sys'
    # Mode of every file accel-daemon creates.
    output_file_mode: int = 0o640
    # Where outputs are made when their directory has no O_TMPFILE (a
    # private local directory; engine.files); None refuses such outputs.
    staging_dir: str | None = None
    # The callers and what each may name; empty: one caller, the host's
    # allowed_dirs and allowed_block_devices.
    callers: tuple[Scope, ...] = ()
    # Image streams (engine.streams): where their sockets go, the group
    # that may enter there, who may connect (user and group names; both
    # empty: nobody), how long a stream may idle and last, and how many
    # may run at once.
    stream_dir: str = '/run/accel-daemon/streams'
    stream_group: str | None = None
    stream_users: tuple[str, ...] = ()
    stream_groups: tuple[str, ...] = ()
    stream_idle_timeout: float = 60.0
    stream_total_timeout: float = 3 * 3600.0
    max_streams: int = 8

    def scope(self, caller: str | None) -> Scope | None:
        """What ``caller`` may name (None: the host's whole envelope);
        None when no caller of that name is configured."""
        if caller is None:
            return Scope('', self.allowed_dirs, self.allowed_block_devices)
        return next((s for s in self.callers if s.name == caller), None)
