# SPDX-License-Identifier: Apache-2.0
"""Every operation under a live attacker that owns the allowed directory.

The attacker (attacker.py, a throwaway non-root user, inotify) swaps the
names the daemon reads and creates at the worst moments: the source for a
symlink to a root-only secret, for a hard link to it (where the kernel
allows it), for a FIFO, or (renameat2 RENAME_EXCHANGE) for a qcow2 whose
backing file is the secret; the published output for a symlink to the
secret; a FIFO at the final name; a hard link of a harmless file or a
symlink to the secret over every temp name.

For every task: it ends within a bound, succeeded or with a typed error
(not InternalError); nothing it returns or publishes holds the secret; a
published output is exactly the expected image (and is not an image with a
backing file or data file); no temp file remains; the daemon serves after.
"""

from __future__ import annotations

import collections
import itertools
import os
import shutil
import stat

import pytest

from tests.functional.reliability import arena as arena_mod
from tests.functional.reliability import common

pytestmark = common.marks(400, pytest.mark.slow)

ITERATIONS = int(os.environ.get('ACCEL_RACE_ITERATIONS', '4'))
BATCH = 4
TASK_BOUND = 30.0
OPS = ('compress', 'decompress', 'copy', 'convert', 'upload', 'download')
SRC_MODES = ('symlink', 'hardlink', 'fifo', 'exchange', 'none')
DST_MODES = ('link', 'fifo', 'tmplink', 'tmpsym', 'none')
# The benign source each operation reads (in the fixtures) and its
# malicious twin for RENAME_EXCHANGE.
SOURCES = {
    'compress': ('raw_path', None),
    'decompress': ('raw_gz_path', None),
    'copy': ('raw_path', None),
    'convert': ('qcow2_path', 'evil_path'),
    'upload': ('qcow2_path', 'evil_path'),
    'download': ('qcow2_gz_path', 'evil_gz_path'),
}


@pytest.fixture(scope='module')
def arena():
    with common.throwaway_user() as user:
        a = arena_mod.Arena(user)
        try:
            a.start()
            yield a
        finally:
            a.close()


def submit(client, op, src, dst):
    if op == 'compress':
        return client.compress(src, dst, checksum=True)
    if op == 'decompress':
        return client.decompress(src, dst, max_bytes=64 * common.MiB,
                                 checksum=True)
    if op == 'copy':
        return client.copy(src, dst, checksum=True)
    if op == 'convert':
        return client.convert(src, dst, 'qcow2', 'raw', checksum=True)
    if op == 'upload':
        return client.upload(src, dst, 'qcow2', 'raw', checksum=True)
    return client.download(src, dst, 'qcow2', 'raw',
                           max_bytes=64 * common.MiB, checksum=True)


class Race:
    def __init__(self, arena, op, src_mode, dst_mode, n):
        self.op, self.src_mode, self.dst_mode = op, src_mode, dst_mode
        self.tag = 't%04d-%s-%s' % (n, op, src_mode)
        self.src = os.path.join(arena.images, self.tag + '.in')
        self.dst = os.path.join(arena.images,
                                '%s.out-%s' % (self.tag, dst_mode))
        benign, evil = SOURCES[op]
        shutil.copyfile(getattr(arena, benign), self.src)
        os.chown(self.src, arena.uid, arena.gid)
        os.chmod(self.src, 0o640)
        alt = self.src + '.alt'
        secret = arena.secret_gz if op in ('decompress', 'download') \
            else arena.secret
        if src_mode == 'symlink':
            os.symlink(secret, alt)
            os.lchown(alt, arena.uid, arena.gid)
        elif src_mode == 'hardlink':
            assert arena.as_user('link', secret, alt).returncode == 0
        elif src_mode == 'fifo':
            os.mkfifo(alt, 0o640)
            os.chown(alt, arena.uid, arena.gid)
        elif src_mode == 'exchange':
            shutil.copyfile(getattr(arena, evil), alt)
            os.chown(alt, arena.uid, arena.gid)
        self.handle = None
        self.outcome = None

    @property
    def attacks(self) -> int:
        return (self.src_mode != 'none') + (self.dst_mode != 'none')

    def __repr__(self):
        return '%s>%s' % (self.tag, self.dst_mode)


def plan(hardlinks: bool) -> list[tuple[str, str, str]]:
    combos = []
    for op, src_mode, dst_mode in itertools.product(OPS, SRC_MODES,
                                                    DST_MODES):
        if src_mode == 'exchange' and SOURCES[op][1] is None:
            continue
        if src_mode == 'hardlink' and not hardlinks:
            continue
        if src_mode == 'none' and dst_mode == 'none':
            continue
        combos.append((op, src_mode, dst_mode))
    return combos * ITERATIONS


