# SPDX-License-Identifier: Apache-2.0
"""The privileged layer without a privsep daemon: entrypoints called
in-process (client mode off) with an injected fake Engine, the helper
command, the sudoers sample, the capability plan and error transport."""

import os
import re
import tempfile

import msgpack
from oslo_config import cfg
from oslo_privsep import capabilities as c
from oslo_utils import importutils
import pytest

from accel_daemon.engine.engine import Engine
from accel_daemon.engine import process
from accel_daemon import exception
from accel_daemon.manager import backends
from accel_daemon.options import Options
from accel_daemon import privileged
from accel_daemon.privileged import caps
from accel_daemon.privileged import ops
from accel_daemon.privileged import start as privileged_start
from tests.envfixture import ROOT

SUDOERS = os.path.join(ROOT, 'etc', 'accel-daemon', 'sudoers.d',
                       'accel-daemon')


class RecordingEngine(Engine):
    """An Engine whose operations only record what reached them."""

    def __init__(self, settings, fail=None):
        super().__init__(settings)
        self.calls = []
        self.fail = fail

    def _record(self, name, params):
        self.calls.append((name, params))
        if self.fail:
            raise self.fail
        return {'output': params['dst'], 'size': 3, 'extents': ((0, 3),)}

    def compress(self, progress, **params):
        return self._record('compress', params)

    def copy(self, progress, **params):
        return self._record('copy', params)

    def image_info(self, path, format):
        self.calls.append(('info', path, format))
        return {'format': format, 'snapshots': ()}

    def capabilities(self):
        return {'drivers': ('gzip', 'pigz'), 'tools': {'gzip': '1.12'}}

    def discard_partial(self, dst):
        self.calls.append(('discard_partial', dst))
        return (dst + '.part',)


@pytest.fixture
def engine(env):
    eng = RecordingEngine(env.settings)
    previous = ops.use_engine(eng)
    privileged.context.set_client_mode(False)
    yield eng
    privileged.context.set_client_mode(True)
    ops.use_engine(previous)


@pytest.fixture(params=['privsep-in-process', 'local'])
def backend(request, engine):
    if request.param == 'local':
        return backends.LocalBackend(engine)
    return backends.PrivsepBackend()


@pytest.fixture(params=['privsep-in-process', 'local'])
def real_backend(request, env):
    """The real Engine behind either backend: it opens every path once and
    judges the opened file."""
    eng = Engine(env.settings)
    previous = ops.use_engine(eng)
    privileged.context.set_client_mode(False)
    yield (backends.LocalBackend(eng) if request.param == 'local'
           else backends.PrivsepBackend())
    privileged.context.set_client_mode(True)
    ops.use_engine(previous)


def _src(env, name='src.img', data=b'abc'):
    path = env.path(name)
    with open(path, 'wb') as f:
        f.write(data)
    return path


# -- validation in the privileged process ------------------------------------
def test_run_passes_checked_params_with_defaults(env, engine, backend):
    src = _src(env)
    result = backend.run('t1', 'compress', {'src': src, 'dst': env.path('o')})
    assert result.pop('wall_seconds') >= 0
    assert result == {'output': env.path('o'), 'size': 3, 'sha256': None,
                      'extents': [[0, 3]]}
    # The operation table's defaults are filled in here, once, and travel
    # as one Options value.
    assert engine.calls == [('compress', {
        'src': src, 'dst': env.path('o'),
        'options': Options(format='gzip', checksum=True, replace=False)})]


