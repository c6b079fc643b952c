# SPDX-License-Identifier: Apache-2.0
"""200 mixed small tasks from 4 client processes against one daemon:
nothing lost, nothing duplicated, all succeeded, outputs right, and the
memory of the daemon and of its privsep helper bounded."""

from __future__ import annotations

import collections
import gzip
import json
import os
import subprocess
import sys

import pytest

from tests import envfixture
from tests.functional import imagegen as gen
from tests.functional.reliability import common

pytestmark = common.marks(400, pytest.mark.slow)

MiB = common.MiB
PROCESSES = 4
PER_PROCESS = 50
RSS_GROWTH_LIMIT_KIB = 100 * 1024

# One client process: submits its tasks (all at once), waits for all,
# prints one JSON line per task.
WORKER = r'''
import json, os, sys
from tests.functional.reliability import common
from tests.functional.test_rpc_daemon import DaemonProcess

config, host, images, n, count = sys.argv[1:6]
d = DaemonProcess.__new__(DaemonProcess)
d.config, d.host = config, host
kinds = ('compress', 'decompress', 'convert', 'copy')
with d.client() as c:
    handles = []
    for i in range(int(count)):
        kind = kinds[i % 4]
        dst = os.path.join(images, 'p%s-%03d-%s.out' % (n, i, kind))
        if kind == 'compress':
            h = c.compress(os.path.join(images, 'in.raw'), dst)
        elif kind == 'decompress':
            h = c.decompress(os.path.join(images, 'in.raw.gz'), dst,
                             max_bytes=16 * common.MiB)
        elif kind == 'convert':
            h = c.convert(os.path.join(images, 'in.qcow2'), dst, 'qcow2',
                          'raw')
        else:
            h = c.copy(os.path.join(images, 'in.raw'), dst)
        handles.append((kind, dst, h))
    for kind, dst, h in handles:
        try:
            h.wait(timeout=300)
        except Exception as e:
            pass
        print(json.dumps({'id': h.id, 'kind': kind, 'dst': dst,
                          'state': h.state, 'result': h.result,
                          'error': h.task.get('error')}), flush=True)
'''


daemon = common.module_daemon('load')


def rss(daemon):
    helpers = common.helper_pids(daemon)
    assert len(helpers) == 1, helpers
    return common.rss_kib(daemon.proc.pid), common.rss_kib(helpers[0])


def run_clients(daemon, count):
    procs = [subprocess.Popen(
        [sys.executable, '-c', WORKER, daemon.config, daemon.host,
         daemon.images, str(n), str(count)], cwd=envfixture.ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n in range(PROCESSES)]
    rows = []
    for p in procs:
        out, err = p.communicate(timeout=360)
        assert p.returncode == 0, err[-3000:]
        rows += [json.loads(line) for line in out.splitlines()
                 if line.startswith('{')]
    return rows


def test_two_hundred_tasks_from_four_processes(daemon):
    images = daemon.images
    raw = os.path.join(images, 'in.raw')
    with open(raw, 'wb') as f:
        f.truncate(MiB)
        f.write(b'load test data\n' * 30000)
        f.seek(512 * 1024)
        f.write(os.urandom(128 * 1024))
    with open(raw, 'rb') as f:
        raw_bytes = f.read()
    gen.write(raw + '.gz', gzip.compress(raw_bytes))
    subprocess.run(['qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'qcow2',
                    raw, os.path.join(images, 'in.qcow2')], check=True)
    # Warm-up: every kind once per process, then measure.
    warm = run_clients(daemon, 4)
    assert all(r['state'] == 'succeeded' for r in warm), warm
    for r in warm:
        os.unlink(r['dst'])
    rss_before = rss(daemon)
    rows = run_clients(daemon, PER_PROCESS)
    rss_after = rss(daemon)
    ids = collections.Counter(r['id'] for r in rows)
    states = collections.Counter(r['state'] for r in rows)
    # The daemon's own view: every task once, succeeded.
    with daemon.client() as c:
        seen = c.tasks(limit=1000)
    listed = collections.Counter(t.id for t in seen if t.id in ids)
    states_seen = {t.id: t.state for t in seen}
    print('\nload: %d tasks from %d processes, states %s; RSS KiB daemon '
          '%d -> %d, privsep helper %d -> %d'
          % (len(rows), PROCESSES, dict(states), rss_before[0],
             rss_after[0], rss_before[1], rss_after[1]))
    assert len(rows) == PROCESSES * PER_PROCESS           # none lost
    assert len(ids) == len(rows) and max(ids.values()) == 1  # no dup
    assert len(listed) == len(ids) and max(listed.values()) == 1
    assert states == {'succeeded': len(rows)}, \
        [r for r in rows if r['state'] != 'succeeded'][:5]
    assert all(states_seen[i] == 'succeeded' for i in ids)
    outputs = collections.Counter(r['result']['output'] for r in rows)
    assert max(outputs.values()) == 1
    # Outputs right: every one on its size, a sample byte for byte.
    for n, r in enumerate(rows):
        assert os.path.getsize(r['dst']) == r['result']['size']
        if n % 10:
            continue
        if r['kind'] == 'compress':
            with gzip.open(r['dst'], 'rb') as g:
                assert g.read() == raw_bytes
        elif r['kind'] == 'convert':
            assert gen.compare(raw, 'raw', r['dst'], 'raw')
        else:
            with open(r['dst'], 'rb') as f:
                assert f.read() == raw_bytes
    assert common.strays(images) == []
    assert rss_after[0] - rss_before[0] < RSS_GROWTH_LIMIT_KIB
    assert rss_after[1] - rss_before[1] < RSS_GROWTH_LIMIT_KIB
