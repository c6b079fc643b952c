# SPDX-License-Identifier: Apache-2.0
"""accel-daemon's service wrapping: sd_notify, the launcher loop's
notifications, the amqp closing-channel filter and the state directory
mode (in-process, fake:// transport; the real process is in
tests/functional/test_service.py)."""

import logging
import os
import queue
import socket
import stat
import uuid

from oslo_config import cfg
from oslo_messaging import conffixture
from oslo_service import service as oslo_service
import pytest

from accel_daemon.cmd import daemon
from tests.fakes.backend import FakeBackend


@pytest.fixture
def conf(tmp_path):
    fixture = conffixture.ConfFixture(cfg.CONF, transport_url='fake:/')
    fixture.setUp()
    c = fixture.conf
    c.set_override('state_dir', str(tmp_path / 'state'), group='accel_daemon')
    c.set_override('allowed_dirs', [str(tmp_path / 'images')],
                   group='accel_daemon')
    c.set_override('host', 'svc-%s' % uuid.uuid4().hex[:8],
                   group='accel_daemon_rpc')
    c.set_override('max_task_wait', 0.2, group='accel_daemon_rpc')
    c.set_override('stop_timeout', 1.0, group='tasks')
    yield c
    fixture.cleanUp()


@pytest.fixture
def listener(tmp_path):
    path = str(tmp_path / 'notify')
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.5)
    yield path, sock
    sock.close()


def received(sock):
    out = []
    while True:
        try:
            out.append(sock.recv(4096))
        except TimeoutError:
            return out


# -- Notifier ----------------------------------------------------------------
def test_notifier_reads_and_removes_notify_socket(listener, monkeypatch):
    path, sock = listener
    monkeypatch.setenv('NOTIFY_SOCKET', path)
    n = daemon.Notifier()
    assert 'NOTIFY_SOCKET' not in os.environ     # children never see it
    assert n.send('READY=1')
    assert received(sock) == [b'READY=1']


def test_notifier_abstract_address():
    name = 'accel-test-%s' % uuid.uuid4().hex
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind('\0' + name)
    sock.settimeout(1)
    try:
        assert daemon.Notifier('@' + name).send('STOPPING=1')
        assert sock.recv(100) == b'STOPPING=1'
    finally:
        sock.close()


def test_notifier_without_socket_sends_nothing(monkeypatch):
    monkeypatch.delenv('NOTIFY_SOCKET', raising=False)
    assert daemon.Notifier().send('READY=1') is False


def test_notifier_unreachable_socket_is_a_warning(tmp_path, caplog):
    n = daemon.Notifier(str(tmp_path / 'nobody'))
    assert n.send('READY=1') is False
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


# -- the loop under oslo.service's Launcher -----------------------------------
def test_serve_ready_then_stopping(conf, listener):
    path, sock = listener
    service = daemon.Service(conf, FakeBackend())
    events = queue.SimpleQueue()
    answered = []

    class Notifier(daemon.Notifier):
        def send(self, state):
            if state == 'READY=1':
                # READY only once the service answers.
                answered.append(daemon.wait_until_answering(conf, 1.0))
                events.put('reload')
                events.put('stop')
            return super().send(state)
    assert daemon.serve(service, events, Notifier(path)) == 0
    assert received(sock) == [b'READY=1', b'STOPPING=1']
    assert answered == [True]
    assert service.backend.filters_reloaded == 1
    assert service._stopped.is_set()


def test_serve_stop_before_ready_sends_no_ready(conf, listener):
    path, sock = listener
    service = daemon.Service(conf, FakeBackend())
    events = queue.SimpleQueue()
    events.put('stop')
    assert daemon.serve(service, events, daemon.Notifier(path)) == 0
    assert received(sock) == [b'STOPPING=1']


# oslo.service's Launcher logs the failed start and ends its thread with
# SystemExit(1), which pytest reports.
@pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnhandledThreadExceptionWarning')
def test_serve_failed_start_sends_no_ready(conf, listener):
    path, sock = listener
    service = daemon.Service(conf, FakeBackend())

    def broken():
        raise RuntimeError('no broker')
    service.servers[0].start = broken
    status = daemon.serve(service, queue.SimpleQueue(),
                          daemon.Notifier(path))
    assert status == 1
    assert received(sock) == [b'STOPPING=1']


def test_service_is_an_oslo_service(conf):
    service = daemon.Service(conf, FakeBackend())
    assert isinstance(service, oslo_service.ServiceBase)
    service.reset()                 # oslo.service's SIGHUP hook: filters
    assert service.backend.filters_reloaded == 1


# -- amqp closing-channel warnings --------------------------------------
def amqp_record(sig, level=logging.WARNING):
    return logging.LogRecord(
        'amqp', level, __file__, 1,
        'Received method %s during closing channel %s. This method will be '
        'ignored', (sig, 1), None)


@pytest.mark.parametrize('sig', [(60, 80), (60, 30)])
def test_expected_closing_channel_frames_are_debug(sig):
    f = daemon.ClosingChannelNoise()
    record = amqp_record(sig)
    logging.getLogger('amqp').setLevel(logging.INFO)
    try:
        assert f.filter(record) is False
        logging.getLogger('amqp').setLevel(logging.DEBUG)
        record = amqp_record(sig)
        assert f.filter(record) is True
        assert record.levelno == logging.DEBUG
    finally:
        logging.getLogger('amqp').setLevel(logging.NOTSET)


def test_other_amqp_warnings_pass():
    f = daemon.ClosingChannelNoise()
    record = amqp_record((60, 60))          # a delivery: not expected
    assert f.filter(record) is True
    assert record.levelno == logging.WARNING
    other = logging.LogRecord('amqp', logging.WARNING, __file__, 1,
                              'Heartbeat failure %s', ('x',), None)
    assert f.filter(other) is True
    assert other.levelno == logging.WARNING


# -- state directory mode ---------------------------------------------
def test_state_dir_created_0700(conf, tmp_path):
    daemon.ensure_state_dir(conf)
    assert stat.S_IMODE(os.stat(tmp_path / 'state').st_mode) == 0o700


def test_state_dir_of_ours_tightened_to_0700(conf, tmp_path):
    state = tmp_path / 'state'
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    daemon.ensure_state_dir(conf)
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700


def test_state_dir_not_a_directory_refused(conf, tmp_path):
    (tmp_path / 'elsewhere').mkdir()
    os.symlink(tmp_path / 'elsewhere', tmp_path / 'state')
    with pytest.raises(SystemExit, match='is not a directory'):
        daemon.ensure_state_dir(conf)
