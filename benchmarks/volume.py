# SPDX-License-Identifier: Apache-2.0
"""Build the reference benchmark volume: a sparse raw ext4 image plus a qcow2.

The volume imitates a real cinder volume: an ext4 file system of
``size_gib`` GiB virtual size holding ``data_gb`` GB of real files
(binaries, libraries, text) taken from this host's system directories, so
about a third of it is allocated and the rest are holes.

Reproducible: files are picked by a sorted walk of fixed roots, balanced by
bytes across the roots, and copied into a staging tree with fixed modes and
times; ``mkfs.ext4 -d`` then lays them out with a fixed UUID and hash seed.
Two builds on the same host give the same layout and data (only inode ctimes
differ: mke2fs 1.47.0 stamps them with the current time).

The result is cached: a stamp file records the parameters and a rebuild is
skipped while it matches.

    python -m benchmarks.volume --size-gib 8 --data-gb 3
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from typing import Iterator

LOG = logging.getLogger(__name__)

# Bump when the way the volume is built changes: old caches are rebuilt.
BUILD_VERSION = 1
DEFAULT_WORKDIR = '/var/tmp/accel-bench'
# Roots are walked in this order and drained in turn by bytes taken, so the
# volume gets a mix of executables, shared libraries, headers and text even
# though /usr/lib alone could fill it.
ROOTS = ('/usr/bin', '/usr/sbin', '/usr/libexec', '/usr/lib/x86_64-linux-gnu',
         '/usr/include', '/usr/share', '/usr/lib', '/etc')
# Skip huge single files (JDK modules, libLLVM): they would dominate a
# few-GB volume and make its content depend on one package.
MAX_FILE_BYTES = 64 * 1024 ** 2
# __pycache__ appears and changes whenever someone runs Python as root.
SKIP_DIRS = frozenset({'__pycache__'})
FIXED_TIME = 1_700_000_000
FS_UUID = '0b8a3f5e-5eed-4a11-8ce1-acce10000001'


@dataclasses.dataclass(frozen=True)
class Volume:
    raw: str
    qcow2: str
    size_bytes: int       # virtual size
    data_bytes: int       # bytes of files copied in
    allocated_bytes: int  # bytes the raw image really occupies
    files: int


def volume_name(size_gib: float, data_gb: float) -> str:
    return 'volume-%gg-%ggb' % (size_gib, data_gb)


def _walk(root: str, max_bytes: int = MAX_FILE_BYTES
          ) -> Iterator[tuple[str, os.stat_result]]:
    """Regular files under ``root`` in sorted order (no symlinks)."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            if entry.name not in SKIP_DIRS:
                yield from _walk(entry.path, max_bytes)
        elif stat.S_ISREG(st.st_mode) and 0 < st.st_size <= max_bytes:
            yield entry.path, st


def select_files(target_bytes: int, roots: tuple[str, ...] = ROOTS,
                 max_bytes: int = MAX_FILE_BYTES) -> list[tuple[str, int]]:
    """Pick files until ``target_bytes``: always from the root that has
    given the fewest bytes so far, each inode once."""
    walkers = {root: _walk(root, max_bytes) for root in roots
               if os.path.isdir(root)}
    taken = {root: 0 for root in walkers}
    seen: set[tuple[int, int]] = set()
    chosen: list[tuple[str, int]] = []
    total = 0
    while total < target_bytes and walkers:
        root = min(walkers, key=lambda r: (taken[r], roots.index(r)))
        item = next(walkers[root], None)
        if item is None:
            del walkers[root]
            continue
        path, st = item
        if (st.st_dev, st.st_ino) in seen or not os.access(path, os.R_OK):
            continue
        seen.add((st.st_dev, st.st_ino))
        chosen.append((path, st.st_size))
        taken[root] += st.st_size
        total += st.st_size
    if total < target_bytes:
        LOG.warning('only %d bytes of files found, wanted %d',
                    total, target_bytes)
    return chosen


def manifest_digest(files: list[tuple[str, int]]) -> str:
    h = hashlib.sha256()
    for path, size in files:
        h.update(b'%s %d\n' % (path.encode(), size))
    return h.hexdigest()


def stage(files: list[tuple[str, int]], staging: str) -> int:
    """Copy ``files`` under ``staging`` with fixed modes and times."""
    shutil.rmtree(staging, ignore_errors=True)
    copied = 0
    for path, _ in files:
        dest = os.path.join(staging, path.lstrip('/'))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        try:
            shutil.copyfile(path, dest)
        except OSError as e:  # vanished or unreadable since the walk
            LOG.warning('skipping %s: %s', path, e)
            continue
        mode = 0o755 if os.stat(path).st_mode & 0o111 else 0o644
        os.chmod(dest, mode)
        os.utime(dest, (FIXED_TIME, FIXED_TIME))
        copied += os.path.getsize(dest)
    for dirpath, _, _ in os.walk(staging, topdown=False):
        os.chmod(dirpath, 0o755)
        os.utime(dirpath, (FIXED_TIME, FIXED_TIME))
    return copied


