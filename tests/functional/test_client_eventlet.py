# SPDX-License-Identifier: Apache-2.0
"""AccelClient inside an eventlet-monkey-patched process (as cinder-volume
and nova-compute may still be), against the real daemon and broker.

The client runs in a subprocess that monkey-patches before importing
anything else, with a green thread ticking a counter every 10 ms.  If a
client call blocked the OS thread, the ticker would stop for that long.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.functional.test_rpc_daemon import DaemonProcess
from tests.functional.test_rpc_daemon import random_file
from tests.functional.test_rpc_daemon import require_broker

pytestmark = [pytest.mark.functional, pytest.mark.rpc, pytest.mark.privsep]

TICK = 0.01
MiB = 1024 * 1024

SCRIPT = r'''
import eventlet
eventlet.monkey_patch()

import json
import sys
import time

from oslo_config import cfg

from accel_daemon import exception
from accel_daemon import client as accel_client
from accel_daemon.client import AccelClient

mode, config, host, src, dst = sys.argv[1:6]
ticks = [0]


def ticker():
    while True:
        ticks[0] += 1
        eventlet.sleep(%(tick)s)


conf = cfg.ConfigOpts()
accel_client.register_opts(conf)
conf(['--config-file', config])
eventlet.spawn(ticker)
eventlet.sleep(0)
report = {'patched': eventlet.patcher.is_monkey_patched('thread')}
if mode == 'unreachable':
    # A call nobody answers blocks for the whole RPC timeout.
    conf.set_override('timeout', 2, group='accel_daemon_client')
    with AccelClient(conf, host=host + '-nobody') as client:
        before, started = ticks[0], time.monotonic()
        try:
            client.capabilities()
        except exception.ServiceUnavailable as e:
            report['error'] = type(e).__name__
elif mode == 'kill':
    # The caller's green thread is killed while it waits: the client must
    # cancel the task on its way out (GreenletExit is a BaseException).
    with AccelClient(conf, host=host) as client:
        handle = client.compress(src, dst, driver='gzip', level=9)
        before, started = ticks[0], time.monotonic()
        waiter = eventlet.spawn(handle.wait, timeout=300)
        while client.task(handle.id).state == 'queued':
            eventlet.sleep(0.05)
        eventlet.sleep(1.0)     # inside a blocking task_wait call by now
        waiter.kill()
        try:
            waiter.wait()
        except BaseException as e:
            report['waiter'] = type(e).__name__
        report['state_seen_by_handle'] = handle.state
        try:
            client.task(handle.id).wait(timeout=60, cancel=False)
        except exception.AccelError as e:
            report['error'] = type(e).__name__
else:
    with AccelClient(conf, host=host) as client:
        client.tasks(limit=1)
        handle = client.compress(src, dst, driver='gzip', level=9)
        before, started = ticks[0], time.monotonic()
        report['result'] = handle.wait(timeout=300)
report['elapsed'] = time.monotonic() - started
report['ticks'] = ticks[0] - before
print(json.dumps(report))
''' % {'tick': TICK}


@pytest.fixture(scope='module')
def daemon(tmp_path_factory):
    require_broker()
    d = DaemonProcess(str(tmp_path_factory.mktemp('rpcd-eventlet')))
    d.start()
    yield d
    d.stop()


def run_client(daemon, mode, src='', dst=''):
    proc = subprocess.run(
        [sys.executable, '-c', SCRIPT, mode, daemon.config, daemon.host,
         src, dst], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:] + daemon.log_tail()
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_ticked(report, at_least):
    assert report['patched'] is True
    assert report['elapsed'] >= at_least
    # The ticker ran for most of the wait (it would stay at ~0 if the call
    # held the only OS thread); sleeps overshoot, so half is plenty.
    assert report['ticks'] >= 0.5 * report['elapsed'] / TICK, report


def test_blocking_call_yields_to_other_green_threads(daemon):
    report = run_client(daemon, 'unreachable')
    assert report['error'] == 'ServiceUnavailable'
    assert_ticked(report, 1.5)


def test_wait_does_not_block_other_green_threads(daemon):
    src = random_file(os.path.join(daemon.images, 'green.bin'), 64 * MiB)
    dst = os.path.join(daemon.images, 'green.gz')
    report = run_client(daemon, 'wait', src, dst)
    assert report['result']['output'] == dst
    assert os.path.getsize(dst) == report['result']['size']
    assert_ticked(report, 1.0)


def test_killed_green_thread_cancels_its_task(daemon):
    src = random_file(os.path.join(daemon.images, 'killed.bin'), 256 * MiB)
    dst = os.path.join(daemon.images, 'killed.gz')
    report = run_client(daemon, 'kill', src, dst)
    assert report['patched'] is True
    # (GreenletExit came out of wait() after the cancel, and the daemon
    # ended the task cancelled, long before gzip -9 of 256 MiB of random
    # data would have.)
    assert report.get('waiter', 'GreenletExit') == 'GreenletExit', report
    assert report['state_seen_by_handle'] == 'cancelled', report
    assert report['error'] == 'Cancelled', report
    assert report['elapsed'] < 30, report
    assert not os.path.exists(dst)
