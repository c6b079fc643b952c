# SPDX-License-Identifier: Apache-2.0
"""The caller's request ids: what the client sends, what the daemon keeps,
and the thread's oslo.context that oslo.log reads them from."""

import threading

from oslo_context import context as oslo_context
import pytest

from accel_daemon import request_ids

RID = 'req-0123abcd-4567-89ab-cdef-0123456789ab'
GID = 'req-fedcba98-7654-3210-fedc-ba9876543210'


@pytest.fixture(autouse=True)
def no_current_context():
    request_ids._set_current(None)
    yield
    request_ids._set_current(None)


def test_for_call_takes_only_the_two_ids_of_a_request_context():
    ctx = oslo_context.RequestContext(request_id=RID, global_request_id=GID,
                                      auth_token='secret', user_id='u',
                                      overwrite=False)
    assert request_ids.for_call(ctx) == {'request_id': RID,
                                         'global_request_id': GID}


def test_for_call_takes_a_dict_and_drops_non_strings():
    assert request_ids.for_call({'request_id': RID, 'auth_token': 't',
                                 'global_request_id': 5}) == \
        {'request_id': RID}


def test_for_call_defaults_to_the_threads_current_context():
    assert request_ids.for_call() == {}
    ctx = oslo_context.RequestContext(request_id=RID, overwrite=True)
    assert oslo_context.get_current() is ctx
    assert request_ids.for_call() == {'request_id': RID}


@pytest.mark.parametrize('value', [
    None, 5, ['req'], RID.upper(), RID + 'x', RID[:-1], 'req-%s' % ('a' * 32),
    RID + '\nFAKE LOG LINE', 'x' * 100000, 'req-' + RID[4:].replace('-', '_'),
])
def test_malformed_ids_are_dropped(value):
    ids = request_ids.from_ctxt({'request_id': value,
                                 'global_request_id': value})
    assert ids == {'request_id': None, 'global_request_id': None}
    if value is not None:
        assert request_ids.dropped({'request_id': value}) == ['request_id']


def test_well_formed_ids_are_kept_and_other_keys_ignored():
    assert request_ids.from_ctxt({'request_id': RID, 'global_request_id': GID,
                                  'user': 'x'}) == {
        'request_id': RID, 'global_request_id': GID}
    assert request_ids.from_ctxt({}) == {'request_id': None,
                                         'global_request_id': None}
    assert request_ids.from_ctxt('not a mapping')['request_id'] is None
    assert request_ids.dropped({'request_id': RID}) == []


def test_current_sets_then_restores_the_threads_context():
    outer = oslo_context.RequestContext(request_id=GID, overwrite=True)
    with request_ids.current({'request_id': RID, 'global_request_id': GID}):
        ctx = oslo_context.get_current()
        assert ctx.request_id == RID and ctx.global_request_id == GID
        seen = []
        t = threading.Thread(
            target=lambda: seen.append(oslo_context.get_current()))
        t.start()
        t.join()
        assert seen == [None]           # thread-local
    assert oslo_context.get_current() is outer


def test_current_without_ids_clears_a_leftover_context():
    leftover = oslo_context.RequestContext(request_id=RID, overwrite=True)
    with request_ids.current({'request_id': None, 'global_request_id': None}):
        assert oslo_context.get_current() is None
    assert oslo_context.get_current() is leftover


def test_current_is_restored_after_an_exception():
    with pytest.raises(RuntimeError):
        with request_ids.current({'request_id': RID}):
            raise RuntimeError()
    assert oslo_context.get_current() is None
