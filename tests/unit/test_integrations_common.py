# SPDX-License-Identifier: Apache-2.0
"""The skeleton both integrations share (accel_daemon.integrations.common):
the guarded install and uninstall, the fallback log, the routing checks.
The caller is a module of this test's own, put in sys.modules."""

import logging
import sys
import types

import pytest

from accel_daemon.integrations import common


def callers_convert(source, dest, fmt, compress=False):
    return 'caller'


def our_convert(source, dest, fmt, compress=False):
    return 'ours'


def other_convert(source, dest, fmt, run_as_root=True):
    return 'another release'


@pytest.fixture
def caller(monkeypatch):
    module = types.ModuleType('fake_caller_images')
    module.convert = callers_convert
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def test_install_replaces_and_uninstall_restores(caller):
    original = common.Original(caller.__name__, 'convert', our_convert)
    common.install(original)
    assert caller.convert is our_convert
    assert original.get() is callers_convert
    common.install(original)                # again: the original stays
    assert original.get() is callers_convert
    common.uninstall(original)
    assert caller.convert is callers_convert


def test_install_checks_every_signature_before_replacing(caller):
    caller.other = other_convert
    good = common.Original(caller.__name__, 'convert', our_convert)
    bad = common.Original(caller.__name__, 'other', our_convert)
    with pytest.raises(RuntimeError, match='signature'):
        common.install(good, bad)
    assert caller.convert is callers_convert
    assert caller.other is other_convert


def our_convert_older(source, dest, fmt, run_as_root=True):
    return 'ours, for the other release'


def test_the_variant_with_the_callers_parameters_is_installed(caller):
    # Another supported release has other parameters: its variant goes in,
    # and uninstall() finds it.
    caller.convert = other_convert
    original = common.Original(caller.__name__, 'convert', our_convert,
                               variants=(our_convert_older,))
    common.install(original)
    assert caller.convert is our_convert_older
    assert original.installed is our_convert_older
    common.uninstall(original)
    assert caller.convert is other_convert
    # The release this integration was written for gets the replacement.
    caller.convert = callers_convert
    fresh = common.Original(caller.__name__, 'convert', our_convert,
                            variants=(our_convert_older,))
    common.install(fresh)
    assert caller.convert is our_convert


def test_no_variant_matching_is_refused(caller):
    def newer(source, dest, fmt, compress=False, new_parameter=None):
        pass
    caller.convert = newer
    original = common.Original(caller.__name__, 'convert', our_convert,
                               variants=(our_convert_older,))
    with pytest.raises(common.Refused, match='new_parameter'):
        common.install(original)
    assert caller.convert is newer


@pytest.mark.parametrize('version, ok', [
    ('29.0.0', True), ('27.1.2', True), ('28.0.0.0rc1', True),
    ('26.2.0', False), ('30.0.0', False), ('', False)])
def test_release_range(monkeypatch, version, ok):
    monkeypatch.setattr(common, 'release', lambda project: version)
    if ok:
        common.check_release('cinder', (27, 28, 29))
    else:
        with pytest.raises(common.Refused,
                           match='is not a release this accel-daemon '
                                 'supports \\(27, 28, 29\\)'):
            common.check_release('cinder', (27, 28, 29))


def test_release_of_what_is_not_installed():
    assert common.release('no-such-distribution-here') == ''


def test_install_refuses_what_is_missing(caller):
    missing = common.Original(caller.__name__, 'gone', our_convert)
    with pytest.raises(AttributeError):
        common.install(missing)


def test_original_replaced_before_it_was_kept(caller):
    caller.convert = our_convert
    original = common.Original(caller.__name__, 'convert', our_convert)
    with pytest.raises(RuntimeError, match='use install'):
        original.get()


def test_each_fallback_reason_logged_once(caplog):
    log = common.FallbackLog(logging.getLogger('test.fallback'), 'nova')
    with caplog.at_level(logging.INFO, 'test.fallback'):
        for _ in range(3):
            assert isinstance(log.fallback('encryption'), common.Fallback)
        log.fallback('URIs')
    assert [r.getMessage() for r in caplog.records] == [
        "accel-daemon: nova's own code runs for encryption (logged once)",
        "accel-daemon: nova's own code runs for URIs (logged once)"]


