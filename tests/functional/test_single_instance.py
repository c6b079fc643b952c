# SPDX-License-Identifier: Apache-2.0
"""One accel-daemon per state directory and per RPC server name, with the
real ``accel-daemon`` console script against the real RabbitMQ broker.

A second daemon on the same state_dir, or answering as the same server
name, must refuse to start with one line on stderr before it touches the
journal; the first one must not notice.  A SIGKILLed daemon leaves its lock
file behind, which must not stop the next one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid

import pytest

from accel_daemon.manager import lock
from tests import brokeraccounts
from tests.functional.test_rpc_daemon import check_result
from tests.functional.test_rpc_daemon import DAEMON
from tests.functional.test_rpc_daemon import DaemonProcess
from tests.functional.test_rpc_daemon import MiB
from tests.functional.test_rpc_daemon import require_broker
from tests.functional.test_rpc_daemon import slow_compress
from tests.functional.test_rpc_daemon import wait_running

pytestmark = [pytest.mark.functional, pytest.mark.rpc, pytest.mark.privsep]

REFUSED = 'accel-daemon: refusing to start: '


@pytest.fixture(scope='module')
def first(tmp_path_factory):
    # Deployed as tools/install.sh deploys (an operator caller on broker
    # accounts of its own): a refused second daemon has nothing to warn
    # about, so its one line is all of stderr.
    require_broker()
    root = str(tmp_path_factory.mktemp('single'))
    with brokeraccounts.accounts(os.path.join(root, 'broker')) as accounts:
        d = DaemonProcess(os.path.join(root, 'd'), accounts=accounts)
        d.start()
        yield d
        d.stop()


def second_config(first: DaemonProcess, tmp_path, **changes: str) -> str:
    """``first``'s configuration with some ``key = value`` lines changed:
    same broker, exchange, topic, filters and directories otherwise."""
    with open(first.config) as f:
        text = f.read()
    for key, value in changes.items():
        text, n = re.subn(r'^%s = .*$' % key, '%s = %s' % (key, value), text,
                          flags=re.M)
        assert n == 1, key
    path = os.path.join(str(tmp_path), 'second.conf')
    with open(path, 'w') as f:
        f.write(text)
    return path


def run_second(config: str) -> subprocess.CompletedProcess:
    return subprocess.run([DAEMON, '--config-file', config],
                          capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def holder_pid(state_dir: str) -> int:
    with open(os.path.join(state_dir, lock.LOCK_NAME)) as f:
        return json.load(f)['pid']


def test_same_state_dir_is_refused_and_the_first_finishes_its_task(
        first, tmp_path):
    with first.client() as c:
        # ~4 s of gzip -9 here; the refusal takes well under one.
        handle = slow_compress(c, first, 'busy', 128 * MiB)
        wait_running(handle)
        second = run_second(second_config(
            first, tmp_path, host='accel-test-other-%s' % uuid.uuid4().hex))
        assert second.returncode == 1
        assert second.stdout == ''
        assert second.stderr.splitlines() == [
            '%sstate_dir %s is in use by another accel-daemon (pid %d, '
            'server name %s, host %s)' % (REFUSED, first.state,
                                          first.proc.pid, first.host,
                                          os.uname().nodename)]
        # The refused daemon did not recover (interrupt) the running task
        # nor remove its temp output: it is still running, and completes.
        assert handle.status()['state'] == 'running'
        result = handle.wait(timeout=120)
        check_result(result, os.path.join(first.images, 'busy.gz'))
        assert c.task(handle.id).state == 'succeeded'
    assert first.proc.poll() is None
    assert holder_pid(first.state) == first.proc.pid


def test_same_server_name_is_refused(first, tmp_path):
    state = os.path.join(str(tmp_path), 'state')
    started = time.monotonic()
    second = run_second(second_config(first, tmp_path, state_dir=state))
    elapsed = time.monotonic() - started
    assert second.returncode == 1
    assert second.stdout == ''
    assert second.stderr.splitlines() == [
        '%sanother accel-daemon already answers as server %s on topic '
        'accel_daemon (same transport and exchange); stop it or give this '
        'one another [accel_daemon_rpc] host' % (REFUSED, first.host)]
    # Refused before it opened a journal, and quickly: the first answers
    # within milliseconds.
    assert os.listdir(state) == [lock.LOCK_NAME]
    assert elapsed < 10
    with first.client() as c:
        c.tasks(limit=1)                # the first still serves


def test_restart_at_once_after_sigkill(first):
    old = first.proc.pid
    # Only the daemon itself: its privsep helper may outlive it for a
    # moment, and must not be holding the lock.
    os.kill(old, signal.SIGKILL)
    first.proc.wait(10)
    assert holder_pid(first.state) == old       # the stale lock file
    started = time.monotonic()
    first.start()
    # Startup plus one [accel_daemon_rpc] presence_timeout (2 s): the
    # killed daemon's queue is still bound, so only the timeout says that
    # nobody consumes it.
    assert time.monotonic() - started < 20
    assert holder_pid(first.state) == first.proc.pid != old
    assert 'refusing to start' not in first.log_tail()


def test_sigterm_still_exits_cleanly(first):
    assert first.stop(timeout=60) == 0, first.log_tail()
    assert 'accel-daemon stopped' in first.log_tail()
