# SPDX-License-Identifier: Apache-2.0
"""Child process of the benchmarks: run one Engine operation and print a
JSON reply on the last stdout line.

    python -m benchmarks.engine_step '{"settings": {...}, "kind": ...,
                                       "params": {...}}'

Exit status: 0 done, 1 the engine raised an error, 3 the operation is not
implemented yet.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid

from accel_daemon.engine.engine import Engine
from accel_daemon.engine.settings import Settings
from accel_daemon import exception
from accel_daemon import operations


def _settings(spec: dict) -> Settings:
    # JSON turned the tuples into lists; Settings is frozen and wants tuples.
    return Settings(**{k: tuple(v) if isinstance(v, list) else v
                       for k, v in spec.items()})


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    request = json.loads(argv[1])
    engine = Engine(_settings(request['settings']))
    # A daemon's engine is long-lived: load the drivers and probe the tools
    # (capabilities() does both) before the clock starts, so one-time
    # set-up is not charged to the operation.
    try:
        engine.capabilities()
    except NotImplementedError:
        pass
    wall, cpu = time.monotonic(), _cpu()
    try:
        result = operations.run(engine, str(uuid.uuid4()),
                                request['kind'], request['params'])
    except NotImplementedError:
        reply = {'ok': False, 'error': 'NotImplementedError',
                 'message': 'Engine %s is not implemented yet '
                            '(accel_daemon/engine/engine.py)'
                            % request['kind']}
        code = 3
    except exception.AccelError as e:
        reply = {'ok': False, 'error': type(e).__name__, 'message': str(e)}
        code = 1
    else:
        reply = {'ok': True, 'result': result,
                 'wall': time.monotonic() - wall, 'cpu': _cpu() - cpu}
        code = 0
    print(json.dumps(reply, default=str))
    return code


if __name__ == '__main__':
    sys.exit(main(sys.argv))