@pytest.mark.parametrize('make_params, error', [
    (lambda env, src: {'src': '/etc/passwd', 'dst': env.path('o')},
     exception.PathNotAllowed),
    (lambda env, src: {'src': src, 'dst': os.path.join(env.root, 'o')},
     exception.PathNotAllowed),
    (lambda env, src: {'src': env.path('..', 'x'), 'dst': env.path('o')},
     exception.PathNotAllowed),
    (lambda env, src: {'src': 'relative.img', 'dst': env.path('o')},
     exception.PathNotAllowed),
    (lambda env, src: {'src': src, 'dst': src}, exception.OutputExists),
    (lambda env, src: {'src': env.path('missing'), 'dst': env.path('o')},
     exception.InputNotFound),
    (lambda env, src: {'src': src + '/', 'dst': env.path('o')},
     exception.PathNotAllowed),
    (lambda env, src: {'src': src, 'dst': env.path('o') + '/'},
     exception.PathNotAllowed),
    (lambda env, src: {'src': env.path('x' * 300), 'dst': env.path('o')},
     exception.PathNotAllowed),
    (lambda env, src: {'src': env.path('\udcff\ud800'),
                       'dst': env.path('o')}, exception.PathNotAllowed),
    (lambda env, src: {'src': '/proc/1/root' + src, 'dst': env.path('o')},
     exception.PathNotAllowed),
])
def test_bad_paths_are_typed_and_leave_nothing(env, real_backend,
                                               make_params, error):
    params = make_params(env, _src(env))
    with pytest.raises(error) as e:
        real_backend.run('t1', 'copy', params)
    assert isinstance(e.value, error)
    assert e.value.fields.get('path')
    assert not os.path.exists(env.path('o'))
    assert sorted(os.listdir(env.images)) == ['src.img']


def test_symlink_escape_refused_by_the_opened_file(env, real_backend):
    secret = os.path.join(env.root, 'secret')
    with open(secret, 'w') as f:
        f.write('x')
    os.symlink(secret, env.path('link.img'))
    os.symlink(env.root, env.path('outdir'))
    with pytest.raises(exception.SymlinkEscape):
        real_backend.run('t1', 'copy', {'src': env.path('link.img'),
                                        'dst': env.path('o')})
    with pytest.raises(exception.SymlinkEscape):
        real_backend.run('t1', 'copy', {'src': _src(env),
                                        'dst': env.path('outdir', 'o')})
    assert not os.path.exists(os.path.join(env.root, 'o'))


def test_info_is_confined(env, real_backend):
    with pytest.raises(exception.PathNotAllowed):
        real_backend.info('/etc/hostname', 'raw')


def test_info_result_is_plain(env, engine, backend):
    src = _src(env)
    assert backend.info(src, 'raw') == {'format': 'raw', 'snapshots': []}
    assert engine.calls == [('info', src, 'raw')]


def test_discard_partial_confined_but_dst_may_exist(env, engine, backend):
    with pytest.raises(exception.PathNotAllowed):
        backend.discard_partial(os.path.join(env.root, 'o'))
    with pytest.raises(exception.PathNotAllowed):
        backend.discard_partial('/etc/passwd')
    published = _src(env, 'published.img')
    assert backend.discard_partial(published) == [published + '.part']
    assert engine.calls == [('discard_partial', published)]


def test_bad_argument_types_are_invalid_requests(env, engine, backend):
    with pytest.raises(exception.InvalidRequest):
        backend.run('t1', 'copy', ['not', 'a', 'dict'])
    with pytest.raises(exception.InvalidRequest):
        backend.run(None, 'copy', {'src': _src(env), 'dst': env.path('o')})
    assert engine.calls == []


def test_capabilities_plain(engine, backend):
    assert backend.capabilities() == {'drivers': ['gzip', 'pigz'],
                                      'tools': {'gzip': '1.12'}}


def test_progress_and_cancel_of_unknown_task(engine, backend):
    assert backend.progress('nope') is None
    assert backend.cancel('nope') is False


def test_unknown_kind_typed(env, engine):
    with pytest.raises(exception.InvalidRequest) as e:
        backends.PrivsepBackend().run('t', 'format-disk', {})
    assert 'format-disk' in str(e.value)


# -- errors across the channel ---------------------------------------------
def _over_privsep_wire(exc):
    """What oslo.privsep does with an exception: msgpack the class name and
    args, then rebuild ``cls(*args)`` on the other side."""
    cls = type(exc)
    wire = msgpack.packb(('%s.%s' % (cls.__module__, cls.__name__), exc.args),
                         use_bin_type=True)
    name, args = msgpack.unpackb(wire, use_list=False, raw=False)
    return importutils.import_class(name)(*args)


def test_entrypoint_sends_failure_that_rebuilds_type_and_fields(env, engine):
    engine.fail = exception.SizeLimitExceeded(path='/x', limit=10)
    with pytest.raises(ops.Failure) as e:
        ops.run('t1', 'compress', {'src': _src(env), 'dst': env.path('o')})
    rebuilt = _over_privsep_wire(e.value).to_error()
    assert type(rebuilt) is exception.SizeLimitExceeded
    assert rebuilt.fields == {'path': '/x', 'limit': 10}
    assert rebuilt.message == str(engine.fail)


