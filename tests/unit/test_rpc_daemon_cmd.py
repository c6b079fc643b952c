# SPDX-License-Identifier: Apache-2.0
"""accel-daemon's service wiring and its signal-driven loop, in-process with
the fake:// transport and the FakeBackend (the real process is covered by
tests/functional/test_rpc_daemon.py)."""

import logging
import os
import queue
import signal
import time
import uuid

from oslo_config import cfg
from oslo_messaging import conffixture
import pytest

from accel_daemon.client import AccelClient
from accel_daemon.cmd import daemon
from accel_daemon.rpc import presence
from accel_daemon.rpc import rpcapi
from tests.fakes.backend import FakeBackend


@pytest.fixture
def conf(tmp_path):
    fixture = conffixture.ConfFixture(cfg.CONF, transport_url='fake:/')
    fixture.setUp()
    c = fixture.conf
    host = 'cmd-%s' % uuid.uuid4().hex[:8]
    c.set_override('state_dir', str(tmp_path / 'state'), group='accel_daemon')
    c.set_override('allowed_dirs', [str(tmp_path / 'images')],
                   group='accel_daemon')
    c.set_override('host', host, group='accel_daemon_rpc')
    c.set_override('max_task_wait', 0.2, group='accel_daemon_rpc')
    c.set_override('stop_timeout', 1.0, group='tasks')
    yield c
    fixture.cleanUp()


def test_serve_answers_reloads_and_stops_in_order(conf, tmp_path):
    backend = FakeBackend()
    closed = []
    service = daemon.Service(conf, backend, lambda: closed.append(True))
    events = queue.SimpleQueue()
    answers = {}

    class Probe:
        """Calls the running service from the loop's first reload."""

        def __init__(self):
            self.orig = service.reload

        def __call__(self):
            with AccelClient(conf, host=conf.accel_daemon_rpc.host) as c:
                answers['caps'] = c.capabilities()
            self.orig()
    service.reload = Probe()
    events.put('reload')
    events.put('stop')
    daemon.serve(service, events)

    assert answers['caps']['drivers'] == ['fake']
    assert backend.filters_reloaded == 1
    assert closed == [True]
    assert (tmp_path / 'state' / 'tasks.sqlite').exists()


def test_broken_filters_do_not_stop_the_service(conf, caplog):
    backend = FakeBackend()

    def broken():
        raise ValueError('bad filter file')
    backend.reload_filters = broken
    service = daemon.Service(conf, backend)
    service.reload()            # logged, not raised
    assert 'Reloading the filters failed' in caplog.text
    assert 'bad filter file' in caplog.text


def test_signals_post_events():
    events = queue.SimpleQueue()
    saved = {s: signal.getsignal(s)
             for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        daemon._install_signals(events)
        signal.raise_signal(signal.SIGHUP)
        signal.raise_signal(signal.SIGTERM)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    assert [events.get(timeout=1), events.get(timeout=1)] == \
        ['reload', 'stop']


def test_local_backend_option_is_hidden_and_off(conf):
    opt = [o for o in daemon.CLI_OPTS if o.name == 'local-backend'][0]
    assert opt.default is False
    assert opt.advanced is True


def test_state_dir_inside_an_allowed_dir_is_refused(conf, tmp_path):
    conf.set_override('state_dir', str(tmp_path / 'images' / 'state'),
                      group='accel_daemon')
    with pytest.raises(SystemExit) as e:
        daemon.check_state_dir(conf)
    assert 'inside the allowed directory' in str(e.value)
    conf.set_override('state_dir', str(tmp_path / 'state'),
                      group='accel_daemon')
    daemon.check_state_dir(conf)      # outside: accepted


def test_staging_dir_inside_an_allowed_dir_is_refused(conf, tmp_path):
    conf.set_override('state_dir', str(tmp_path / 'state'),
                      group='accel_daemon')
    conf.set_override('staging_dir', str(tmp_path / 'images'),
                      group='accel_daemon')
    with pytest.raises(SystemExit) as e:
        daemon.check_state_dir(conf)
    assert 'staging_dir' in str(e.value)
    conf.set_override('staging_dir', '', group='accel_daemon')
    daemon.check_state_dir(conf)      # none: nothing to check


# --- one daemon per state_dir and per server name ----------------------------
def test_second_lock_of_the_state_dir_exits_naming_the_holder(conf):
    held = daemon.lock_state_dir(conf)
    try:
        with pytest.raises(SystemExit) as e:
            daemon.lock_state_dir(conf)
    finally:
        held.release()
    message = str(e.value)
    assert '\n' not in message
    assert message.startswith('accel-daemon: refusing to start: ')
    assert 'pid %d, server name %s' % (os.getpid(),
                                       conf.accel_daemon_rpc.host) in message
    daemon.lock_state_dir(conf).release()       # free again


def test_server_name_answered_by_a_running_service_is_refused(conf):
    service = daemon.Service(conf, FakeBackend())
    service.start()
    try:
        transport = rpcapi.get_transport(conf)
        try:
            assert presence.someone_answers(
                transport, conf.accel_daemon_rpc.topic,
                conf.accel_daemon_rpc.host, 5.0)
            started = time.monotonic()
            assert not presence.someone_answers(
                transport, conf.accel_daemon_rpc.topic,
                conf.accel_daemon_rpc.host + '-nobody', 0.3)
            assert time.monotonic() - started < 2
        finally:
            transport.cleanup()
        with pytest.raises(SystemExit) as e:
            daemon.check_server_name(conf)
        assert 'already answers as server %s' % conf.accel_daemon_rpc.host \
            in str(e.value)
    finally:
        service.stop()


def test_free_server_name_passes_and_zero_timeout_skips(conf):
    conf.set_override('presence_timeout', 0.3, group='accel_daemon_rpc')
    daemon.check_server_name(conf)          # nobody there: no exit
    conf.set_override('presence_timeout', 0, group='accel_daemon_rpc')
    service = daemon.Service(conf, FakeBackend())
    service.start()
    try:
        daemon.check_server_name(conf)      # check disabled
    finally:
        service.stop()


@pytest.mark.parametrize('value, warned', [('0\n', True), ('1\n', False)])
def test_start_warns_when_hard_links_are_unprotected(tmp_path, caplog,
                                                     value, warned):
    (tmp_path / 'sys' / 'fs').mkdir(parents=True)
    (tmp_path / 'sys' / 'fs' / 'protected_hardlinks').write_text(value)
    with caplog.at_level(logging.WARNING):
        daemon.check_hardlinks(str(tmp_path))
    assert ('fs.protected_hardlinks is 0' in caplog.text) is warned


def test_a_stream_socket_dir_too_long_or_inside_is_refused(conf, tmp_path):
    conf.set_override('state_dir', str(tmp_path / 'state'),
                      group='accel_daemon')
    conf.set_override('socket_dir', '/run/' + 'x' * 70, group='streams')
    with pytest.raises(SystemExit) as e:
        daemon.check_state_dir(conf)
    assert 'too long for a socket' in str(e.value)
    conf.set_override('socket_dir', str(tmp_path / 'images' / 's'),
                      group='streams')
    with pytest.raises(SystemExit) as e:
        daemon.check_state_dir(conf)
    assert 'socket_dir' in str(e.value)
    conf.set_override('socket_dir', '/run/accel-daemon/streams',
                      group='streams')
    daemon.check_state_dir(conf)