def mkfs_cmd(image: str, staging: str) -> list[str]:
    """mkfs.ext4 that fills ``image`` from ``staging`` without mounting.

    lazy_itable_init=0 and lazy_journal_init=0 write the metadata now, as a
    volume that has been in use would have it; the fixed UUID and hash seed
    make the layout repeatable.
    """
    return ['mkfs.ext4', '-q', '-F', '-U', FS_UUID,
            '-E', 'lazy_itable_init=0,lazy_journal_init=0,hash_seed=%s,'
                  'root_owner=0:0' % FS_UUID,
            '-d', staging, image]


def qcow2_cmd(raw: str, qcow2: str) -> list[str]:
    return ['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]


def _params(size_gib: float, data_gb: float) -> dict:
    return {'size_gib': size_gib, 'data_gb': data_gb,
            'roots': list(ROOTS), 'max_file_bytes': MAX_FILE_BYTES,
            'build_version': BUILD_VERSION}


def _read_stamp(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def build(workdir: str = DEFAULT_WORKDIR, size_gib: float = 8,
          data_gb: float = 3, rebuild: bool = False,
          keep_staging: bool = False) -> Volume:
    """Return the cached volume for these parameters, building it if the
    stamp is missing or different."""
    images = os.path.join(workdir, 'images')
    os.makedirs(images, exist_ok=True)
    name = volume_name(size_gib, data_gb)
    raw = os.path.join(images, name + '.raw')
    qcow2 = os.path.join(images, name + '.qcow2')
    stamp_path = os.path.join(images, name + '.stamp.json')
    stamp = _read_stamp(stamp_path)
    params = _params(size_gib, data_gb)
    if (not rebuild and stamp and stamp.get('params') == params
            and os.path.exists(raw) and os.path.exists(qcow2)):
        LOG.info('reusing %s (stamp matches)', raw)
        return _volume(raw, qcow2, stamp)
    if os.path.exists(stamp_path):
        os.unlink(stamp_path)  # an interrupted rebuild must not look valid
    stamp = _build(workdir, raw, qcow2, size_gib, data_gb, keep_staging)
    tmp = stamp_path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(stamp, f, indent=1)
    os.replace(tmp, stamp_path)
    return _volume(raw, qcow2, stamp)


def _build(workdir: str, raw: str, qcow2: str, size_gib: float,
           data_gb: float, keep_staging: bool) -> dict:
    started = time.monotonic()
    files = select_files(int(data_gb * 1e9))
    staging = os.path.join(workdir, 'staging')
    LOG.info('copying %d files into %s', len(files), staging)
    data = stage(files, staging)
    for path in (raw, qcow2):
        if os.path.exists(path):
            os.unlink(path)
    with open(raw, 'wb') as f:
        f.truncate(int(size_gib * 1024 ** 3))
    LOG.info('mkfs.ext4 -d into %s', raw)
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(FIXED_TIME))
    subprocess.run(mkfs_cmd(raw, staging), check=True, env=env)
    subprocess.run(qcow2_cmd(raw, qcow2), check=True)
    if not keep_staging:
        shutil.rmtree(staging, ignore_errors=True)
    return {'params': _params(size_gib, data_gb), 'files': len(files),
            'data_bytes': data, 'manifest_sha256': manifest_digest(files),
            'build_seconds': round(time.monotonic() - started, 1)}


def _volume(raw: str, qcow2: str, stamp: dict) -> Volume:
    return Volume(raw=raw, qcow2=qcow2, size_bytes=os.path.getsize(raw),
                  data_bytes=stamp['data_bytes'],
                  allocated_bytes=allocated(raw), files=stamp['files'])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size-gib', type=float, default=8)
    parser.add_argument('--data-gb', type=float, default=3)
    parser.add_argument('--workdir', default=DEFAULT_WORKDIR)
    parser.add_argument('--rebuild', action='store_true')
    parser.add_argument('--keep-staging', action='store_true')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    vol = build(args.workdir, args.size_gib, args.data_gb, args.rebuild,
                args.keep_staging)
    print('%s: %.2f GiB virtual, %d files, %.0f MB data, %.0f MB allocated '
          '(%.0f%%)' % (vol.raw, vol.size_bytes / 1024 ** 3, vol.files,
                        vol.data_bytes / 1e6, vol.allocated_bytes / 1e6,
                        100.0 * vol.allocated_bytes / vol.size_bytes))
    print('%s: %.0f MB' % (vol.qcow2, allocated(vol.qcow2) / 1e6))
    return 0


if __name__ == '__main__':
    sys.exit(main())