def test_backend_reraises_typed_error_with_fields(env, engine):
    engine.fail = exception.Cancelled()
    with pytest.raises(exception.Cancelled):
        backends.PrivsepBackend().run('t', 'copy', {'src': _src(env),
                                                    'dst': env.path('o')})


def test_bug_in_engine_becomes_internal_error(env, engine, backend):
    engine.fail = KeyError('oops')
    err_type = (KeyError if isinstance(backend, backends.LocalBackend)
                else exception.InternalError)
    with pytest.raises(err_type):
        backend.run('t', 'copy', {'src': _src(env), 'dst': env.path('o')})


def test_every_accel_error_survives_privsep_native_rebuild():
    # Defence in depth: should an AccelError ever reach privsep's own
    # serialisation, it still arrives as the same class and message.
    for name in dir(exception):
        cls = getattr(exception, name)
        if isinstance(cls, type) and issubclass(cls, exception.AccelError):
            err = cls('message for %s' % name)
            rebuilt = _over_privsep_wire(err)
            assert type(rebuilt) is cls
            assert str(rebuilt) == 'message for %s' % name


@pytest.mark.parametrize('hardened', [True, False])
def test_only_the_helper_adopts_the_orphans_of_tools(
        env, engine, monkeypatch, hardened):
    # A child subreaper kills what is not a tool of its own: right in the
    # helper, wrong in a process that has other children (tests, --local).
    adopted = []
    monkeypatch.setattr(caps, 'harden_thread', lambda *a: hardened)
    monkeypatch.setattr(process, 'adopt_orphans',
                        lambda: adopted.append(True))
    ops.run('t1', 'compress', {'src': _src(env), 'dst': env.path('o')})
    assert adopted == ([True] if hardened else [])


def test_entrypoints_are_registered_with_our_context():
    for name in ('run', 'capabilities', 'info', 'progress', 'cancel',
                 'discard_partial', 'reload_filters'):
        assert privileged.context.is_entrypoint(getattr(ops, name)), name
    assert not privileged.context.is_entrypoint(ops.do_run)


# -- starting the daemon ---------------------------------------------------
def test_helper_command_root_runs_helper_directly():
    cmd = privileged_start.helper_command(
        '/opt/a/venv/bin/python3', 0, ['/etc/accel-daemon/accel-daemon.conf'],
        ['/etc/accel-daemon/conf.d'])
    assert cmd == ['/opt/a/venv/bin/accel-privsep-helper',
                   '--config-file', '/etc/accel-daemon/accel-daemon.conf',
                   '--config-dir', '/etc/accel-daemon/conf.d']


def test_helper_command_non_root_uses_sudo_noninteractive():
    cmd = privileged_start.helper_command('/opt/a/venv/bin/python3', 1000,
                                          ['rel.conf'], sudo='/usr/bin/sudo')
    assert cmd[:3] == ['/usr/bin/sudo', '-n',
                       '/opt/a/venv/bin/accel-privsep-helper']
    assert cmd[4] == os.path.abspath('rel.conf')
    with pytest.raises(RuntimeError):
        privileged_start.helper_command('/opt/a/venv/bin/python3', 1000,
                                        sudo=None)


@pytest.fixture
def global_conf():
    # Not oslo.config's fixture: its cleanup resets every default, including
    # the capabilities oslo.privsep set for our context.
    yield cfg.CONF
    cfg.CONF.clear_override('workers', group='tasks')
    cfg.CONF.clear_override('helper_command', group=privileged.SECTION)
    privileged.apply_pool_default(cfg.CONF)


def test_init_sets_absolute_helper_and_pool_size(global_conf):
    global_conf.set_override('workers', 7, group='tasks')
    privileged_start.init(global_conf, start=False)
    section = global_conf[privileged.SECTION]
    assert section.thread_pool_size == 7 + privileged.CONTROL_THREADS
    helper = os.path.join(os.path.dirname(os.path.abspath(
        __import__('sys').executable)), 'accel-privsep-helper')
    words = section.helper_command.split()
    assert helper in words
    assert (words[0] == helper) == (os.geteuid() == 0)


