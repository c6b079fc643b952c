# SPDX-License-Identifier: Apache-2.0
"""A synthetic test volume with a realistic mix of content, for the caller
benchmarks (``benchmarks/cinder_flows.py``).

The raw file is made of 16 MiB stripes, each laid out as:

* 4 MiB of pseudo-random bytes (incompressible: encrypted or already
  compressed data),
* 6 MiB of text-like data: generated log lines (timestamps, host and
  service names, request ids, volume ids, words), a window of an 8 MiB
  pool taken at a pseudo-random offset per stripe,
* 2 MiB of zeros that are written (allocated zero blocks),
* 4 MiB left as a hole (never written: sparse).

So 25% random, 37.5% text, 12.5% allocated zeros and 25% holes.  The
content is a function of the size and the seed only (Python's ``random``
with a fixed seed), so every run and every host builds the same bytes.

Standard library only: it runs in any venv.
"""

from __future__ import annotations

import hashlib
import json
import os
import random

MiB = 1024 * 1024
STRIPE = 16 * MiB
RANDOM = 4 * MiB
TEXT = 6 * MiB
ZEROS = 2 * MiB
POOL = 8 * MiB
SEED = 20261201
# Bump when the layout or the generator changes: cached volumes rebuild.
VERSION = 1

LAYOUT = ('16 MiB stripes: 4 MiB pseudo-random, 6 MiB generated log-like '
          'text, 2 MiB written zeros, 4 MiB hole (25% random, 37.5% text, '
          '12.5% zeros, 25% sparse)')

_WORDS = ('volume snapshot attach detach image upload download backup '
          'restore migrate retype extend create delete manage unmanage '
          'replicate failover connector iscsi target lun portal initiator '
          'multipath scheduler capacity pool backend driver status '
          'available in-use error deleting creating reserved').split()
_SERVICES = ('cinder-volume', 'cinder-scheduler', 'nova-compute',
             'glance-api', 'os-brick', 'libvirtd')
_LEVELS = ('DEBUG', 'DEBUG', 'DEBUG', 'INFO', 'INFO', 'WARNING', 'ERROR')


def _text_pool(rng: random.Random) -> bytes:
    """POOL bytes of log-like lines."""
    lines = []
    size = 0
    t = 1764547200.0
    while size < POOL:
        t += rng.random() * 0.2
        ms = int((t % 1) * 1000)
        line = '%s.%03d %d %s %s [req-%032x] %s %08x-%04x: %s\n' % (
            _stamp(int(t)), ms, rng.randrange(1000, 65536),
            rng.choice(_LEVELS), rng.choice(_SERVICES),
            rng.getrandbits(128), rng.choice(_WORDS),
            rng.getrandbits(32), rng.getrandbits(16),
            ' '.join(rng.choice(_WORDS)
                     for _ in range(rng.randrange(3, 14))))
        data = line.encode()
        lines.append(data)
        size += len(data)
    return b''.join(lines)[:POOL]


def _stamp(t: int) -> str:
    days, rest = divmod(t, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return '2026-%02d-%02dT%02d:%02d:%02d' % (
        1 + (days // 28) % 12, 1 + days % 28, h, m, s)


def write(path: str, size: int, seed: int = SEED) -> None:
    """Write the volume (``size`` bytes, a multiple of 16 MiB)."""
    if size <= 0 or size % STRIPE:
        raise ValueError('size must be a positive multiple of 16 MiB')
    rng = random.Random(seed)
    pool = _text_pool(rng)
    doubled = pool + pool
    zeros = bytes(ZEROS)
    tmp = path + '.part'
    with open(tmp, 'wb') as f:
        f.truncate(size)
        for base in range(0, size, STRIPE):
            f.seek(base)
            f.write(rng.randbytes(RANDOM))
            start = rng.randrange(POOL)
            f.write(doubled[start:start + TEXT])
            f.write(zeros)
            # The last 4 MiB of the stripe stay a hole.
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb', buffering=0) as f:
        while True:
            chunk = f.read(4 * MiB)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)


def build(directory: str, size: int) -> tuple[str, str]:
    """The volume of ``size`` bytes in ``directory`` (built once, then
    reused while its stamp matches); returns (path, sha256)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, 'mixed-%dm.raw' % (size // MiB))
    stamp_path = path + '.stamp.json'
    want = {'version': VERSION, 'size': size, 'seed': SEED}
    try:
        with open(stamp_path) as f:
            stamp = json.load(f)
        if {k: stamp.get(k) for k in want} == want and \
                os.path.getsize(path) == size:
            return path, stamp['sha256']
    except (OSError, ValueError, KeyError):
        pass
    write(path, size)
    digest = sha256(path)
    with open(stamp_path, 'w') as f:
        json.dump(dict(want, sha256=digest), f)
    return path, digest
