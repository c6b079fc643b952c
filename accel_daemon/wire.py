# SPDX-License-Identifier: Apache-2.0
"""Values crossing a process boundary: the privsep channel, RPC and the
task journal carry only plain JSON types (dict, list, str, int, float,
bool, None).

``to_plain`` is the one conversion every layer uses on the way out
(privsep turns lists into tuples; results may hold tuples, bytes or paths).
Errors cross as ``AccelError.to_dict()`` and come back with
``AccelError.from_dict()`` (``accel_daemon.exception``), whose fields are
made plain here too.
"""

from __future__ import annotations

import json
from typing import Any


def to_plain(value: Any) -> Any:
    """A deep copy of ``value`` made of JSON types only."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode('utf-8', 'replace')
    return str(value)


def copy_plain(value: Any) -> Any:
    """A deep copy of a value already made of JSON types (a JSON round
    trip: cheap, and it guarantees no mutable state is shared)."""
    return json.loads(json.dumps(value))