def test_init_keeps_operator_helper_command(global_conf):
    global_conf.set_override('helper_command', 'custom-helper',
                             group=privileged.SECTION)
    privileged_start.init(global_conf, start=False)
    assert global_conf[privileged.SECTION].helper_command == 'custom-helper'
    with pytest.raises(ValueError):
        privileged_start.init(cfg.ConfigOpts(), start=False)


def test_default_pool_exceeds_workers_and_cpu_count():
    assert privileged.pool_size(4) >= 4 + 2
    assert cfg.CONF[privileged.SECTION].thread_pool_size >= (
        cfg.CONF.tasks.workers + 2)


def _sudoers_command():
    with open(SUDOERS) as f:
        rule = [ln for ln in f if ln.startswith('accel-daemon ')][0]
    return re.fullmatch(r'accel-daemon ALL = \(root\) NOPASSWD: (\S+)\n',
                        rule).group(1)


def test_sudoers_sample_is_a_plain_rule_and_the_helper_checks_the_rest():
    # Any sudo takes a plain command rule; the helper itself accepts
    # exactly what init builds (and privsep appends) for the installed
    # configuration, and nothing appended to it.
    from accel_daemon.privileged import helper_args
    helper = _sudoers_command()
    cmd = privileged_start.helper_command(
        '/opt/accel-daemon/venv/bin/python3', 999,
        [helper_args.DEFAULT_CONFIG], sudo='/usr/bin/sudo')
    sock_dir = tempfile.mkdtemp(dir='/tmp')
    os.chown(sock_dir, 999, 999)
    try:
        full = cmd[2:] + ['--privsep_context', privileged.CONTEXT_PYPATH,
                          '--privsep_sock_path',
                          os.path.join(sock_dir, 'privsep.sock')]
        assert cmd[:2] == ['/usr/bin/sudo', '-n'] and full[0] == helper
        helper_args.check(full[1:], helper_args.Installed(), 999)
        for extra in (['--config-file', '/tmp/evil.conf'],
                      ['--privsep_context', 'os.system'],
                      ['--log-file', '/etc/x']):
            with pytest.raises(helper_args.Refused):
                helper_args.check(full[1:] + extra, helper_args.Installed(),
                                  999)
    finally:
        os.rmdir(sock_dir)
    assert helper_args.CONTEXT == privileged.CONTEXT_PYPATH
    assert privileged.context.helper_command  # pypath is importable
    assert importutils.import_class(privileged.CONTEXT_PYPATH) is (
        privileged.context)


# -- capabilities ----------------------------------------------------------
def test_context_keeps_only_the_documented_capabilities():
    assert set(cfg.CONF[privileged.SECTION].capabilities) == {
        c.CAP_CHOWN, c.CAP_DAC_OVERRIDE, c.CAP_KILL, c.CAP_SETGID,
        c.CAP_SETUID, c.CAP_SETPCAP}
    # No tool keeps any: qemu-img is served its images over NBD.
    assert privileged.CHILD_CAPABILITIES == ()


def test_sample_config_shows_the_capabilities_in_force():
    from accel_daemon.conf import privsep as privsep_conf
    names = privsep_conf._DEFAULTS['capabilities'][1]
    assert {getattr(c, n) for n in names} == set(privileged.CAPABILITIES)


def test_hardening_plan_drops_setpcap_and_limits_children():
    keep, child = caps.plan(privileged.CAPABILITIES,
                            privileged.CHILD_CAPABILITIES)
    assert keep == [c.CAP_CHOWN, c.CAP_DAC_OVERRIDE, c.CAP_KILL,
                    c.CAP_SETGID, c.CAP_SETUID]
    assert child == []
    # A child capability the daemon does not hold is never granted.
    assert caps.plan([c.CAP_CHOWN], [c.CAP_DAC_OVERRIDE]) == (
        [c.CAP_CHOWN], [])


def test_bounding_drops_everything_but_kept():
    drops = caps.bounding_drops([c.CAP_DAC_OVERRIDE], 40)
    assert c.CAP_DAC_OVERRIDE not in drops
    assert c.CAP_SYS_ADMIN in drops and len(drops) == 40


def test_test_process_is_not_a_privsep_daemon():
    # The guard that keeps in-process callers from being hardened.
    assert not caps.in_privsep_daemon(privileged.CAPABILITIES)