CAPS = {'allowed_dirs': ['/srv/images'],
        'formats': {'input': ['raw', 'qcow2'], 'output': ['raw', 'qcow2']}}


@pytest.mark.parametrize('caps, source, dest, fmt, reason', [
    (None, '/srv/images/a', '/srv/images/b', 'raw',
     'a daemon that does not answer'),
    (CAPS, '/srv/images/a', '/srv/images/b', 'vmdk',
     'a format accel-daemon does not convert'),
    (CAPS, '/srv/images/a', '/elsewhere/b', 'raw',
     "paths outside the daemon's allowed directories"),
    (CAPS, '/srv/images/a', '/srv/images/b', 'QCOW2', None),
])
def test_daemon_refusal(caps, source, dest, fmt, reason):
    assert common.daemon_refusal(caps, source, dest, 'raw', fmt) == reason


def test_local_refusal():
    assert common.local_refusal('URIs', '/a', '/b') is None
    assert common.local_refusal('URIs', '/a', 'rbd:pool/v') == (
        'a path that is not a local absolute path (URIs)')


def test_convert_args_compress_qcow2_only(tmp_path):
    dest = tmp_path / 'out'
    args = common.convert_args('/a', str(dest), 'RAW', 'raw', True)
    assert args == {'src': '/a', 'dst': str(dest), 'src_format': 'raw',
                    'dst_format': 'raw', 'compress': False,
                    'replace': False}
    dest.touch()
    args = common.convert_args('/a', str(dest), 'raw', 'qcow2', True)
    assert args['compress'] and args['replace']


# --- image streams -----------------------------------------------------------
@pytest.mark.parametrize('version, expected', [
    ('1.5', (1, 5)), ('1.12', (1, 12)), (None, (0,)), ('x', (0,))])
def test_api_version(version, expected):
    caps = dict(CAPS, api_version=version) if version else dict(CAPS)
    assert common.api_version(caps) == expected


def test_stream_refusal(tmp_path):
    open_dir = tmp_path / 'streams'
    open_dir.mkdir()
    ok = dict(CAPS, api_version='1.5', streams=str(open_dir))
    assert common.stream_refusal(ok) is None
    assert common.stream_refusal(None) == 'a daemon that does not answer'
    assert common.stream_refusal(dict(ok, api_version='1.4')) == \
        'a daemon older than API 1.5 (image streams)'
    assert common.stream_refusal(dict(CAPS)) == \
        'a daemon older than API 1.5 (image streams)'
    assert common.stream_refusal(dict(ok, streams=None)) == \
        'image streams are off in the daemon ([streams] group)'
    missing = str(tmp_path / 'nowhere')
    assert common.stream_refusal(dict(ok, streams=missing)) == \
        'the stream directory %s is missing' % missing


def test_stream_refusal_of_a_directory_this_user_cannot_enter(
        tmp_path, monkeypatch):
    closed = tmp_path / 'closed'
    closed.mkdir()
    monkeypatch.setattr(common.os, 'access', lambda path, mode: False)
    reason = common.stream_refusal(dict(CAPS, api_version='1.5',
                                        streams=str(closed)))
    assert reason.startswith('this service may not reach the stream '
                             'sockets in %s' % closed)


def test_without_makes_the_variant_of_an_older_release(caller):
    # The replacement minus a parameter the older release lacks: matched
    # by signature, and it calls the replacement with the default.
    def ours(source, dest, fmt, compress=False, new_parameter=False):
        return ('ours', new_parameter)
    older = common.without(ours, 'new_parameter')
    original = common.Original(caller.__name__, 'convert', ours,
                               variants=(older,))
    common.install(original)
    assert caller.convert is older
    assert caller.convert('a', 'b', 'raw', compress=True) == ('ours', False)
