# SPDX-License-Identifier: Apache-2.0
"""The records that cross the layers, each defined once.

A task, its result, its error and the daemon's capabilities travel as plain
JSON dicts: through the privsep channel, over RPC, into the task journal
and out of ``accel-image``.  These ``TypedDict`` s name their keys and
types for every layer that builds or reads one (the engine, the privileged
layer, the task manager and its journal, the RPC layer, the client and the
command line), so the shape is written here and nowhere else.  At run time
they are ordinary dicts: nothing on the wire changes.

A contract module: it imports nothing of accel-daemon, so the client that
cinder and nova import can use it.

The shape of a task (``Task``)::

    id                 str, a lower-case UUID
    kind               str, the operation's name (``accel_daemon.operations``;
                       "kind" because RPC API 1.0 named it so)
    state              str, one of ``accel_daemon.states.STATES``:
                       queued | running | succeeded | failed | cancelled
    params             dict, the operation's arguments as validated by the
                       daemon (defaults are filled in later, by the run)
    progress           TaskProgress: {'done': int, 'total': int} bytes
    result             Result of a succeeded task, else None
    error              TaskError of a failed or cancelled task, else None
    created_at         float epoch seconds
    started_at         float epoch seconds, or None while queued
    finished_at        float epoch seconds, or None while active
    request_id         str | None: the ids of the call that created the
    global_request_id  task (``accel_daemon.request_ids``); a daemon
                       older than request ids sends neither key, so a
                       client reads them with ``.get()``
    caller             str | None: the name of the caller that made the
                       task (``[caller:NAME]`` of the daemon), None on a
                       daemon that serves one caller; an older daemon
                       sends no key
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class TaskProgress(TypedDict):
    """Bytes done out of bytes expected (``total`` 0: not known yet)."""

    done: int
    total: int


class TaskError(TypedDict):
    """An error as it crosses a boundary: ``AccelError.to_dict()``, rebuilt
    as the same class by ``AccelError.from_dict()``
    (``accel_daemon.exception``)."""

    type: str
    message: str
    fields: dict[str, Any]


class Result(TypedDict, total=False):
    """What a task operation returns, as ``operations.run`` hands it on.

    Every result has ``output`` (the path asked for), ``size`` (bytes of
    the output; the virtual size for a block device), ``sha256`` (hex, or
    None when not asked for or for a device), ``engine`` (what did the
    work: a driver's name, ``qemu-img``...), ``hardware`` (whether hardware
    did it), ``wall_seconds`` and ``cpu_seconds``.  The other keys belong
    to some operations only.  ``total=False`` because the engine builds a
    result in steps (the copy loop's figures first, ``output`` last).
    """

    output: str
    size: int
    sha256: str | None
    engine: str
    hardware: bool
    wall_seconds: float
    cpu_seconds: float
    # compress, decompress, convert: the format written.
    format: str
    # compress, decompress, copy, download: bytes read and written.
    bytes_in: int
    bytes_out: int
    # convert, upload, download: the image's virtual size.
    virtual_size: int
    # convert: qemu-img's cache modes of the output and the source.
    cache_mode: str
    source_cache_mode: str
    # upload (format inside the gzip), download (the claimed format).
    disk_format: str
    # upload: whether the image was converted before it was compressed.
    converted: bool
    # download: what decompressed the image.
    decompress_engine: str | None
    decompress_hardware: bool


class DriverInfo(TypedDict):
    """One compression driver in ``Capabilities``."""

    name: str
    available: bool
    reason: str | None      # why it is not available
    hardware: bool
    format: str             # what it writes: gzip or zstd
    version: str | None


class Formats(TypedDict):
    """The image formats ``convert`` reads and writes."""

    input: list[str]
    output: list[str]


class Capabilities(TypedDict):
    """The answer of ``capabilities``."""

    drivers: list[DriverInfo]
    default_driver: str | None     # None: no driver available
    hardware: bool                 # any hardware driver available
    tools: dict[str, str]          # tool name -> version
    formats: Formats
    allowed_dirs: list[str]
    # Callers route a /dev path to the daemon only when it matches one.
    allowed_block_devices: list[str]
    # 1.5: the API version the daemon serves, and the directory of its
    # image streams' sockets (None: streams are off).  An older daemon
    # sends neither.
    api_version: NotRequired[str]
    streams: NotRequired[str | None]


class Task(TypedDict):
    """One task; the module's docstring describes each key."""

    id: str
    kind: str
    state: str
    params: dict[str, Any]
    progress: TaskProgress
    result: Result | None
    error: TaskError | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    request_id: str | None
    global_request_id: str | None
    caller: str | None