# -- callers: each confined to its own directories ---------------------------
@pytest.fixture(params=['privsep-in-process', 'local'])
def callers_backend(request, env):
    """A real Engine whose settings name two callers, cinder and nova, each
    with a directory of its own inside the host's allowed directory."""
    import dataclasses

    from accel_daemon.engine.settings import Scope
    dirs = {}
    for name in ('cinder', 'nova'):
        dirs[name] = env.path(name)
        os.mkdir(dirs[name])
    settings = dataclasses.replace(env.settings, callers=(
        Scope('cinder', (dirs['cinder'],)), Scope('nova', (dirs['nova'],))))
    eng = Engine(settings)
    previous = ops.use_engine(eng)
    privileged.context.set_client_mode(False)
    yield (backends.LocalBackend(eng) if request.param == 'local'
           else backends.PrivsepBackend()), dirs
    privileged.context.set_client_mode(True)
    ops.use_engine(previous)


def test_a_caller_reaches_only_its_own_directories(callers_backend):
    backend, dirs = callers_backend
    cinder_src = os.path.join(dirs['cinder'], 'in.img')
    nova_src = os.path.join(dirs['nova'], 'in.img')
    for path in (cinder_src, nova_src):
        with open(path, 'wb') as f:
            f.write(b'abc' * 100)
    # Its own: works.
    result = backend.run('t1', 'copy', {
        'src': cinder_src, 'dst': os.path.join(dirs['cinder'], 'out.img')},
        'cinder')
    assert result['size'] == 300
    # Another caller's file as input, or its directory as output: refused
    # in the privileged process, whatever the RPC layer let through.
    with pytest.raises(exception.PathNotAllowed):
        backend.run('t2', 'copy', {
            'src': nova_src, 'dst': os.path.join(dirs['cinder'], 'o2')},
            'cinder')
    with pytest.raises(exception.PathNotAllowed):
        backend.run('t3', 'copy', {
            'src': cinder_src, 'dst': os.path.join(dirs['nova'], 'o3')},
            'cinder')
    with pytest.raises(exception.PathNotAllowed):
        backend.run('t4', 'copy', {
            'src': cinder_src, 'dst': nova_src, 'replace': True}, 'cinder')
    with pytest.raises(exception.PathNotAllowed):
        backend.info(nova_src, 'raw', 'cinder')
    with pytest.raises(exception.PathNotAllowed):
        backend.discard_partial(os.path.join(dirs['nova'], 'x'), 'cinder')
    assert sorted(os.listdir(dirs['nova'])) == ['in.img']
    assert sorted(os.listdir(dirs['cinder'])) == ['in.img', 'out.img']
    with open(nova_src, 'rb') as f:
        assert f.read() == b'abc' * 100
    # A name the configuration does not know is no one: refused, not
    # served with the host's envelope.
    with pytest.raises(exception.InvalidRequest):
        backend.run('t5', 'copy', {
            'src': cinder_src, 'dst': os.path.join(dirs['cinder'], 'o5')},
            'glance')
    assert backend.info(cinder_src, 'raw', 'cinder')['format'] == 'raw'


def test_a_channel_whose_reader_died_is_dropped():
    import threading

    class Context:
        def __init__(self, reader):
            self.channel = type('Channel', (), {'reader_thread': reader,
                                                'running': True})()
            self.stopped = 0

        def stop(self):
            self.stopped += 1
            self.channel = None

    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    ctx = Context(dead)
    # A reset connection killed the reader: the channel still says it
    # runs, and only dropping it lets the next call start a helper.
    assert backends.reset_dead_channel(ctx) is True
    assert ctx.stopped == 1 and ctx.channel is None
    assert backends.reset_dead_channel(ctx) is False

    class ResetSocket(Context):
        def stop(self):
            raise OSError(107, 'Transport endpoint is not connected')

    reset = ResetSocket(dead)
    assert backends.reset_dead_channel(reset) is True
    assert reset.channel is None
    gate = threading.Event()
    alive = threading.Thread(target=gate.wait)
    alive.start()
    try:
        live = Context(alive)
        assert backends.reset_dead_channel(live) is False
        assert live.stopped == 0
    finally:
        gate.set()
        alive.join()