def judge(arena, race, problems):
    out = race.outcome
    where = repr(race)
    if not out.ok:
        if out.error_type in common.UNTYPED:
            problems['untyped error'].append('%s: %r' % (where, out))
    values = []

    def flatten(v):
        if isinstance(v, dict):
            for x in v.values():
                flatten(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                flatten(x)
        else:
            values.append(str(v))
    flatten(out.result or {})
    if out.handle is not None:
        flatten(out.handle.task.get('error') or {})
    for value in values:
        for h in arena.forbidden_hashes:
            if h in value:
                problems['secret hash returned'].append(
                    '%s: %s' % (where, value))
    try:
        st = os.lstat(race.dst)
    except FileNotFoundError:
        st = None
    if out.ok and st is None:
        problems['succeeded without output'].append(where)
    if st is None or not stat.S_ISREG(st.st_mode):
        return      # nothing, or what the attacker planted
    fd = os.open(race.dst, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, 'rb') as f:
        published = f.read()
    # From the bytes read once, through a descriptor that refused a
    # symlink: the attacker swaps the published name for a symlink to the
    # secret at once ("link"), and reading the name again would follow it.
    plain = common.plain(published)
    if arena.leaks(published) or arena.leaks(plain):
        problems['secret in output'].append(where)
    reason = common.unsafe_image_reason(plain)
    if reason:
        problems['unsafe image published'].append('%s: %s' % (where,
                                                              reason))
    if not out.ok:
        problems['output published by a failed task'].append(
            '%s: %r' % (where, out))
        return
    if plain != arena.raw:
        problems['output is not the expected image'].append(
            '%s (%d bytes)' % (where, len(plain)))
    sha = (out.result or {}).get('sha256')
    if sha and sha != common.sha256_bytes(published):
        problems['sha256 is not the published file\'s'].append(where)


def rescue(race):
    """Unblock a task stuck on one of the attacker's FIFOs (open the other
    end), cancel it and give it a few seconds to go."""
    for path, flags in ((race.src, os.O_WRONLY), (race.src + '.alt',
                                                  os.O_WRONLY),
                        (race.dst, os.O_RDONLY)):
        try:
            if stat.S_ISFIFO(os.lstat(path).st_mode):
                os.close(os.open(path, flags | os.O_NONBLOCK))
        except OSError:
            pass
    try:
        race.handle.cancel()
        race.handle.wait(timeout=10)
    except Exception:
        pass


def clean(arena):
    for name in os.listdir(arena.images):
        path = os.path.join(arena.images, name)
        if path == arena.harmless:
            continue
        try:
            os.unlink(path)
        except IsADirectoryError:
            shutil.rmtree(path)
        except FileNotFoundError:
            pass


def test_every_operation_under_attack(arena):
    hardlinks = arena.hardlink_allowed()
    combos = plan(hardlinks)
    problems = collections.defaultdict(list)
    outcomes = collections.Counter()
    races = 0
    arena.start_attacker()
    try:
        with arena.daemon.client() as client:
            for start in range(0, len(combos), BATCH):
                batch = [Race(arena, op, s, d, start + i) for i, (op, s, d)
                         in enumerate(combos[start:start + BATCH])]
                pending = []
                for race in batch:
                    try:
                        race.handle = submit(client, race.op, race.src,
                                             race.dst)
                        pending.append(race)
                    except Exception as e:   # refused at once: judged below
                        race.outcome = common.run_task(
                            lambda e=e: _raise(e), TASK_BOUND)
                for race in pending:
                    race.outcome = common.run_task(
                        lambda r=race: r.handle, TASK_BOUND,
                        fail_on_hang=False)
                    if race.outcome.error_type == 'TaskWaitTimeout':
                        problems['task did not end within %ss'
                                 % TASK_BOUND].append(repr(race))
                        rescue(race)
                for race in batch:
                    races += race.attacks
                    outcomes[race.outcome.error_type or 'succeeded'] += 1
                    judge(arena, race, problems)
                left = common.wait_no_strays(
                    arena.images, 5.0, {arena.harmless_inode})
                if left:
                    problems['temp files left'].append(
                        '%s: %s' % (batch, left))
                clean(arena)
    finally:
        stats = arena.stop_attacker()
    # Still serving, and right, once the attacker is gone.
    src = os.path.join(arena.images, 'after.raw')
    shutil.copyfile(arena.raw_path, src)
    with arena.daemon.client() as client:
        out = common.run_task(lambda: client.copy(
            src, os.path.join(arena.images, 'after.copy')), 60)
    print('\nraces: %d tasks, %d attacks (hard links to the secret %s); '
          'outcomes %s; attacker %s'
          % (len(combos), races, 'allowed' if hardlinks else
             'refused by the kernel (fs.protected_hardlinks)',
             dict(outcomes), stats))
    for kind, items in problems.items():
        print('PROBLEM %s: %d, e.g. %s' % (kind, len(items), items[:3]))
    assert out.ok, out
    # The attack really ran (else this test proves nothing).
    assert stats['flips'] > 1000 and stats['flips_on_open'] > 0, stats
    assert stats['fifos_planted'] > 0, stats
    assert outcomes['succeeded'] > 0, outcomes
    assert not problems, {k: (len(v), v[:5]) for k, v in problems.items()}


def _raise(e):
    raise e
