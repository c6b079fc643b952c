# SPDX-License-Identifier: Apache-2.0
"""The per-request options of a task operation, as one frozen value.

A request's arguments are of two kinds.  What it works on (``src``,
``dst``, the formats) is the operation's own, and every engine function
names it.  How it works (checksum, replace, a bandwidth limit, sparse
output, a size cap, the compression driver and level, ...) passes through
several layers to the few places that act on it.  Those travel as one
``Options`` value: ``operations.run`` builds it from the validated
arguments (``split``), with the defaults of the operation table already
filled in, and the engine passes it on untouched.  Explicit keyword
arguments remain only at the public edge (``AccelClient``, ``AccelAPI``),
whose signatures are the API.

A contract module: it imports nothing of accel-daemon.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Options:
    """How one task works; each field is an argument of the operations
    that take it (``accel_daemon.operations.OPERATIONS``)."""
    # sha256 of the output (computed while writing where possible).
    checksum: bool = False
    # May publish over an existing regular file.
    replace: bool = False
    # Bytes per second the task may read (None: unlimited).
    bps_limit: int | None = None
    # Holes in the output where the input is zero.
    sparse: bool = True
    # The largest output (decompress) or virtual size (convert, download).
    max_bytes: int | None = None
    # convert: the target is known to read as zeros.
    target_is_zero: bool = False
    # convert: compressed qcow2 clusters.
    compress: bool = False
    # compress: a driver by name, a level, the format written.
    driver: str | None = None
    level: int | None = None
    format: str = 'gzip'
    # decompress, download: the compression the input must be (None: as
    # its magic bytes say).
    container: str | None = None


NAMES = frozenset(f.name for f in dataclasses.fields(Options))


def split(args: Mapping[str, Any]) -> tuple[dict[str, Any], Options]:
    """(the operation's own arguments, its ``Options``) of a request's
    validated arguments."""
    own = {k: v for k, v in args.items() if k not in NAMES}
    return own, Options(**{k: v for k, v in args.items() if k in NAMES})
